"""The refresh-aware token cache: one `CredentialCache` per credential.

Rules, in one place:
- a token is refreshed *before* it expires (`needs_refresh` with the policy's leeway);
- one refresh at a time per credential (single-flight): an asyncio task in this process, the
  store's lock across processes. While the current token is still usable the refresh runs in
  the background and requests never wait for it; only a request with no usable token waits,
  and all such waiters share the one refresh;
- the blocking IdP call runs in a worker thread, which returns its outcome as a value and never
  touches the cache's fields (only the event loop does; the thread only counts itself in and
  out for `drain`);
- the newest token is committed to the store before anyone uses it, and a token the IdP just
  returned is committed even if it is not used (it may carry a rotated refresh token);
- a new token is used only if it is usable: one issued for less than `MIN_LIFETIME`, or
  already expired, is a failure (`unusable_token`) and is never sent;
- IdP failures: terminal ones (invalid_grant, ...) stop further attempts until the store gets a
  new token (a login, another process) or the config changes; transient ones are retried with
  exponential backoff and jitter, at least as long as the IdP's `Retry-After` (capped by
  `backoff_max`; an IdP that sends one is not retried in place), and between attempts callers
  fail fast, with that Retry-After, instead of storming;
- a request whose outcome is unknown (`GrantError.outcome_unknown`: it may have reached the
  IdP and spent a rotating refresh token) is never sent again within the same attempt chain;
  the chain fails with backoff and the next attempt first re-reads the store;
- a token that is still valid is used even while its refresh fails;
- 401-triggered refreshes are rate-limited per credential: at most one per `reject_grace`
  seconds (policy, default 5). A 401 sooner than that means the token that replaced a refused
  one was refused right after it was issued, which another token will not fix (wrong audience
  or scopes, or a hostile API): no IdP call, the credential backs off with
  `token_rejected_by_api`. A refused token is never handed out again;
- a request with no usable token waits for the store's lock at most `idp_timeout` seconds
  (another process holds it), then gets `refresh_in_progress` with a short Retry-After;
- in-process timers (backoff, terminal recheck, the 401 rate limit) use the monotonic clock;
  only token expiry is wall-clock (`expires_at` is absolute), so a clock step cannot lock a
  credential out;
- `close()` + `drain()` (called by `Runtime.close`) stop new refreshes and wait, bounded, for
  the one in flight, so its token is committed before the store closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .config import TokenPolicy
from .errors import GrantError, TokenUnavailable
from .grants import Grant
from .state import CredentialState, CredentialStatus
from .store import Record, StoreError, StoreUnavailableError, TokenStore, VersionConflict
from .tokens import Token, fingerprint, is_usable, needs_refresh

__all__ = ["CredentialCache", "CredentialStatus", "TokenUnavailable", "backoff_delay"]

logger = logging.getLogger(__name__)

# How often a credential in a terminal state looks at the store for a token written by a login
# or by another process.
TERMINAL_RECHECK = 2.0
# A new token must be issued for at least this long, or it is not used at all. Judged on the
# lifetime the IdP gave, not on what is left on arrival, so a slow answer on a busy machine does
# not turn a short-lived but good token into a failure.
MIN_LIFETIME = 1.0
# What a waiter is told when another process holds the refresh lock for too long.
BUSY_RETRY_AFTER = 2.0
# ops (issue 13): how often a request looks at the store for a token another process stored
# (`authproxy refresh`, a login, a fleet member), and how long it waits for that look at most.
STORE_LOOK = 1.0
STORE_LOOK_WAIT = 0.25


def _unusable(token: Token, now: float) -> bool:
    return token.expires_at - token.obtained_at < MIN_LIFETIME or token.expires_at <= now


@dataclass(frozen=True, slots=True)
class _Failure:
    """Why a refresh gave no token; a waiter turns it into TokenUnavailable or a fallback."""

    code: str
    message: str
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class _Outcome:
    """What the worker thread found: a row (and whether our IdP call made it), or an error."""

    record: Record | None = None
    obtained: bool = False  # record.token is what our IdP call returned
    read: bool = False  # the store's row was read under its lock: seen_version is its version
    seen_version: int | None = None
    error: GrantError | None = None
    busy: bool = False  # the store's lock stayed held elsewhere past the timeout


def backoff_delay(failures: int, initial: float, maximum: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform in [base/2, base], base = initial * 2^(n-1)."""
    base = min(maximum, initial * (2 ** min(max(failures - 1, 0), 64)))
    return rng.uniform(base / 2, base)


