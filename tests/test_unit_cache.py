"""Unit tests for proxy_addon.cache.CredentialCache, with a fake grant, the memory store and a
controllable clock. No network; the only threads are asyncio's worker threads."""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from collections.abc import Awaitable, Callable

import pytest

from proxy_addon.cache import (
    STORE_LOOK,
    TERMINAL_RECHECK,
    CredentialCache,
    TokenUnavailable,
    backoff_delay,
)
from proxy_addon.config import TokenPolicy
from proxy_addon.grants import GrantError
from proxy_addon.store import MemoryStore, Record, StoreError
from proxy_addon.tokens import Token

NAME = "billing"
START = 1_000_000.0
LIFETIME = 3600.0
LEEWAY = 60.0
POLICY = TokenPolicy(
    refresh_leeway=LEEWAY,
    backoff_initial=0.001,
    backoff_max=0.01,
    retry_attempts=2,
    idp_timeout=1.0,
)


class Clock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeGrant:
    """Hands out at-1, at-2, ... Counts calls; can block, or fail."""

    refreshable = True

    def __init__(self, clock: Clock, *, lifetime: float = LIFETIME) -> None:
        self.name = NAME
        self.seed_id: str | None = None
        self.clock, self.lifetime = clock, lifetime
        self.calls = 0
        self.issued = 0
        self.previous: list[Token | None] = []
        self.errors: list[GrantError] = []  # raised one per call, before any success
        self.fail_with: GrantError | None = None  # raised on every call while set
        self.release: threading.Event | None = None  # if set, obtain waits for it
        self.entered = threading.Event()
        self._guard = threading.Lock()

    def obtain(self, previous: Token | None) -> Token:
        with self._guard:
            self.calls += 1
            self.previous.append(previous)
        self.entered.set()
        if self.release is not None and not self.release.wait(10):
            raise AssertionError("obtain was never released")
        with self._guard:
            error = self.fail_with or (self.errors.pop(0) if self.errors else None)
            if error is not None:
                # a fresh exception each time, as a real grant raises (re-raising one instance
                # would keep growing its traceback)
                raise GrantError(error.code, str(error), terminal=error.terminal)
            self.issued += 1
            now = self.clock()
            return Token(
                access_token=f"at-{self.issued}",
                expires_at=now + self.lifetime,
                obtained_at=now,
                seed_id=self.seed_id,
            )


def transient(message: str = "the IdP answered HTTP 503") -> GrantError:
    return GrantError("idp_unavailable", message, terminal=False)


def terminal(code: str = "invalid_grant", message: str = "refresh token revoked") -> GrantError:
    return GrantError(code, message, terminal=True)


def make_cache(
    grant: FakeGrant,
    clock: Clock,
    store: MemoryStore | None = None,
    policy: TokenPolicy = POLICY,
) -> CredentialCache:
    # One clock for both: advancing it moves the wall clock and the monotonic timers alike.
    return CredentialCache(
        NAME, grant, store, policy, clock=clock, monotonic=clock, rng=random.Random(1234)
    )


def stored_token(access_token: str, clock: Clock, remaining: float, **kw: str) -> Token:
    """A token that expires `remaining` seconds from the clock's now, LIFETIME long."""
    exp = clock() + remaining
    return Token(access_token=access_token, expires_at=exp, obtained_at=exp - LIFETIME, **kw)


