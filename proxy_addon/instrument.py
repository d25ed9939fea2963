"""Timing and event records around each credential's token requests, for metrics and console.

`instrument(runtime, metrics)` wraps every refreshing grant of a freshly built runtime in a
`TimedGrant`, which behaves exactly as the grant it wraps and also records the IdP call's
duration and outcome. It runs in the cache's worker thread, as the grant does.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from .console import human_span
from .errors import GrantError
from .health import TimedStore
from .tokens import Token

if TYPE_CHECKING:
    from .metrics import Metrics
    from .runtime import Runtime

__all__ = ["OUTCOMES", "TimedGrant", "instrument", "outcome_label"]

# Outcome label values. An IdP names its own error codes, so anything else is "other": a hostile
# or creative IdP must not grow the metrics without bound.
OUTCOMES = frozenset({
    "ok", "internal_error", "oauth_error", "no_token_endpoint",
    "idp_bad_response", "idp_error", "idp_redirected", "idp_timeout", "idp_tls_error",
    "idp_unavailable", "idp_unreachable",
    # RFC 6749 §5.2 and §4.1.2.1, RFC 8628 §3.5
    "invalid_request", "invalid_client", "invalid_grant", "unauthorized_client",
    "unsupported_grant_type", "invalid_scope", "access_denied", "server_error",
    "temporarily_unavailable", "authorization_pending", "slow_down", "expired_token",
})  # fmt: skip


def outcome_label(code: str) -> str:
    return code if code in OUTCOMES else "other"


class TimedGrant:
    def __init__(self, grant: Any, credential: str, metrics: Metrics) -> None:
        self.wrapped, self.credential, self.metrics = grant, credential, metrics

    def __getattr__(self, name: str) -> Any:  # refreshable, seed_id, cfg, revoke, ...
        return getattr(self.wrapped, name)

    def obtain(self, previous: Token | None) -> Token:
        start = time.monotonic()
        try:
            token = self.wrapped.obtain(previous)
        except GrantError as e:
            if e.code == "needs_login":  # decided without asking the IdP: no IdP call to time
                self.metrics.events.record("needs_login", self.credential, str(e))
                raise
            said = str(e) if e.code in str(e) else f"{e.code}: {e}"
            self._done(start, e.code, "idp_error", said)
            raise
        except Exception as e:
            self._done(start, "internal_error", "idp_error", f"{type(e).__name__} (see the log)")
            raise
        left = token.expires_at - time.time()
        expires = "never expires" if math.isinf(left) else f"expires in {human_span(left)}"
        took = time.monotonic() - start
        self._done(start, "ok", "refresh", f"new token from the IdP in {took:.2f} s, {expires}")
        return token

    def _done(self, start: float, outcome: str, kind: str, message: str) -> None:
        seconds = time.monotonic() - start
        self.metrics.observe_idp(self.credential, seconds, outcome_label(outcome))
        self.metrics.events.record(kind, self.credential, message)


def instrument(runtime: Runtime, metrics: Metrics) -> None:
    """Wrap the runtime's grants (static ones call no IdP: neither timed nor refreshes)."""
    metrics.static = frozenset(
        name for name, cache in runtime.caches.items() if not cache.grant.refreshable
    )
    timed = TimedStore(runtime.store, metrics)  # store latency and errors (health.py)
    for name, cache in runtime.caches.items():
        if cache.store is runtime.store:
            cache.store = timed  # type: ignore[assignment]
        if name not in metrics.static and not isinstance(cache.grant, TimedGrant):
            cache.grant = TimedGrant(cache.grant, name, metrics)

