"""Counters the proxy keeps per credential, and their Prometheus text form. No I/O."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable

from .status import CredentialView

__all__ = ["COUNTERS", "Metrics"]

# name -> help text; every counter is per credential.
COUNTERS = {
    "injected": "Requests that left with an injected token.",
    "refreshed": "Tokens obtained from the identity provider.",
    "retried": "Requests re-sent once after the API answered 401.",
    "token_failures": "Requests answered 502 because no valid token could be had.",
    "refused": "Requests refused by a route rule (plain http, client Authorization).",
}


class Metrics:
    def __init__(self) -> None:
        self.counts: dict[str, Counter[str]] = {name: Counter() for name in COUNTERS}

    def inc(self, counter: str, credential: str) -> None:
        self.counts[counter][credential] += 1

    def snapshot(self, refreshes: dict[str, int]) -> dict[str, dict[str, int]]:
        """Counters by credential; `refreshed` comes from the caches, which own that number."""
        out = {name: dict(c) for name, c in self.counts.items()}
        out["refreshed"] = dict(refreshes)
        return out

    def prometheus(self, refreshes: dict[str, int], views: Iterable[CredentialView]) -> str:
        lines: list[str] = []
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
            f'authproxy_credential_usable{{credential="{_esc(v.name)}",state="{_esc(v.state)}"}} '
            f"{int(v.state in ('valid', 'expiring'))}"
            for v in views
        ]
        lines += [
            "# HELP authproxy_token_expires_in_seconds Seconds until the current token expires.",
            "# TYPE authproxy_token_expires_in_seconds gauge",
        ]
        lines += [
            f'authproxy_token_expires_in_seconds{{credential="{_esc(v.name)}"}} '
            f"{'+Inf' if math.isinf(v.expires_in) else round(v.expires_in, 1)}"
            for v in views
            if v.expires_in is not None
        ]
        return "\n".join(lines) + "\n"


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