class CredentialCache:
    def __init__(
        self,
        name: str,
        grant: Grant,
        store: TokenStore | None,
        policy: TokenPolicy,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        store_key: str | None = None,
        refresh_without_store: bool = False,
    ) -> None:
        self.name, self.grant, self.store, self.policy = name, grant, store, policy
        self.store_key = store_key if store_key is not None else name
        # Store outage (issue 9): may this credential get a token while the store is
        # unreachable? Only one without shared secret state (client_credentials).
        self.refresh_without_store = refresh_without_store
        self._clock = clock  # wall clock: token expiry only
        self._mono = monotonic  # everything else
        self._rng = rng or random.Random()
        self._task: asyncio.Task[Token | _Failure] | None = None
        self._token: Token | None = None
        self._version: int | None = None  # store version of self._token
        self._seen_version: int | None = None  # store version last read under the lock
        self._refused: str | None = None  # access token the API refused: never handed out again
        self._last_reject_refresh: float | None = None  # monotonic start of the last 401 refresh
        self._terminal: GrantError | None = None
        self._terminal_checked = 0.0
        self._failures = 0
        self._rejections = 0  # just-issued tokens the API refused in a row
        self._next_attempt = 0.0  # monotonic
        self._last_code = "idp_unavailable"
        self.last_error: str | None = None
        self.refreshes = 0  # IdP calls that returned a token
        # Worker threads: counted so that shutdown can wait for their store commit.
        self._closing = threading.Event()
        self._workers = 0
        self._workers_cv = threading.Condition()
        self._next_look = 0.0  # monotonic; ops (issue 13), see _look_at_store

    # --- the hot path ---------------------------------------------------------------------------

    def ready(self) -> Token | None:
        """The token `token()` would return at once, without waiting or asking the store;
        None when it would wait (no token, one due for refresh or refused, a store look due).
        The per-request path calls this and awaits `token()` only when it says None."""
        tok = self._token
        if tok is None or tok.access_token == self._refused:
            return None
        if self._task is None and self._mono() >= self._next_look:
            return None
        if needs_refresh(tok, self._clock(), self.policy.refresh_leeway):
            return None
        return tok

    async def token(self) -> Token:
        """A token that is valid now. A due refresh runs in the background while it lasts."""
        if (ready := self.ready()) is not None:
            return ready
        tok = self._token
        if tok is not None and self._task is None and self._mono() >= self._next_look:
            await self._look_at_store()  # ops (issue 13)
            tok = self._token
        if tok is None:
            return await self._get(rejected=None)
        if tok.access_token == self._refused:  # as if the 401 came now: wait for a new one
            return await self._get(rejected=tok)
        if not needs_refresh(tok, self._clock(), self.policy.refresh_leeway):
            return tok
        return await self._get(rejected=None)

    async def replace_rejected(self, rejected: Token) -> Token:
        """The API refused `rejected` (401): a newer token, unless one already replaced it."""
        tok = self._token
        if tok is not None and tok.access_token != rejected.access_token:
            return tok
        last = self._last_reject_refresh
        if (
            self._task is None  # else: join the refresh in flight
            and last is not None
            and (since := self._mono() - last) < self.policy.reject_grace
        ):
            raise self._rejected_too_soon(rejected, since)
        self._refused = rejected.access_token
        return await self._get(rejected=rejected)

    async def force_refresh(self) -> Token:
        """Refresh now, whatever the expiry says (`authproxy refresh`)."""
        record = await asyncio.to_thread(self.store.get, self.store_key) if self.store else None
        current = record.token if record else self._token
        if current is None:
            return await self.token()
        if record is not None:
            self._token, self._version = record.token, record.version
        return await self._get(rejected=current)

    async def wait_idle(self) -> None:
        """Wait for the refresh in flight, if any, to settle (tests; orderly shutdown)."""
        while (task := self._task) is not None:
            await asyncio.wait([task])

    # --- shutdown -------------------------------------------------------------------------------

    @property
    def closing(self) -> bool:
        return self._closing.is_set()

    def close(self) -> None:
        """Start no new refresh; a worker between retries stops retrying."""
        self._closing.set()

    def drain(self, timeout: float) -> bool:
        """Block until no worker thread runs (its token committed), at most `timeout` s."""
        with self._workers_cv:
            return self._workers_cv.wait_for(lambda: self._workers == 0, timeout)

    @property
    def drain_timeout(self) -> float:
        p = self.policy
        return p.drain_timeout if p.drain_timeout is not None else p.idp_timeout + 2.0

    # --- refresh --------------------------------------------------------------------------------

    async def _get(self, rejected: Token | None, *, again: bool = True) -> Token:
        if self._closing.is_set():
            stopping = _Failure("shutting_down", "the proxy is stopping or reloading its config",
                                retry_after=1.0)  # fmt: skip
            return self._fallback(self._servable(rejected), stopping)
        if self._task is None and self._terminal is not None:
            await self._recheck_store()
            tok = self._servable(rejected)
            leeway = self.policy.refresh_leeway
            if tok is not None and not needs_refresh(tok, self._clock(), leeway):
                return tok  # a login or another process wrote a fresh one
        if self._task is None:
            if (blocked := self._blocked()) is not None:
                return self._fallback(self._servable(rejected), blocked)
            if rejected is not None:
                self._last_reject_refresh = self._mono()
            self._task = asyncio.get_running_loop().create_task(self._run(rejected))
            self._task.add_done_callback(_consume)
        task = self._task
        tok = self._servable(rejected)
        if rejected is None and tok is not None:
            return tok  # usable: the refresh goes on in the background
        result = await asyncio.shield(task)
        if isinstance(result, _Failure):
            return self._fallback(self._servable(rejected), result)
        if rejected is not None and result.access_token == rejected.access_token:
            # A refresh started before the 401 found the refused token still current.
            if again:
                return await self._get(rejected, again=False)
            raise TokenUnavailable(
                self.name, "token_rejected_by_api", "the API refused the current token"
            )
        return result

    def _servable(self, rejected: Token | None) -> Token | None:
        """The current token if it may be handed out as it is."""
        tok = self._token
        if tok is None or tok.access_token == self._refused or not is_usable(tok, self._clock()):
            return None
        if rejected is not None and tok.access_token == rejected.access_token:
            return None
        return tok

    def _blocked(self) -> _Failure | None:
        """Terminal, or inside a backoff window: no IdP call now."""
        if self._terminal is not None:
            return _Failure(self._terminal.code, str(self._terminal))
        wait = self._next_attempt - self._mono()
        if wait > 0:
            return _Failure(
                self._last_code,
                f"token refresh failing, next attempt in {wait:.1f}s: {self.last_error}",
                retry_after=wait,
            )
        return None

    async def _run(self, rejected: Token | None) -> Token | _Failure:
        """The single-flight refresh: the worker thread's outcome, applied on the loop."""
        try:
            outcome = await asyncio.to_thread(
                self._worker, rejected, self._token, self._version, self.policy.idp_timeout
            )
            return self._settle(outcome, rejected)
        finally:
            self._task = None

    def _settle(self, outcome: _Outcome, rejected: Token | None) -> Token | _Failure:
        if outcome.read:
            self._seen_version = outcome.seen_version
        if outcome.busy:
            wait = min(BUSY_RETRY_AFTER, self.policy.idp_timeout)
            return _Failure(
                "refresh_in_progress",
                f"another process is refreshing this token; try again in {wait:g}s",
                retry_after=wait,
            )
        if outcome.error is not None:
            return self._failed(outcome.error)
        record = outcome.record
        assert record is not None
        if outcome.obtained:
            self.refreshes += 1
            remaining = record.token.expires_at - self._clock()
            logger.info(
                "credential %s: new token %s, expires in %.0fs",
                self.name, fingerprint(record.token.access_token), remaining,
            )  # fmt: skip
            if _unusable(record.token, self._clock()):
                # Committed (its refresh token may be the only valid one now), never sent.
                self._version = record.version
                return self._failed(
                    GrantError(
                        "unusable_token",
                        f"the IdP issued a token that expires in {remaining:.0f}s; not used "
                        "(check the IdP's expires_in and this machine's clock)",
                        terminal=False,
                    )
                )
        self._adopt(record, rejection=rejected is not None)
        return record.token

    # --- the worker thread: reads its arguments and the policy, returns an _Outcome ------------

    def _worker(
        self, rejected: Token | None, token: Token | None, version: int | None, lock_wait: float
    ) -> _Outcome:
        with self._workers_cv:
            self._workers += 1
        try:
            if self._closing.is_set():  # shut down before this thread got going
                return _Outcome(error=GrantError("shutting_down", "the proxy is stopping",
                                                 terminal=False))  # fmt: skip
            return self._refresh_blocking(rejected, token, version, lock_wait)
        except GrantError as e:
            return _Outcome(error=e)
        except StoreUnavailableError as e:  # store outage (issue 9): see _without_store
            return _Outcome(error=GrantError("store_unavailable", str(e), terminal=False))
        except StoreError as e:
            return _Outcome(error=GrantError("store_error", str(e), terminal=False))
        except Exception as e:  # a bug or an unmapped fault: back off, never storm
            logger.exception("credential %s: unexpected error while refreshing", self.name)
            error = GrantError("internal_error", f"{type(e).__name__} (see the proxy log)",
                               terminal=False)  # fmt: skip
            return _Outcome(error=error)
        finally:
            with self._workers_cv:
                self._workers -= 1
                self._workers_cv.notify_all()

    def _refresh_blocking(
        self, rejected: Token | None, token: Token | None, version: int | None, lock_wait: float
    ) -> _Outcome:
        """Under the store's lock: re-read, and call the IdP only if nobody else did."""
        if self.store is None:
            new = self._obtain(token)
            record = Record(self.name, new, (version or 0) + 1, self._clock())
            return _Outcome(record, obtained=True)
        key = self.store_key
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(self.store.lock(key, timeout=lock_wait))
            except TimeoutError:
                return _Outcome(busy=True)
            except StoreUnavailableError as e:  # store outage (issue 9)
                return self._without_store(token, version, e)
            current = self.store.get(key)
            seen = current.version if current else None
            if current is not None and self._fresh(current.token, rejected):
                return _Outcome(current, read=True, seen_version=seen)
            try:
                new = self._obtain(current.token if current else None)
            except GrantError as e:
                return _Outcome(read=True, seen_version=seen, error=e)
            try:
                record = self.store.put(key, new, seen)
            except VersionConflict:
                # Only a writer that ignored the lock (a lease that ran out mid-call) gets here;
                # ours is still the newest token we know of, so overwrite on top of theirs.
                latest = self.store.get(key)
                record = self.store.put(key, new, latest.version if latest else None)
            return _Outcome(record, obtained=True, read=True, seen_version=seen)

    # --- store outage (issue 9) ---------------------------------------------------------------
    def _without_store(
        self, token: Token | None, version: int | None, error: StoreUnavailableError
    ) -> _Outcome:
        """The shared store is unreachable, so its lock cannot be taken.

        A refresh-token chain is never refreshed without that lock: another member may be
        refreshing it, and a rotated refresh token spent twice ends the login. It fails fast
        (`store_unavailable`, no IdP call) while the current token, if still valid, keeps
        serving. A credential without shared secret state (client_credentials) gets a token
        alone; it is not written anywhere, and the first refresh after the store is back
        stores its token under the lock as usual.
        """
        if not self.refresh_without_store:
            return _Outcome(error=GrantError("store_unavailable", str(error), terminal=False))
        logger.warning(
            "credential %s: %s; getting a token without the store", self.name, error
        )
        new = self._obtain(token)
        return _Outcome(Record(self.store_key, new, version or 0, self._clock()), obtained=True)

    # ------------------------------------------------------------------------------------------

    def _fresh(self, token: Token, rejected: Token | None) -> bool:
        if rejected is not None and token.access_token == rejected.access_token:
            return False
        if self.grant.seed_id is not None and token.seed_id != self.grant.seed_id:
            return False  # the config names a new refresh token: the stored chain is stale
        now = self._clock()
        if _unusable(token, now):
            return False  # e.g. an unusable token kept for its refresh token
        return not needs_refresh(token, now, self.policy.refresh_leeway)

    def _obtain(self, previous: Token | None) -> Token:
        """The IdP call, retried in place on transient failures with backoff and jitter.

        Not retried in place: terminal errors, an unknown outcome (the request may have spent
        a rotating refresh token), an IdP that named its own Retry-After, and shutdown.
        """
        attempts = self.policy.retry_attempts
        for attempt in range(1, attempts + 1):
            try:
                return self.grant.obtain(previous)
            except GrantError as e:
                if (
                    e.terminal
                    or e.outcome_unknown
                    or e.retry_after is not None
                    or attempt == attempts
                ):
                    raise
                delay = backoff_delay(
                    attempt, self.policy.backoff_initial, self.policy.backoff_max, self._rng
                )
                logger.warning(
                    "credential %s: %s; retrying in %.2fs (%d/%d)",
                    self.name, e, delay, attempt, attempts,
                )  # fmt: skip
                if self._closing.wait(delay):  # in a worker thread, never on the event loop
                    raise
        raise AssertionError("unreachable")

    # --- outcomes -------------------------------------------------------------------------------

    def _adopt(self, record: Record, *, rejection: bool = False) -> None:
        self._token, self._version = record.token, record.version
        if record.token.access_token != self._refused:
            self._refused = None
        self._terminal, self._failures, self._next_attempt = None, 0, 0.0
        if not rejection:
            self._rejections = 0  # a refresh for age, not for a 401: the API is not suspect
        self.last_error = None

    def _failed(self, error: GrantError) -> _Failure:
        self.last_error, self._last_code = str(error), error.code
        if error.terminal:
            self._terminal = error
            self._terminal_checked = self._mono()
            logger.error("credential %s: %s (will not retry until it changes)", self.name, error)
            return _Failure(error.code, str(error))
        self._failures += 1
        delay = backoff_delay(
            self._failures, self.policy.backoff_initial, self.policy.backoff_max, self._rng
        )
        if error.retry_after is not None:  # the IdP's own word, within our ceiling
            delay = max(delay, min(error.retry_after, self.policy.backoff_max))
        self._next_attempt = self._mono() + delay
        if error.outcome_unknown:
            logger.error(
                "credential %s: %s; the request may have been acted on, so it is not sent "
                "again: next attempt (after re-reading the store) in %.1fs",
                self.name, error, delay,
            )  # fmt: skip
        else:
            logger.error("credential %s: %s; next attempt in %.1fs", self.name, error, delay)
        return _Failure(error.code, str(error), delay)

    def _rejected_too_soon(self, rejected: Token, since: float) -> TokenUnavailable:
        now = self._mono()
        if self._refused != rejected.access_token:  # the first 401 for this token
            self._refused = rejected.access_token
            self._rejections += 1
            delay = backoff_delay(
                self._rejections, self.policy.backoff_initial, self.policy.backoff_max, self._rng
            )
            wait = max(delay, self.policy.reject_grace - since)
            self._next_attempt = max(self._next_attempt, now + wait)
            self._last_code = "token_rejected_by_api"
            self.last_error = (
                f"the API refused (HTTP 401) the token that replaced a refused one {since:.1f}s "
                "ago, so another would be refused too: check the credential's scopes and "
                "audience, and the route"
            )
            logger.error(
                "credential %s: %s; next attempt in %.1fs",
                self.name, self.last_error, self._next_attempt - now,
            )  # fmt: skip
        return TokenUnavailable(
            self.name,
            "token_rejected_by_api",
            self.last_error or "the API refused a new token",
            retry_after=max(self._next_attempt - now, 0.0),
        )

    def _fallback(self, tok: Token | None, failure: _Failure) -> Token:
        """Use the old token while it lasts; otherwise the caller cannot be served."""
        if tok is not None and is_usable(tok, self._clock()):
            return tok
        raise TokenUnavailable(self.name, failure.code, failure.message, failure.retry_after)

    # --- ops (issue 13): tokens stored by other processes ---------------------------------------

    async def _look_at_store(self) -> None:
        """Adopt a newer row another process stored (`authproxy refresh`): at most every
        STORE_LOOK seconds, waiting STORE_LOOK_WAIT at most (a slow store finishes the look in
        the background, for the next request)."""
        self._next_look = self._mono() + STORE_LOOK
        if self.store is None or self._closing.is_set():
            return
        look = asyncio.ensure_future(asyncio.to_thread(self.store.get, self.store_key))
        look.add_done_callback(self._looked)
        # asyncio.wait never raises: a store outage is the refresh's business, not this look's.
        await asyncio.wait({look}, timeout=STORE_LOOK_WAIT)

    def _looked(self, look: asyncio.Future[Record | None]) -> None:
        if look.cancelled() or look.exception() is not None:
            return  # the store's trouble shows when a refresh needs it
        record = look.result()
        if record is None or self._version is None or record.version <= self._version:
            return
        tok = record.token
        if tok.access_token == self._refused or _unusable(tok, self._clock()):
            return
        if self.grant.seed_id is not None and tok.seed_id != self.grant.seed_id:
            return
        logger.info(
            "credential %s: using token %s, stored by another process",
            self.name, fingerprint(tok.access_token),
        )  # fmt: skip
        self._adopt(record)

    async def _recheck_store(self) -> None:
        """In a terminal state: has a login or another process written a new token?"""
        now = self._mono()
        if self.store is None or now - self._terminal_checked < TERMINAL_RECHECK:
            return
        self._terminal_checked = now
        try:
            record = await asyncio.to_thread(self.store.get, self.store_key)
        except StoreError:
            return
        if self._terminal is None or record is None:
            return
        if record.version in (self._version, self._seen_version):
            return
        if self._fresh(record.token, None):
            self._adopt(record)
        else:
            self._terminal, self._version = None, record.version

    # --- status ---------------------------------------------------------------------------------

    def status(self) -> CredentialStatus:
        now, tok = self._clock(), self._token
        if self._terminal is not None and not is_usable(tok, now):
            state = (
                CredentialState.NEEDS_LOGIN
                if self._terminal.code in ("needs_login", "invalid_grant")
                else CredentialState.FAILING
            )
        elif self.last_error is not None:
            state = CredentialState.FAILING
        elif tok is None:
            state = CredentialState.EMPTY
        elif needs_refresh(tok, now, self.policy.refresh_leeway):
            state = CredentialState.EXPIRING
        else:
            state = CredentialState.VALID
        return CredentialStatus(
            self.name,
            state,
            tok.expires_at if tok else None,
            self.last_error,
            self.refreshes,
            self._failures,
        )


def _consume(task: asyncio.Task[Token | _Failure]) -> None:
    """A background refresh nobody awaited: its result is in the cache, its error was logged."""
    if not task.cancelled():
        task.exception()
