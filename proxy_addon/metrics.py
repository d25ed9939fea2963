"""Counters, durations and recent events the proxy keeps, and their Prometheus text form. No I/O.

Written from the event loop and from the worker threads that call the IdP, hence the lock.
"""

from __future__ import annotations

import bisect
import math
import platform
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence

from .events import EventLog
from .status import CredentialView

__all__ = [
    "COUNTERS", "IDP_BUCKETS", "REQUEST_BUCKETS", "STORE_BUCKETS", "Histogram", "Metrics",
    "build_info",
]  # fmt: skip

# name -> help text; every counter is per credential.
COUNTERS = {
    "injected": "Requests that left with an injected token.",
    "refreshed": "Tokens obtained from the identity provider.",
    "retried": "Requests re-sent once after the API answered 401.",
    "token_failures": "Requests answered 502 because no valid token could be had.",
    "refused": "Requests refused by a route rule (plain http, client Authorization).",
}

# What an operator reads on the console's event list when a counter moves (injections are too
# frequent to list one by one).
EVENT_TEXT = {
    "retried": ("retry", "the API answered 401: re-sent once with a new token"),
    "token_failures": ("token_failure", "answered 502: no valid token could be had"),
    "refused": ("refused", "refused by a route rule"),
}

# Seconds. A proxied call includes the API's own time; an IdP call includes TLS setup.
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
IDP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# A store round trip: microseconds for SQLite, a network hop for Redis; a lock wait can be long.
STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


def build_info() -> dict[str, str]:
    from mitmproxy.version import VERSION as MITMPROXY_VERSION

    from . import __version__

    return {
        "version": __version__,
        "mitmproxy": MITMPROXY_VERSION,
        "python": platform.python_version(),
    }


class Histogram:
    """A Prometheus histogram keyed by a tuple of label values (cumulative buckets on output)."""

    def __init__(self, labels: Sequence[str], buckets: Sequence[float]) -> None:
        self.labels, self.buckets = tuple(labels), tuple(buckets)
        # label values -> [count per bucket (not cumulative; the last is +Inf), sum]
        self._data: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}

    def observe(self, values: tuple[str, ...], seconds: float) -> None:
        entry = self._data.get(values)  # setdefault alone would build its default each time
        if entry is None:
            entry = self._data.setdefault(values, ([0] * (len(self.buckets) + 1), [0.0]))
        counts, total = entry
        i = bisect.bisect_left(self.buckets, seconds)  # the first bucket with seconds <= bound
        counts[i] += 1
        total[0] += seconds

    def count(self, values: tuple[str, ...]) -> int:
        return sum(self._data[values][0]) if values in self._data else 0

    def export(self) -> list[tuple[list[str], list[int], float]]:
        """Plain data (label values, counts per bucket, sum), for another process to absorb."""
        return [(list(v), list(c), t[0]) for v, (c, t) in self._data.items()]

    def absorb(self, data: Sequence[tuple[Sequence[str], Sequence[int], float]]) -> None:
        """Add another histogram's export (the same buckets); a malformed entry is skipped."""
        for values, counts, total in data:
            if len(counts) != len(self.buckets) + 1 or len(values) != len(self.labels):
                continue
            mine, mine_total = self._data.setdefault(
                tuple(str(v) for v in values), ([0] * (len(self.buckets) + 1), [0.0])
            )
            for i, n in enumerate(counts):
                mine[i] += int(n)
            mine_total[0] += float(total)

    def lines(self, metric: str) -> list[str]:
        out = []
        for values, (counts, total) in sorted(self._data.items()):
            labels = ",".join(f'{k}="{_esc(v)}"' for k, v in zip(self.labels, values, strict=True))
            running = 0
            for bound, n in zip((*self.buckets, math.inf), counts, strict=True):
                running += n
                le = "+Inf" if math.isinf(bound) else repr(bound)
                out.append(f'{metric}_bucket{{{labels},le="{le}"}} {running}')
            out.append(f"{metric}_sum{{{labels}}} {round(total[0], 6)}")
            out.append(f"{metric}_count{{{labels}}} {running}")
        return out


