"""The refresh-aware token cache: one `CredentialCache` per credential.

Rules, in one place:
- a token is refreshed *before* it expires (`needs_refresh` with the policy's leeway);
- one refresh at a time per credential: waiters share its result (an asyncio lock in this
  process, the store's lock across processes);
- the blocking IdP call runs in a worker thread, so other flows keep moving;
- the newest token is committed to the store before anyone uses it;
- IdP failures: terminal ones (invalid_grant, ...) stop further attempts until the store gets a
  new token (a login, another process) or the config changes; transient ones are retried with
  exponential backoff and jitter, and between attempts callers fail fast instead of storming;
- a token that is still valid is used even while its refresh fails.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from .config import TokenPolicy
from .grants import Grant, GrantError
from .store import Record, StoreError, TokenStore, VersionConflict
from .tokens import Token, fingerprint, is_usable, needs_refresh

__all__ = ["CredentialCache", "CredentialStatus", "TokenUnavailable", "backoff_delay"]

logger = logging.getLogger(__name__)

# How often a credential in a terminal state looks at the store for a token written by a login
# or by another process.
TERMINAL_RECHECK = 2.0
NEEDS_LOGIN = ("needs_login", "invalid_grant")


class TokenUnavailable(Exception):
    """No valid token can be had for a credential right now."""

    def __init__(
        self, credential: str, code: str, message: str, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.credential, self.code, self.retry_after = credential, code, retry_after


@dataclass(frozen=True, slots=True)
class CredentialStatus:
    name: str
    state: str  # valid | expiring | empty | failing | needs_login
    expires_at: float | None
    last_error: str | None
    refreshes: int
    failures: int


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
        rng: random.Random | None = None,
        store_key: str | None = None,
    ) -> None:
        self.name, self.grant, self.store, self.policy = name, grant, store, policy
        # The row in the store (name#identity, see CredentialConfig.store_key).
        self.store_key = store_key or name
        self._clock = clock
        self._rng = rng or random.Random()
        self._lock = asyncio.Lock()
        self._token: Token | None = None
        self._version: int | None = None  # store version of self._token
        self._seen_version: int | None = None  # store version last read under the lock
        self._terminal: GrantError | None = None
        self._terminal_checked = 0.0
        self._failures = 0
        self._next_attempt = 0.0
        self.last_error: str | None = None
        self.refreshes = 0  # IdP calls that returned a token

    # --- the hot path ---------------------------------------------------------------------------

    async def token(self) -> Token:
        """A token that is valid now, refreshing it first if it is due."""
        tok = self._token
        if tok is not None and not needs_refresh(tok, self._clock(), self.policy.refresh_leeway):
            return tok
        return await self._refresh(rejected=None)

    async def replace_rejected(self, rejected: Token) -> Token:
        """The API refused `rejected` (401): a newer token, unless one already replaced it."""
        if self._token is not None and self._token.access_token != rejected.access_token:
            return self._token
        return await self._refresh(rejected=rejected)

    async def force_refresh(self) -> Token:
        """Refresh now, whatever the expiry says (`authproxy refresh`)."""
        record = await asyncio.to_thread(self.store.get, self.store_key) if self.store else None
        current = record.token if record else self._token
        if current is None:
            return await self.token()
        if record is not None:
            self._token, self._version = record.token, record.version
        return await self._refresh(rejected=current)

    # --- refresh ----------------------------------------------------------------------------------

    async def _refresh(self, rejected: Token | None) -> Token:
        async with self._lock:
            now = self._clock()
            tok = self._token
            if rejected is None and tok and not needs_refresh(tok, now, self.policy.refresh_leeway):
                return tok  # another waiter refreshed it while we queued
            if rejected is not None and tok and tok.access_token != rejected.access_token:
                return tok
            if rejected is not None:
                tok = None  # the API refused it: never hand it out again, even as a fallback
            if self._terminal is not None and not await self._store_has_news(now):
                return self._fallback(tok, now, self._terminal.code, str(self._terminal))
            if now < self._next_attempt:
                return self._fallback(
                    tok,
                    now,
                    "idp_unavailable",
                    f"token refresh failing, next attempt in {self._next_attempt - now:.1f}s: "
                    f"{self.last_error}",
                    retry_after=self._next_attempt - now,
                )
            try:
                record = await asyncio.to_thread(self._refresh_blocking, rejected)
            except GrantError as e:
                return self._failed(e, tok)
            except (StoreError, TimeoutError) as e:
                return self._failed(GrantError("store_error", str(e), terminal=False), tok)
            except Exception as e:  # a bug or an unmapped fault: back off, never storm
                logger.exception("credential %s: unexpected error while refreshing", self.name)
                error = GrantError("internal_error", f"{type(e).__name__} (see the proxy log)",
                                   terminal=False)  # fmt: skip
                return self._failed(error, tok)
            self._adopt(record)
            return record.token

    def _refresh_blocking(self, rejected: Token | None) -> Record:
        """Under the store's lock: re-read, and call the IdP only if nobody else did."""
        if self.store is None:
            return self._fetch_and_wrap(self._token)
        with self.store.lock(self.store_key, timeout=self._lock_timeout()):
            current = self.store.get(self.store_key)
            self._seen_version = current.version if current else None
            if current is not None and self._fresh(current.token, rejected):
                return current
            previous = current.token if current else None
            token = self._obtain(previous)
            try:
                return self.store.put(self.store_key, token, current.version if current else None)
            except VersionConflict:
                # Only a writer that ignored the lock (a lease that ran out mid-call) gets here;
                # ours is still the newest token we know of, so overwrite on top of theirs.
                latest = self.store.get(self.store_key)
                return self.store.put(self.store_key, token, latest.version if latest else None)

    def _fresh(self, token: Token, rejected: Token | None) -> bool:
        if rejected is not None and token.access_token == rejected.access_token:
            return False
        if self.grant.seed_id is not None and token.seed_id != self.grant.seed_id:
            return False  # the config names a new refresh token: the stored chain is stale
        return not needs_refresh(token, self._clock(), self.policy.refresh_leeway)

    def _fetch_and_wrap(self, previous: Token | None) -> Record:
        token = self._obtain(previous)
        return Record(self.name, token, (self._version or 0) + 1, self._clock())

    def _obtain(self, previous: Token | None) -> Token:
        """The IdP call, retried in place on transient failures with backoff and jitter."""
        attempts = self.policy.retry_attempts
        for attempt in range(1, attempts + 1):
            try:
                token = self.grant.obtain(previous)
            except GrantError as e:
                if e.terminal or attempt == attempts:
                    raise
                delay = backoff_delay(
                    attempt, self.policy.backoff_initial, self.policy.backoff_max, self._rng
                )
                logger.warning(
                    "credential %s: %s; retrying in %.2fs (%d/%d)",
                    self.name,
                    e,
                    delay,
                    attempt,
                    attempts,
                )
                time.sleep(delay)  # in a worker thread, never on the event loop
                continue
            self.refreshes += 1
            logger.info(
                "credential %s: new token %s, expires in %.0fs",
                self.name,
                fingerprint(token.access_token),
                token.expires_at - self._clock(),
            )
            return token
        raise AssertionError("unreachable")

    def _lock_timeout(self) -> float:
        # Long enough for another holder's full retry sequence.
        p = self.policy
        return p.retry_attempts * (p.idp_timeout + p.backoff_max) + 5

    # --- outcomes ---------------------------------------------------------------------------------

    def _adopt(self, record: Record) -> None:
        self._token, self._version = record.token, record.version
        self._terminal, self._failures, self._next_attempt = None, 0, 0.0
        self.last_error = None

    def _failed(self, error: GrantError, tok: Token | None) -> Token:
        now = self._clock()
        self.last_error = str(error)
        if error.terminal:
            self._terminal = error
            self._terminal_checked = now
            logger.error("credential %s: %s (will not retry until it changes)", self.name, error)
        else:
            self._failures += 1
            delay = backoff_delay(
                self._failures, self.policy.backoff_initial, self.policy.backoff_max, self._rng
            )
            self._next_attempt = now + delay
            logger.error("credential %s: %s; next attempt in %.1fs", self.name, error, delay)
        retry_after = None if error.terminal else self._next_attempt - now
        return self._fallback(tok, now, error.code, str(error), retry_after=retry_after)

    def _fallback(
        self,
        tok: Token | None,
        now: float,
        code: str,
        message: str,
        retry_after: float | None = None,
    ) -> Token:
        """Use the old token while it lasts; otherwise the caller cannot be served."""
        if is_usable(tok, now):
            assert tok is not None
            return tok
        raise TokenUnavailable(self.name, code, message, retry_after)

    async def _store_has_news(self, now: float) -> bool:
        """In a terminal state: has a login or another process written a new token?"""
        if self.store is None or now - self._terminal_checked < TERMINAL_RECHECK:
            return False
        self._terminal_checked = now
        try:
            record = await asyncio.to_thread(self.store.get, self.store_key)
        except StoreError:
            return False
        if record is None or record.version in (self._version, self._seen_version):
            return False
        if self._fresh(record.token, None):
            self._adopt(record)
        else:
            self._terminal, self._version = None, record.version
        return True

    # --- status ---------------------------------------------------------------------------------

    def status(self) -> CredentialStatus:
        now, tok = self._clock(), self._token
        if self._terminal is not None and not is_usable(tok, now):
            state = (
                "needs_login"
                if self._terminal.code in ("needs_login", "invalid_grant")
                else "failing"
            )
        elif self.last_error is not None:
            state = "failing"
        elif tok is None:
            state = "empty"
        elif needs_refresh(tok, now, self.policy.refresh_leeway):
            state = "expiring"
        else:
            state = "valid"
        return CredentialStatus(
            self.name,
            state,
            tok.expires_at if tok else None,
            self.last_error,
            self.refreshes,
            self._failures,
        )