def run[T](scenario: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await scenario()

    return asyncio.run(main())


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def grant(clock: Clock) -> FakeGrant:
    return FakeGrant(clock)


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


# --- fetching and reuse --------------------------------------------------------------------------


@pytest.mark.parametrize("use_store", [True, False])
def test_first_call_fetches_once_then_reuses(
    clock: Clock, grant: FakeGrant, store: MemoryStore, use_store: bool
) -> None:
    cache = make_cache(grant, clock, store if use_store else None)

    async def scenario() -> None:
        first = await cache.token()
        assert first.access_token == "at-1"
        assert first.expires_at == START + LIFETIME
        assert grant.calls == 1
        assert grant.previous == [None]
        for _ in range(5):
            clock.advance(60)
            assert await cache.token() is first
        assert grant.calls == 1

    run(scenario)
    st = cache.status()
    assert (st.state, st.refreshes, st.failures, st.last_error) == ("valid", 1, 0, None)


def test_refresh_happens_inside_the_leeway(
    clock: Clock, grant: FakeGrant, store: MemoryStore
) -> None:
    cache = make_cache(grant, clock, store)

    async def scenario() -> None:
        first = await cache.token()
        clock.advance(LIFETIME - LEEWAY - 1)  # 61 s left: not yet
        assert await cache.token() is first
        assert grant.calls == 1
        clock.advance(1)  # 60 s left: due, though still valid: refreshed in the background
        assert await cache.token() is first
        await cache.wait_idle()
        second = await cache.token()
        assert second.access_token == "at-2"
        assert grant.calls == 2
        assert grant.previous[1] == first  # the refresh is based on the token it replaces
        assert await cache.token() is second

    run(scenario)
    assert cache.status().refreshes == 2


def test_expired_token_is_replaced(clock: Clock, grant: FakeGrant, store: MemoryStore) -> None:
    cache = make_cache(grant, clock, store)

    async def scenario() -> None:
        await cache.token()
        clock.advance(LIFETIME * 5)
        assert (await cache.token()).access_token == "at-2"
        assert grant.calls == 2

    run(scenario)


def test_leeway_capped_at_half_lifetime(clock: Clock, store: MemoryStore) -> None:
    grant = FakeGrant(clock, lifetime=100)  # leeway 60 > 50: refreshed at half-life, not at once
    cache = make_cache(grant, clock, store)

    async def scenario() -> None:
        first = await cache.token()
        clock.advance(49)
        assert await cache.token() is first
        clock.advance(1)
        assert await cache.token() is first  # still valid: refreshed in the background
        await cache.wait_idle()
        assert (await cache.token()).access_token == "at-2"
        assert grant.calls == 2

    run(scenario)


# --- one refresh at a time -----------------------------------------------------------------------


async def concurrently(
    n: int, call: Callable[[], Awaitable[Token]], grant: FakeGrant
) -> list[Token]:
    """Start n calls while obtain blocks; release it only once all n are waiting."""
    release = grant.release = threading.Event()
    grant.entered.clear()
    started = 0

    async def one() -> Token:
        nonlocal started
        started += 1
        return await call()

    tasks = [asyncio.create_task(one()) for _ in range(n)]
    while started < n:
        await asyncio.sleep(0)
    assert await asyncio.to_thread(grant.entered.wait, 10)
    for _ in range(10):
        await asyncio.sleep(0)
    calls_while_blocked = grant.calls
    release.set()
    results = await asyncio.gather(*tasks)
    grant.release = None
    assert calls_while_blocked == grant.calls
    return results


@pytest.mark.parametrize("use_store", [True, False])
def test_concurrent_calls_on_empty_cache_fetch_once(
    clock: Clock, grant: FakeGrant, store: MemoryStore, use_store: bool
) -> None:
    cache = make_cache(grant, clock, store if use_store else None)

    async def scenario() -> None:
        results = await concurrently(50, cache.token, grant)
        assert grant.calls == 1
        assert {t.access_token for t in results} == {"at-1"}
        assert len(results) == 50

    run(scenario)
    assert cache.status().refreshes == 1


@pytest.mark.parametrize("use_store", [True, False])
def test_concurrent_calls_on_expired_cache_fetch_once(
    clock: Clock, grant: FakeGrant, store: MemoryStore, use_store: bool
) -> None:
    cache = make_cache(grant, clock, store if use_store else None)

    async def scenario() -> None:
        await cache.token()
        clock.advance(LIFETIME + 1)
        results = await concurrently(50, cache.token, grant)
        assert grant.calls == 2
        assert {t.access_token for t in results} == {"at-2"}

    run(scenario)


# --- ready: the token the per-request shortcut may use without waiting ---------------------------


def test_ready_is_the_token_token_returns_at_once_and_none_when_it_would_wait(
    clock: Clock, grant: FakeGrant, store: MemoryStore
) -> None:
    cache = make_cache(grant, clock, store)

    async def scenario() -> None:
        assert cache.ready() is None  # nothing fetched yet
        tok = await cache.token()
        assert await cache.token() is tok  # this one looked at the store (none since start)
        assert cache.ready() is tok
        clock.advance(STORE_LOOK)  # a look at the store is due: token() would ask it
        assert cache.ready() is None
        assert await cache.token() is tok
        assert cache.ready() is tok
        clock.advance(LIFETIME - LEEWAY)  # due for refresh
        assert cache.ready() is None
        await cache.token()
        await cache.wait_idle()
        refused = cache.ready()
        assert refused is not None and refused is not tok  # refreshed
        replaced = await cache.replace_rejected(refused)  # the API said 401
        assert cache.ready() is replaced and replaced is not refused

    run(scenario)


# --- replace_rejected ----------------------------------------------------------------------------


def test_replace_rejected_refreshes_once(
    clock: Clock, grant: FakeGrant, store: MemoryStore
) -> None:
    cache = make_cache(grant, clock, store)

    async def scenario() -> None:
        old = await cache.token()
        new = await cache.replace_rejected(old)  # still valid by the clock, but refused
        assert new.access_token == "at-2"
        assert grant.calls == 2
        assert grant.previous[1] == old
        again = await cache.replace_rejected(old)  # a second flow with the same 401
        assert again is new
        assert grant.calls == 2
        assert await cache.token() is new

    run(scenario)
    record = store.get(NAME)
    assert record is not None
    assert (record.token.access_token, record.version) == ("at-2", 2)


def test_concurrent_replace_rejected_refreshes_once(
    clock: Clock, grant: FakeGrant, store: MemoryStore
) -> None:
    cache = make_cache(grant, clock, store)

    async def scenario() -> None:
        old = await cache.token()
        results = await concurrently(20, lambda: cache.replace_rejected(old), grant)
        assert grant.calls == 2
        assert {t.access_token for t in results} == {"at-2"}

    run(scenario)


def test_replace_rejected_adopts_token_written_by_another_process(
    clock: Clock, grant: FakeGrant, store: MemoryStore
) -> None:
    cache = make_cache(grant, clock, store)

    async def scenario() -> None:
        old = await cache.token()
        theirs = stored_token("at-theirs", clock, remaining=LIFETIME)
        store.put(NAME, theirs, expected_version=1)
        assert await cache.replace_rejected(old) == theirs
        assert grant.calls == 1
        assert await cache.token() == theirs

    run(scenario)


# --- terminal failures ---------------------------------------------------------------------------


def test_terminal_error_stops_attempts(clock: Clock, grant: FakeGrant, store: MemoryStore) -> None:
    grant.fail_with = terminal()
    cache = make_cache(grant, clock, store)

    async def scenario() -> None:
        with pytest.raises(TokenUnavailable, match=r"^refresh token revoked$") as info:
            await cache.token()
        err = info.value
        assert (err.credential, err.code, err.retry_after) == (NAME, "invalid_grant", None)
        assert grant.calls == 1  # terminal: not retried in place
        for _ in range(5):
            clock.advance(TERMINAL_RECHECK + 1)
            with pytest.raises(TokenUnavailable) as again:
                await cache.token()
            assert again.value.code == "invalid_grant"
            assert again.value.retry_after is None
        assert grant.calls == 1

    run(scenario)
    st = cache.status()
    assert (st.state, st.last_error, st.expires_at) == (
        "needs login",
        "refresh token revoked",
        None,
    )


def test_terminal_state_ends_when_a_login_writes_the_store(
    clock: Clock, grant: FakeGrant, store: MemoryStore
) -> None:
    grant.fail_with = terminal("needs_login", "no refresh token: run authproxy login")
    cache = make_cache(grant, clock, store)

    async def scenario() -> None:
        with pytest.raises(TokenUnavailable, match=r"authproxy login"):
            await cache.token()
        assert cache.status().state == "needs login"
        login = stored_token("at-login", clock, remaining=LIFETIME)
        store.put(NAME, login, expected_version=None)
        # not looked at again before TERMINAL_RECHECK has passed
        clock.advance(TERMINAL_RECHECK / 2)
        with pytest.raises(TokenUnavailable):
            await cache.token()
        clock.advance(TERMINAL_RECHECK)
        assert await cache.token() == login
        assert grant.calls == 1

    run(scenario)
    st = cache.status()
    assert (st.state, st.last_error) == ("valid", None)


def test_terminal_error_with_valid_token_serves_it(
    clock: Clock, grant: FakeGrant, store: MemoryStore
) -> None:
    cache = make_cache(grant, clock, store)

    async def scenario() -> None:
        first = await cache.token()
        clock.advance(LIFETIME - 30)  # inside the leeway
        grant.fail_with = terminal("invalid_client", "client disabled")
        assert await cache.token() is first
        await cache.wait_idle()
        assert grant.calls == 2
        assert cache.status().state == "failing"
        assert await cache.token() is first
        assert grant.calls == 2
        clock.advance(31)
        with pytest.raises(TokenUnavailable, match=r"^client disabled$") as info:
            await cache.token()
        assert info.value.code == "invalid_client"
        assert grant.calls == 2

    run(scenario)
    assert cache.status().state == "failing"  # terminal, but not a login problem


def test_terminal_error_with_stale_store_row_stops_attempts(
    clock: Clock, grant: FakeGrant, store: MemoryStore
) -> None:
    store.put(NAME, stored_token("at-expired", clock, remaining=-10), expected_version=None)
    grant.fail_with = terminal()
    cache = make_cache(grant, clock, store)

    async def scenario() -> None:
        with pytest.raises(TokenUnavailable):
            await cache.token()
        assert grant.calls == 1
        clock.advance(TERMINAL_RECHECK + 1)
        with pytest.raises(TokenUnavailable):
            await cache.token()
        assert grant.calls == 1  # the row is the one it already tried to refresh

    run(scenario)


# --- transient failures --------------------------------------------------------------------------


def test_transient_error_retried_then_backoff_then_recovery(
    clock: Clock, grant: FakeGrant, store: MemoryStore
) -> None:
    grant.fail_with = transient()
    cache = make_cache(grant, clock, store)

    async def scenario() -> None:
        with pytest.raises(TokenUnavailable, match=r"^the IdP answered HTTP 503$") as info:
            await cache.token()
        err = info.value
        assert err.code == "idp_unavailable"
        assert err.retry_after is not None
        assert POLICY.backoff_initial / 2 <= err.retry_after <= POLICY.backoff_initial
        assert grant.calls == POLICY.retry_attempts

        # inside the backoff window: fail fast, without calling the IdP
        for _ in range(3):
            with pytest.raises(
                TokenUnavailable, match=r"^token refresh failing, next attempt"
            ) as fast:
                await cache.token()
            assert fast.value.code == "idp_unavailable"
            assert fast.value.retry_after is not None
            assert 0 < fast.value.retry_after <= err.retry_after
        assert grant.calls == POLICY.retry_attempts
        st = cache.status()
        assert (st.state, st.failures, st.last_error) == ("failing", 1, "the IdP answered HTTP 503")

        # past the window: tried again, and it works now
        clock.advance(err.retry_after)
        grant.fail_with = None
        tok = await cache.token()
        assert tok.access_token == "at-1"
        assert grant.calls == POLICY.retry_attempts + 1

    run(scenario)
    st = cache.status()
    assert (st.state, st.failures, st.last_error, st.refreshes) == ("valid", 0, None, 1)


def test_transient_failures_back_off_longer(clock: Clock, grant: FakeGrant) -> None:
    grant.fail_with = transient()
    cache = make_cache(grant, clock)
    waits: list[float] = []

    async def scenario() -> None:
        for _ in range(4):
            with pytest.raises(TokenUnavailable) as info:
                await cache.token()
            assert info.value.retry_after is not None
            waits.append(info.value.retry_after)
            clock.advance(info.value.retry_after)

    run(scenario)
    assert grant.calls == 4 * POLICY.retry_attempts
    for n, wait in enumerate(waits, start=1):
        base = min(POLICY.backoff_max, POLICY.backoff_initial * 2 ** (n - 1))
        assert base / 2 <= wait <= base
    assert cache.status().failures == 4


def test_transient_error_recovered_by_in_place_retry(clock: Clock, grant: FakeGrant) -> None:
    grant.errors = [transient()]
    cache = make_cache(grant, clock, MemoryStore())

    async def scenario() -> Token:
        return await cache.token()

    assert run(scenario).access_token == "at-1"
    assert grant.calls == 2
    assert cache.status().state == "valid"


def test_terminal_error_during_in_place_retry(clock: Clock, grant: FakeGrant) -> None:
    grant.errors = [transient(), terminal("invalid_client", "bad secret")]
    cache = make_cache(
        grant, clock, MemoryStore(), TokenPolicy(retry_attempts=5, backoff_initial=0.001)
    )

    async def scenario() -> None:
        with pytest.raises(TokenUnavailable, match=r"^bad secret$") as info:
            await cache.token()
        assert (info.value.code, info.value.retry_after) == ("invalid_client", None)

    run(scenario)
    assert grant.calls == 2


def test_still_valid_token_served_while_refresh_fails(
    clock: Clock, grant: FakeGrant, store: MemoryStore
) -> None:
    cache = make_cache(grant, clock, store)

    async def scenario() -> None:
        first = await cache.token()
        clock.advance(LIFETIME - 30)  # due for refresh, valid for 30 s more
        grant.fail_with = transient()
        assert await cache.token() is first
        await cache.wait_idle()
        assert grant.calls == 1 + POLICY.retry_attempts
        assert await cache.token() is first  # inside the backoff window: no call
        assert grant.calls == 1 + POLICY.retry_attempts
        assert cache.status().state == "failing"
        clock.advance(30)  # expired now, and the backoff window is over
        with pytest.raises(TokenUnavailable) as info:
            await cache.token()
        assert info.value.code == "idp_unavailable"
        assert grant.calls == 1 + 2 * POLICY.retry_attempts

    run(scenario)


class BrokenStore(MemoryStore):
    def put(self, credential: str, token: Token, expected_version: int | None) -> Record:
        raise StoreError("disk full")


def test_store_error_is_transient(clock: Clock, grant: FakeGrant) -> None:
    cache = make_cache(grant, clock, BrokenStore())

    async def scenario() -> None:
        with pytest.raises(TokenUnavailable, match=r"^disk full$") as info:
            await cache.token()
        assert info.value.code == "store_error"
        assert info.value.retry_after is not None and info.value.retry_after > 0

    run(scenario)
    assert grant.calls == 1
    assert cache.status().state == "failing"


# --- the store -----------------------------------------------------------------------------------


def test_token_written_to_store(clock: Clock, grant: FakeGrant, store: MemoryStore) -> None:
    cache = make_cache(grant, clock, store)

    async def scenario() -> None:
        first = await cache.token()
        record = store.get(NAME)
        assert record is not None
        assert (record.credential, record.token, record.version) == (NAME, first, 1)
        clock.advance(LIFETIME)
        second = await cache.token()
        record = store.get(NAME)
        assert record is not None
        assert (record.token, record.version) == (second, 2)
        assert second.access_token == "at-2"

    run(scenario)


def test_token_in_store_adopted_without_obtain(
    clock: Clock, grant: FakeGrant, store: MemoryStore
) -> None:
    existing = stored_token("at-stored", clock, remaining=1800)
    store.put(NAME, existing, expected_version=None)
    cache = make_cache(grant, clock, store)

    async def scenario() -> None:
        assert await cache.token() == existing
        assert await cache.token() == existing

    run(scenario)
    assert grant.calls == 0
    record = store.get(NAME)
    assert record is not None and record.version == 1
    assert cache.status().state == "valid"


def test_expired_token_in_store_is_the_refresh_base(
    clock: Clock, grant: FakeGrant, store: MemoryStore
) -> None:
    old = stored_token("at-stored", clock, remaining=-5)
    store.put(NAME, old, expected_version=None)
    cache = make_cache(grant, clock, store)

    async def scenario() -> Token:
        return await cache.token()

    assert run(scenario).access_token == "at-1"
    assert grant.previous == [old]
    record = store.get(NAME)
    assert record is not None and record.version == 2


def test_stored_token_from_another_seed_is_not_adopted(
    clock: Clock, grant: FakeGrant, store: MemoryStore
) -> None:
    grant.seed_id = "seed-new"
    store.put(NAME, stored_token("at-stored", clock, remaining=1800, seed_id="seed-old"), None)
    cache = make_cache(grant, clock, store)

    async def scenario() -> Token:
        return await cache.token()

    tok = run(scenario)
    assert (tok.access_token, tok.seed_id) == ("at-1", "seed-new")
    assert grant.calls == 1


def test_token_refreshed_by_another_process_is_picked_up(
    clock: Clock, grant: FakeGrant, store: MemoryStore
) -> None:
    cache = make_cache(grant, clock, store)

    async def scenario() -> None:
        await cache.token()
        clock.advance(LIFETIME)  # ours is due; another process has refreshed in the meantime
        theirs = stored_token("at-theirs", clock, remaining=LIFETIME)
        store.put(NAME, theirs, expected_version=1)
        assert await cache.token() == theirs
        assert grant.calls == 1

    run(scenario)


# --- status --------------------------------------------------------------------------------------


def test_status_states(clock: Clock, grant: FakeGrant, store: MemoryStore) -> None:
    cache = make_cache(grant, clock, store)
    st = cache.status()
    assert (st.name, st.state, st.expires_at, st.last_error, st.refreshes, st.failures) == (
        NAME,
        "empty",
        None,
        None,
        0,
        0,
    )

    async def fetch() -> Token:
        return await cache.token()

    tok = run(fetch)
    st = cache.status()
    assert (st.state, st.expires_at, st.refreshes) == ("valid", tok.expires_at, 1)
    clock.advance(LIFETIME - LEEWAY)
    assert cache.status().state == "expiring"
    clock.advance(LEEWAY + 1)
    assert cache.status().state == "expiring"  # expired, not yet refreshed


@pytest.mark.parametrize(
    ("error", "state"),
    [
        (terminal("invalid_grant"), "needs login"),
        (terminal("needs_login"), "needs login"),
        (terminal("invalid_client"), "failing"),
        (transient(), "failing"),
    ],
)
def test_status_after_failure_without_token(
    clock: Clock, grant: FakeGrant, error: GrantError, state: str
) -> None:
    grant.fail_with = error
    cache = make_cache(grant, clock, MemoryStore())

    async def scenario() -> None:
        with pytest.raises(TokenUnavailable):
            await cache.token()

    run(scenario)
    st = cache.status()
    assert (st.state, st.last_error, st.expires_at, st.refreshes) == (state, str(error), None, 0)
    assert st.failures == (0 if error.terminal else 1)


# --- backoff_delay -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failures", "initial", "maximum", "low", "high"),
    [
        (0, 0.5, 30.0, 0.25, 0.5),
        (1, 0.5, 30.0, 0.25, 0.5),
        (2, 0.5, 30.0, 0.5, 1.0),
        (3, 0.5, 30.0, 1.0, 2.0),
        (6, 0.5, 30.0, 8.0, 16.0),
        (7, 0.5, 30.0, 15.0, 30.0),  # 32 capped at 30
        (50, 0.5, 30.0, 15.0, 30.0),
        (1000, 0.5, 30.0, 15.0, 30.0),
        (1, 2.0, 1.0, 0.5, 1.0),  # initial above the cap
        (5, 0.0, 30.0, 0.0, 0.0),
    ],
)
def test_backoff_delay_bounds(
    failures: int, initial: float, maximum: float, low: float, high: float
) -> None:
    rng = random.Random(failures)
    delays = [backoff_delay(failures, initial, maximum, rng) for _ in range(500)]
    assert all(low <= d <= high for d in delays)
    if high > low:  # jittered: spread over the range, not one value
        assert max(delays) - min(delays) > (high - low) / 2


