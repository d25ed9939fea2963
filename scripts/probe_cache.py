"""Probe the token cache's refresh behaviour in-process, in real time (issue 14, items 1, 3, 4).

    .venv/bin/python scripts/probe_cache.py [seconds-per-probe]

Uses only the cache's public surface, so the same script measures an older checkout too.
Prints one line per probe: the figure the issue names, before/after comparable.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time

from proxy_addon.cache import CredentialCache, TokenUnavailable
from proxy_addon.config import TokenPolicy
from proxy_addon.errors import GrantError
from proxy_addon.store import MemoryStore
from proxy_addon.tokens import Token


class ProbeGrant:
    refreshable, seed_id, name = True, None, "probe"

    def __init__(self, lifetime: float = 3600.0, hang: float = 0.0) -> None:
        self.lifetime, self.hang, self.calls = lifetime, hang, 0
        self.error: GrantError | None = None

    def obtain(self, previous: Token | None) -> Token:
        self.calls += 1
        if self.hang and self.calls > 1:
            threading.Event().wait(self.hang)  # a hung IdP (only the refresh, not the first)
        if self.error is not None:
            raise GrantError(self.error.code, str(self.error), terminal=False,
                             retry_after=self.error.retry_after)  # fmt: skip
        now = time.time()
        return Token(f"at-{self.calls}", now + self.lifetime, now)


POLICY = TokenPolicy(idp_timeout=2.0, retry_attempts=1, backoff_initial=0.5, backoff_max=30.0)


async def hung_refresh(seconds: float) -> str:
    """A token due for refresh but valid `seconds` more; the IdP hangs: worst request wait."""
    grant = ProbeGrant(lifetime=2 * seconds, hang=seconds)
    policy = TokenPolicy(refresh_leeway=seconds, idp_timeout=seconds + 1, retry_attempts=1)
    cache = CredentialCache("probe", grant, MemoryStore(), policy)
    first = await cache.token()
    await asyncio.sleep(max(first.expires_at - time.time() - seconds, 0) + 0.05)  # now due
    worst, served, end = 0.0, 0, time.monotonic() + seconds - 0.1
    while time.monotonic() < end:
        started = time.monotonic()
        await cache.token()
        worst, served = max(worst, time.monotonic() - started), served + 1
        await asyncio.sleep(0.01)
    return f"hung IdP, valid token: worst request wait {worst:.2f}s, {served} served"


async def always_401(seconds: float) -> str:
    grant = ProbeGrant()
    cache = CredentialCache("probe", grant, MemoryStore(), POLICY)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            tok = await cache.token()
            await cache.replace_rejected(tok)
        except TokenUnavailable:
            pass
        await asyncio.sleep(0.005)
    return f"API always 401: {grant.calls / seconds:.1f} IdP calls/s"


async def expired_tokens(seconds: float) -> str:
    grant = ProbeGrant(lifetime=-5.0)
    cache = CredentialCache("probe", grant, MemoryStore(), POLICY)
    sent, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            tok = await cache.token()
            sent += tok.expires_at <= time.time()
        except TokenUnavailable:
            pass
        await asyncio.sleep(0.005)
    return f"expires_in -5: {grant.calls / seconds:.1f} IdP calls/s, {sent} expired tokens sent"


async def retry_after(seconds: float) -> str:
    grant = ProbeGrant()
    grant.error = GrantError("idp_unavailable", "HTTP 503", terminal=False, retry_after=10.0)
    cache = CredentialCache("probe", grant, MemoryStore(), POLICY)
    told: set[int] = set()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            await cache.token()
        except TokenUnavailable as e:
            told.add(round(e.retry_after or 0))
        await asyncio.sleep(0.005)
    return (
        f"IdP Retry-After 10: {grant.calls} IdP calls in {seconds:g}s, "
        f"clients told Retry-After {min(told)}-{max(told)}s"
    )


async def main(seconds: float) -> None:
    for probe in (hung_refresh, always_401, expired_tokens, retry_after):
        print(await probe(seconds))


if __name__ == "__main__":
    asyncio.run(main(float(sys.argv[1]) if len(sys.argv) > 1 else 3.0))
