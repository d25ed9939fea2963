"""The cache's refresh rules under faults: background refresh, draining at close, monotonic
timers, unusable and refused tokens, Retry-After, unknown outcomes, a busy store lock.

In-process: a scripted grant, the real memory and SQLite stores, injected clocks."""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from proxy_addon.cache import CredentialCache, TokenUnavailable
from proxy_addon.config import Config, TokenPolicy
from proxy_addon.errors import GrantError
from proxy_addon.runtime import Runtime
from proxy_addon.store import MemoryStore
from proxy_addon.store.keys import Keyring
from proxy_addon.store.sqlite import SqliteStore
from proxy_addon.tokens import Token

NAME = "billing"
LIFETIME = 3600.0
POLICY = TokenPolicy(
    refresh_leeway=60.0, idp_timeout=0.5, retry_attempts=3, backoff_initial=0.001, backoff_max=30.0
)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class ScriptedGrant:
    """obtain() hands out rt-chained tokens, or what `script` says next (a GrantError to raise,
    or a lifetime in seconds); `gate`, when set, holds every call until it is set."""

    refreshable = True
    seed_id = None

    def __init__(self, wall: Clock) -> None:
        self.name, self.wall = NAME, wall
        self.script: list[GrantError | float] = []
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self.calls = 0
        self.previous: list[Token | None] = []
        self.issued = 0

    def obtain(self, previous: Token | None) -> Token:
        self.calls += 1
        self.previous.append(previous)
        self.entered.set()
        if self.gate is not None and not self.gate.wait(10):
            raise AssertionError("obtain was never released")
        step = self.script.pop(0) if self.script else LIFETIME
        if isinstance(step, GrantError):
            raise step
        self.issued += 1
        now = self.wall()
        return Token(f"at-{self.issued}", now + step, now, refresh_token=f"rt-{self.issued}")


@pytest.fixture
def wall() -> Clock:
    return Clock(1_000_000.0)


@pytest.fixture
def mono() -> Clock:
    return Clock(50.0)


@pytest.fixture
def grant(wall: Clock) -> ScriptedGrant:
    return ScriptedGrant(wall)


def make(
    grant: ScriptedGrant,
    wall: Clock,
    mono: Clock,
    store: object | None = None,
    policy: TokenPolicy = POLICY,
    **kw: object,
) -> CredentialCache:
    return CredentialCache(
        NAME, grant, store, policy, clock=wall, monotonic=mono, rng=random.Random(7), **kw
    )  # type: ignore[arg-type]