def test_backoff_delay_deterministic_with_seeded_rng() -> None:
    a = [backoff_delay(n, 0.5, 30.0, random.Random(7)) for n in range(1, 10)]
    b = [backoff_delay(n, 0.5, 30.0, random.Random(7)) for n in range(1, 10)]
    assert a == b


@pytest.mark.parametrize("failures", [1100, 10_000])
def test_backoff_delay_after_very_many_failures(failures: int) -> None:
    delay = backoff_delay(failures, 0.5, 30.0, random.Random(0))
    assert 15.0 <= delay <= 30.0


def test_long_outage_still_reports_token_unavailable(
    clock: Clock, grant: FakeGrant, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.CRITICAL, logger="proxy_addon.cache")  # 1100 failures: keep quiet
    grant.fail_with = transient()
    cache = make_cache(grant, clock, None, TokenPolicy(retry_attempts=1, backoff_max=30.0))

    async def scenario() -> None:
        for _ in range(1100):
            clock.advance(60)  # past any backoff window
            with pytest.raises(TokenUnavailable):
                await cache.token()

    run(scenario)


def test_replace_rejected_never_returns_the_rejected_token(
    clock: Clock, grant: FakeGrant, store: MemoryStore
) -> None:
    cache = make_cache(grant, clock, store)

    async def scenario() -> None:
        old = await cache.token()
        grant.fail_with = transient()
        with pytest.raises(TokenUnavailable):
            await cache.replace_rejected(old)
        with pytest.raises(TokenUnavailable):  # nor to the next request
            await cache.token()

    run(scenario)
