"""What the operator's console shows besides the credentials: the proxy itself, its routes and
its recent events. Pure data and formatting; the addon fills it, `statuspage` renders it."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .events import Event

if TYPE_CHECKING:
    from .metrics import Metrics
    from .runtime import Runtime

__all__ = ["ConsoleInfo", "RouteRow", "console_info", "human_span"]


@dataclass(frozen=True, slots=True)
class RouteRow:
    index: int
    match: str  # scheme://host:port/path
    credential: str
    client_authorization: str  # replace | keep | reject


@dataclass(frozen=True, slots=True)
class ConsoleInfo:
    version: str
    mitmproxy: str
    python: str
    started_at: float
    now: float
    listen: str
    store: str
    config: str | None
    routes: tuple[RouteRow, ...]
    events: tuple[Event, ...]  # newest first, secrets scrubbed
    pid: int = 0  # the proxy's process: `authproxy reload` signals it (after the owner check)

    @property
    def uptime(self) -> float:
        return self.now - self.started_at

    def as_dict(self) -> dict[str, object]:
        return {
            "proxy": {
                "version": self.version, "mitmproxy": self.mitmproxy, "python": self.python,
                "started_at": self.started_at, "uptime": round(self.uptime, 1),
                "listen": self.listen, "store": self.store, "config": self.config,
                "pid": self.pid,
            },
            "routes": [
                {"index": r.index, "match": r.match, "credential": r.credential,
                 "client_authorization": r.client_authorization}
                for r in self.routes
            ],
            "events": [e.as_dict() for e in self.events],
        }  # fmt: skip


def console_info(
    runtime: Runtime | None,
    metrics: Metrics,
    secrets: Sequence[str],
    *,
    listen: tuple[str, int | None],
    config: str | None = None,
    now: float | None = None,
    events: int = 30,
) -> ConsoleInfo:
    from .metrics import build_info
    from .replies import scrub

    info = build_info()
    host, port = listen
    host = f"[{host}]" if ":" in host else (host or "*")
    routes: tuple[RouteRow, ...] = ()
    store = "none"
    if runtime is not None:
        routes = tuple(
            RouteRow(r.index, r.describe(), r.credential, r.existing_authorization)
            for r in runtime.config.routes
        )
        store = _store(runtime)
    return ConsoleInfo(
        version=info["version"],
        mitmproxy=info["mitmproxy"],
        python=info["python"],
        started_at=metrics.started_at,
        now=time.time() if now is None else now,
        listen=f"{host}:{port if port is not None else 8080}",
        store=store,
        config=config,
        routes=routes,
        # Under `run --workers N`, the supervisor: it passes a reload on to every worker.
        pid=getattr(metrics, "supervisor_pid", None) or os.getpid(),
        events=tuple(
            e._replace(message=scrub(e.message, secrets)) for e in metrics.events.recent(events)
        ),
    )


def _store(runtime: Runtime) -> str:
    cfg = runtime.config.store
    if cfg.backend == "memory":
        return "memory (nothing survives a restart)"
    from .store.registry import BACKENDS

    return f"{cfg.backend}: {BACKENDS[cfg.backend].describe(cfg, os.environ)}"


def human_span(seconds: float) -> str:
    """59 s, 12 min, 3 h 5 min, 4 days: a duration an operator reads at a glance."""
    if math.isinf(seconds):
        return "never"
    seconds = max(0, round(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 2 * 3600:
        return f"{seconds // 60} min"
    if seconds < 2 * 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} days"