def run[T](scenario: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(scenario())  # type: ignore[arg-type]


async def entered(grant: ScriptedGrant) -> None:
    assert await asyncio.to_thread(grant.entered.wait, 5), "the refresh never reached the IdP"


def transient(**kw: object) -> GrantError:
    return GrantError("idp_unavailable", "the IdP answered HTTP 503", terminal=False, **kw)  # type: ignore[arg-type]


# --- 14.1: a due refresh never blocks a request while the token is usable ------------------------


def test_requests_never_wait_for_a_due_refresh_while_the_token_is_usable(
    grant: ScriptedGrant, wall: Clock, mono: Clock
) -> None:
    cache = make(grant, wall, mono, MemoryStore())

    async def scenario() -> None:
        first = await cache.token()
        wall.advance(LIFETIME - 30)  # due (inside the leeway), valid 30 s more
        grant.gate = threading.Event()  # the IdP hangs
        try:
            for _ in range(20):
                assert await asyncio.wait_for(cache.token(), 1.0) is first
            await entered(grant)
            assert grant.calls == 2  # one background refresh, not one per request
        finally:
            grant.gate.set()
        await cache.wait_idle()
        assert (await cache.token()).access_token == "at-2"

    run(scenario)
    assert cache.refreshes == 2


def test_a_401_joins_the_background_refresh_in_flight(
    grant: ScriptedGrant, wall: Clock, mono: Clock
) -> None:
    cache = make(grant, wall, mono, MemoryStore())

    async def scenario() -> None:
        first = await cache.token()
        wall.advance(LIFETIME - 30)
        grant.gate = threading.Event()
        assert await cache.token() is first  # starts the background refresh
        await entered(grant)
        waiting = asyncio.create_task(cache.replace_rejected(first))
        await asyncio.sleep(0.01)
        assert not waiting.done()  # no usable token for it: it waits
        grant.gate.set()
        assert (await waiting).access_token == "at-2"
        assert grant.calls == 2

    run(scenario)


class Watched(CredentialCache):
    """Records which threads write the fields the event loop owns."""

    writers: set[str]

    def __setattr__(self, name: str, value: object) -> None:
        if name in ("refreshes", "_seen_version", "_token", "_version", "last_error"):
            self.__dict__.setdefault("writers", set()).add(threading.current_thread().name)
        super().__setattr__(name, value)


def test_worker_thread_never_writes_cache_fields(
    grant: ScriptedGrant, wall: Clock, mono: Clock
) -> None:
    cache = Watched(NAME, grant, MemoryStore(), POLICY, clock=wall, monotonic=mono)  # type: ignore[arg-type]

    async def scenario() -> None:
        await cache.token()
        wall.advance(LIFETIME)
        await cache.token()
        grant.script = [GrantError("invalid_grant", "revoked", terminal=True)]
        wall.advance(LIFETIME)
        with pytest.raises(TokenUnavailable):
            await cache.token()

    run(scenario)
    assert cache.writers == {threading.main_thread().name}


# --- 12.1: one owner per refresh, drained before the store closes --------------------------------


@pytest.fixture
def sqlite(tmp_path: Path) -> tuple[Path, Keyring]:
    return tmp_path / "tokens.db", Keyring.from_keys([Fernet.generate_key()], "test key")


def close_in_thread(runtime: Runtime, cache: CredentialCache, release: threading.Event) -> float:
    """Runtime.close() in a thread; `release` is set once the cache knows it is closing."""

    def release_when_closing() -> None:
        deadline = time.monotonic() + 5
        while not getattr(cache, "closing", False) and time.monotonic() < deadline:
            time.sleep(0.005)
        release.set()

    helper = threading.Thread(target=release_when_closing)
    helper.start()
    started = time.monotonic()
    runtime.close()
    elapsed = time.monotonic() - started
    helper.join()
    return elapsed


def test_close_waits_for_the_refresh_in_flight_to_commit(
    grant: ScriptedGrant, wall: Clock, mono: Clock, sqlite: tuple[Path, Keyring]
) -> None:
    db, keyring = sqlite
    store = SqliteStore(db, keyring)
    cache = make(grant, wall, mono, store)
    runtime = Runtime(Config(source="test"), store, {NAME: cache}, None)
    grant.gate = threading.Event()

    async def scenario() -> Token:
        waiting = asyncio.create_task(cache.token())
        await entered(grant)  # the IdP has the request; its answer is on its way
        elapsed = await asyncio.to_thread(close_in_thread, runtime, cache, grant.gate)
        assert elapsed < POLICY.idp_timeout + 2
        return await waiting

    assert run(scenario).access_token == "at-1"
    with SqliteStore(db, keyring) as again:
        record = again.get(NAME)
    assert record is not None
    assert (record.token.access_token, record.token.refresh_token) == ("at-1", "rt-1")


def test_close_is_bounded_and_starts_no_new_refresh(
    grant: ScriptedGrant, wall: Clock, mono: Clock
) -> None:
    store = MemoryStore()
    cache = make(grant, wall, mono, store, TokenPolicy(idp_timeout=0.5, drain_timeout=0.2))
    runtime = Runtime(Config(source="test"), store, {NAME: cache}, None)
    grant.gate = threading.Event()

    async def scenario() -> None:
        waiting = asyncio.create_task(cache.token())
        await entered(grant)
        started = time.monotonic()
        runtime.close()  # the IdP never answers in time: close gives up after drain_timeout
        assert 0.15 < time.monotonic() - started < 2
        grant.gate.set()
        await waiting
        wall.advance(LIFETIME)
        with pytest.raises(TokenUnavailable) as info:
            await cache.token()
        assert info.value.code == "shutting_down"
        assert grant.calls == 1

    run(scenario)


def test_close_stops_in_place_retries(grant: ScriptedGrant, wall: Clock, mono: Clock) -> None:
    store = MemoryStore()
    slow = TokenPolicy(idp_timeout=0.5, retry_attempts=5, backoff_initial=30, backoff_max=30)
    cache = make(grant, wall, mono, store, slow)
    runtime = Runtime(Config(source="test"), store, {NAME: cache}, None)
    grant.script = [transient()]

    async def scenario() -> None:
        waiting = asyncio.create_task(cache.token())
        await entered(grant)
        started = time.monotonic()
        await asyncio.to_thread(runtime.close)  # would wait 15-30 s before the second attempt
        assert time.monotonic() - started < 2
        with pytest.raises(TokenUnavailable):
            await waiting
        assert grant.calls == 1

    run(scenario)


# --- 12.1: monotonic timers ----------------------------------------------------------------------


def test_wall_clock_step_back_does_not_lock_a_credential_out(
    grant: ScriptedGrant, wall: Clock, mono: Clock
) -> None:
    grant.script = [transient(), transient(), transient()]
    cache = make(grant, wall, mono, MemoryStore())

    async def scenario() -> None:
        with pytest.raises(TokenUnavailable) as info:
            await cache.token()
        wait = info.value.retry_after
        assert wait is not None and wait < 1
        wall.advance(-3600)  # someone sets the clock back an hour
        with pytest.raises(TokenUnavailable) as again:
            await cache.token()  # still inside the backoff window
        assert again.value.retry_after is not None and again.value.retry_after <= wait
        mono.advance(wait)
        assert (await cache.token()).access_token == "at-1"

    run(scenario)


def test_terminal_recheck_runs_on_the_monotonic_clock(
    grant: ScriptedGrant, wall: Clock, mono: Clock
) -> None:
    store = MemoryStore()
    grant.script = [GrantError("needs_login", "run authproxy login", terminal=True)]
    cache = make(grant, wall, mono, store)

    async def scenario() -> None:
        with pytest.raises(TokenUnavailable):
            await cache.token()
        wall.advance(-3600)
        store.put(NAME, Token("at-login", wall() + LIFETIME, wall()), None)
        mono.advance(3)
        assert (await cache.token()).access_token == "at-login"

    run(scenario)


# --- 14.3: unusable and refused tokens -----------------------------------------------------------


@pytest.mark.parametrize("lifetime", [0.0, -5.0, 0.5])
def test_a_token_that_expires_at_once_is_committed_but_never_used(
    grant: ScriptedGrant, wall: Clock, mono: Clock, lifetime: float
) -> None:
    store = MemoryStore()
    grant.script = [lifetime]
    cache = make(grant, wall, mono, store)

    async def scenario() -> None:
        with pytest.raises(TokenUnavailable) as info:
            await cache.token()
        assert info.value.code == "unusable_token"
        assert info.value.retry_after is not None and info.value.retry_after > 0
        record = store.get(NAME)  # kept: its rotated refresh token is the live one
        assert record is not None and record.token.refresh_token == "rt-1"
        for _ in range(50):  # no storm: fail fast inside the backoff window
            with pytest.raises(TokenUnavailable) as fast:
                await cache.token()
            assert fast.value.code == "unusable_token"
        assert grant.calls == 1
        mono.advance(info.value.retry_after)
        assert (await cache.token()).access_token == "at-2"
        assert grant.previous[-1] is not None
        assert grant.previous[-1].refresh_token == "rt-1"  # the chain goes on from it

    run(scenario)
    assert cache.status().state == "valid"


def test_unusable_new_token_leaves_the_old_one_in_service(
    grant: ScriptedGrant, wall: Clock, mono: Clock
) -> None:
    cache = make(grant, wall, mono, MemoryStore())

    async def scenario() -> None:
        first = await cache.token()
        wall.advance(LIFETIME - 30)
        grant.script = [-5.0]
        assert await cache.token() is first
        await cache.wait_idle()
        assert await cache.token() is first
        assert cache.status().last_error is not None

    run(scenario)


def test_an_api_that_always_answers_401_gets_bounded_idp_calls(
    grant: ScriptedGrant, wall: Clock, mono: Clock
) -> None:
    """The addon's loop per request: token, 401, replace_rejected, retry once with the new
    token (401 again). 100 requests a second for a minute."""
    cache = make(grant, wall, mono, MemoryStore())
    reasons: set[str] = set()
    upstream = 0

    async def one_request() -> None:
        nonlocal upstream
        try:
            tok = await cache.token()
            upstream += 1  # sent: 401
            await cache.replace_rejected(tok)
            upstream += 1  # the retry: 401, passed on
        except TokenUnavailable as e:
            reasons.add(e.code)
            assert e.retry_after is not None and e.retry_after > 0

    async def scenario() -> None:
        for _ in range(6000):
            await one_request()
            wall.advance(0.01)
            mono.advance(0.01)

    run(scenario)
    # Before: one IdP call per request (6001). Now: at most one per reject_grace (5 s).
    assert grant.calls <= 60 / POLICY.reject_grace + 2
    assert reasons == {"token_rejected_by_api"}
    assert upstream < 2 * grant.calls + 2  # refused tokens are not sent again either
    assert cache.status().state == "failing"
    assert "token_rejected_by_api" not in (cache.last_error or "")  # says it in words
    assert "scopes and audience" in (cache.last_error or "")


def test_a_401_soon_after_a_401_refresh_calls_no_idp(
    grant: ScriptedGrant, wall: Clock, mono: Clock
) -> None:
    cache = make(grant, wall, mono, MemoryStore())

    async def scenario() -> None:
        old = await cache.token()
        new = await cache.replace_rejected(old)  # the first 401 is believed: revoked
        assert new.access_token == "at-2"
        mono.advance(POLICY.reject_grace - 1)
        with pytest.raises(TokenUnavailable) as info:
            await cache.replace_rejected(new)
        assert info.value.code == "token_rejected_by_api"
        assert info.value.retry_after == pytest.approx(1.0, abs=0.01)
        with pytest.raises(TokenUnavailable):
            await cache.token()  # the refused token is not handed out meanwhile
        assert grant.calls == 2
        mono.advance(1)
        assert (await cache.token()).access_token == "at-3"

    run(scenario)


# --- 14.4: Retry-After ---------------------------------------------------------------------------


@pytest.mark.parametrize(("retry_after", "expected"), [(10.0, 10.0), (3600.0, 30.0)])
def test_idp_retry_after_is_honoured_and_passed_on(
    grant: ScriptedGrant, wall: Clock, mono: Clock, retry_after: float, expected: float
) -> None:
    grant.script = [transient(retry_after=retry_after)]
    cache = make(grant, wall, mono, MemoryStore())

    async def scenario() -> None:
        with pytest.raises(TokenUnavailable) as info:
            await cache.token()
        assert info.value.retry_after == pytest.approx(expected)
        assert grant.calls == 1  # not retried in place against the IdP's word
        mono.advance(expected - 0.5)
        with pytest.raises(TokenUnavailable) as fast:
            await cache.token()
        assert fast.value.retry_after == pytest.approx(0.5)
        assert grant.calls == 1
        mono.advance(0.5)
        assert (await cache.token()).access_token == "at-1"

    run(scenario)


# --- 14.5: unknown outcomes and refresh-token reuse ----------------------------------------------


def test_unknown_outcome_is_not_resent_and_the_store_is_read_first(
    grant: ScriptedGrant, wall: Clock, mono: Clock
) -> None:
    store = MemoryStore()
    timeout = GrantError(
        "idp_timeout", "the IdP did not answer within 0.5s", terminal=False, outcome_unknown=True
    )
    grant.script = [timeout]
    cache = make(grant, wall, mono, store)

    async def scenario() -> None:
        with pytest.raises(TokenUnavailable) as info:
            await cache.token()
        assert info.value.code == "idp_timeout"
        assert info.value.retry_after is not None
        assert grant.calls == 1  # retry_attempts is 3, but the same request is never resent
        theirs = Token("at-theirs", wall() + LIFETIME, wall())  # another process got through
        store.put(NAME, theirs, None)
        mono.advance(info.value.retry_after)
        assert await cache.token() == theirs
        assert grant.calls == 1

    run(scenario)


def test_refresh_token_reuse_says_sign_in_and_why(
    grant: ScriptedGrant, wall: Clock, mono: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    why = (
        "the IdP refused the refresh token: it was already used (reuse detected, the sign-in "
        "was revoked); run: authproxy login billing"
    )
    grant.script = [GrantError("invalid_grant", why, terminal=True)]
    cache = make(grant, wall, mono, MemoryStore())

    async def scenario() -> None:
        with pytest.raises(TokenUnavailable) as info:
            await cache.token()
        assert (str(info.value), info.value.code) == (why, "invalid_grant")

    with caplog.at_level(logging.ERROR, logger="proxy_addon.cache"):
        run(scenario)
    assert cache.last_error == why
    assert cache.status().state == "needs login"
    assert why in caplog.text


# --- 14.2: a lock held elsewhere ------------------------------------------------------------------


def test_waiter_on_a_lock_held_elsewhere_gets_refresh_in_progress(
    grant: ScriptedGrant, wall: Clock, mono: Clock
) -> None:
    store = MemoryStore()
    cache = make(grant, wall, mono, store, store_key="id:billing")

    async def scenario() -> None:
        with store.lock("id:billing"):  # another process is refreshing
            started = time.monotonic()
            with pytest.raises(TokenUnavailable) as info:
                await cache.token()
            assert time.monotonic() - started < POLICY.idp_timeout + 1
        assert info.value.code == "refresh_in_progress"
        assert info.value.retry_after is not None
        assert 0 < info.value.retry_after <= POLICY.idp_timeout
        assert grant.calls == 0
        assert (await cache.token()).access_token == "at-1"  # not counted as a failure

    run(scenario)
    assert store.get("id:billing") is not None and store.get(NAME) is None