class Metrics:
    def __init__(self) -> None:
        self.started_at = time.time()
        self.counts: dict[str, Counter[str]] = {name: Counter() for name in COUNTERS}
        self.events = EventLog()
        # Credentials whose tokens come from the config (static): "obtaining" one is no refresh.
        self.static: frozenset[str] = frozenset()
        self.requests = Histogram(("credential",), REQUEST_BUCKETS)
        self.idp = Histogram(("credential", "outcome"), IDP_BUCKETS)
        self.store_ops = Histogram(("op",), STORE_BUCKETS)
        self.store_errors: Counter[tuple[str, str]] = Counter()  # (op, kind)
        self._lock = threading.Lock()

    def inc(self, counter: str, credential: str) -> None:
        with self._lock:
            self.counts[counter][credential] += 1
        if counter in EVENT_TEXT:
            kind, text = EVENT_TEXT[counter]
            self.events.record(kind, credential, text)

    def observe_request(self, credential: str, seconds: float) -> None:
        """A routed request is done (answered by the API or by the proxy itself)."""
        with self._lock:
            self.requests.observe((credential,), max(seconds, 0.0))

    def observe_idp(self, credential: str, seconds: float, outcome: str) -> None:
        """One token request to the IdP; `outcome` is `ok` or the error code."""
        with self._lock:
            self.idp.observe((credential, outcome), max(seconds, 0.0))

    def observe_store(self, op: str, seconds: float, error: str | None) -> None:
        """One token store operation (health.TimedStore); `error` is None or its kind."""
        with self._lock:
            self.store_ops.observe((op,), max(seconds, 0.0))
            if error is not None:
                self.store_errors[(op, error)] += 1

    def snapshot(self, refreshes: dict[str, int]) -> dict[str, dict[str, int]]:
        """Counters by credential; `refreshed` comes from the caches, which own that number."""
        with self._lock:
            out = {name: dict(c) for name, c in self.counts.items()}
        out["refreshed"] = {n: c for n, c in refreshes.items() if n not in self.static}
        return out

    def prometheus(self, refreshes: dict[str, int], views: Iterable[CredentialView]) -> str:
        info = build_info()
        lines = [
            "# HELP authproxy_build_info Versions of authproxy, mitmproxy and Python.",
            "# TYPE authproxy_build_info gauge",
            "authproxy_build_info{"
            + ",".join(f'{k}="{_esc(v)}"' for k, v in info.items())
            + "} 1",
            "# HELP authproxy_start_time_seconds When the proxy started (epoch seconds).",
            "# TYPE authproxy_start_time_seconds gauge",
            f"authproxy_start_time_seconds {round(self.started_at, 3)}",
        ]
        for name, by_cred in self.snapshot(refreshes).items():
            metric = f"authproxy_{name}_total"
            lines += [f"# HELP {metric} {COUNTERS[name]}", f"# TYPE {metric} counter"]
            lines += [f'{metric}{{credential="{_esc(c)}"}} {n}' for c, n in sorted(by_cred.items())]
        views = list(views)
        lines += [
            "# HELP authproxy_credential_usable 1 when the credential has a valid token.",
            "# TYPE authproxy_credential_usable gauge",
        ]
        lines += [
            f'authproxy_credential_usable{{credential="{_esc(v.name)}",'
            f'state="{v.state.id}"}} {int(v.state.healthy)}'
            for v in views
        ]
        lines += [
            "# HELP authproxy_token_expires_in_seconds Seconds until the current token expires "
            "(negative: expired; +Inf: never).",
            "# TYPE authproxy_token_expires_in_seconds gauge",
        ]
        lines += [
            f'authproxy_token_expires_in_seconds{{credential="{_esc(v.name)}"}} '
            f"{'+Inf' if math.isinf(v.expires_in) else round(v.expires_in, 1)}"
            for v in views
            if v.expires_in is not None
        ]
        with self._lock:
            lines += [
                "# HELP authproxy_request_duration_seconds Time from a routed request's arrival "
                "to its answer, retries and token waits included.",
                "# TYPE authproxy_request_duration_seconds histogram",
                *self.requests.lines("authproxy_request_duration_seconds"),
                "# HELP authproxy_idp_request_duration_seconds Time of each token request to "
                "the identity provider, by outcome (ok or the error code).",
                "# TYPE authproxy_idp_request_duration_seconds histogram",
                *self.idp.lines("authproxy_idp_request_duration_seconds"),
                "# HELP authproxy_store_operation_seconds Time of each token store operation "
                "(a lock: the time to take it).",
                "# TYPE authproxy_store_operation_seconds histogram",
                *self.store_ops.lines("authproxy_store_operation_seconds"),
                "# HELP authproxy_store_errors_total Token store operations that failed, by "
                "kind (unavailable: unreachable; error: any other failure).",
                "# TYPE authproxy_store_errors_total counter",
                *(
                    f'authproxy_store_errors_total{{op="{_esc(op)}",kind="{_esc(kind)}"}} {n}'
                    for (op, kind), n in sorted(self.store_errors.items())
                ),
            ]
        return "\n".join(lines) + "\n"


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
