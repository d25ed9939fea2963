"""One status page and one `/metrics` for all the workers of `authproxy run --workers N`.

Each worker publishes its numbers (counters, histograms, connections, recent events) about once
a second to `worker-<index>.json` in the supervisor's private runtime directory (0700; files
0600, replaced atomically). Nothing secret goes there: counters are keyed by credential names,
and event messages are scrubbed of the config's secrets before they are written. The worker that
answers a status request adds the other workers' files to its own live numbers
(`ClusterMetrics`), so every worker answers for all of them (at most a second behind for the
others). When a worker dies, the supervisor folds its last file into `retired.json`
(`retire`), so the totals do not drop when it is restarted.

Merging is pure (`merge_states`); reading and writing files are the small functions around it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .events import Event, EventLog
from .metrics import Metrics
from .status import CredentialView

if TYPE_CHECKING:
    from mitmproxy import connection

    from .addon import AuthProxy

__all__ = [
    "ClusterMetrics",
    "Merged",
    "WorkerPublisher",
    "WorkerSlot",
    "join_workers",
    "merge_states",
    "read_states",
    "retire",
    "state_file",
    "write_state",
]

logger = logging.getLogger("authproxy")

PUBLISH_EVERY = 1.0  # seconds
RETIRED = "retired.json"
EVENTS_KEPT = 50
State = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class WorkerSlot:
    """Which worker this process is, and where the workers meet."""

    index: int
    directory: Path


def state_file(directory: Path, index: int) -> Path:
    return directory / f"worker-{index}.json"


# --- pure -------------------------------------------------------------------------------------


@dataclass
class Merged:
    counters: dict[str, dict[str, int]] = field(default_factory=dict)
    requests: list[Any] = field(default_factory=list)  # Histogram.export() entries
    idp: list[Any] = field(default_factory=list)
    store_ops: list[Any] = field(default_factory=list)
    store_errors: dict[tuple[str, str], int] = field(default_factory=dict)  # (op, kind) -> n
    events: list[Event] = field(default_factory=list)  # newest first
    connections: int = 0
    workers: list[State] = field(default_factory=list)  # live workers' states, by index


def merge_states(states: Iterable[State], events: int = EVENTS_KEPT) -> Merged:
    """The sum of several workers' states. A malformed part of a state is skipped, not fatal:
    one worker's bad file must not blank out the status page."""
    out = Merged()
    sums: dict[str, Counter[str]] = {}
    all_events: list[Event] = []
    for st in states:
        for name, by_cred in _dict(st.get("counters")).items():
            for cred, n in _dict(by_cred).items():
                if isinstance(n, int):
                    sums.setdefault(str(name), Counter())[str(cred)] += n
        out.requests += _list(st.get("requests"))
        out.idp += _list(st.get("idp"))
        out.store_ops += _list(st.get("store_ops"))
        for e in _list(st.get("store_errors")):
            with contextlib.suppress(TypeError, ValueError):
                op, kind, n = e
                key = (str(op), str(kind))
                out.store_errors[key] = out.store_errors.get(key, 0) + int(n)
        for e in _list(st.get("events")):
            with contextlib.suppress(TypeError, ValueError):
                at, kind, cred, message, count = e
                all_events.append(Event(float(at), str(kind), str(cred), str(message), int(count)))
        if isinstance(st.get("connections"), int):
            out.connections += st["connections"]
        if isinstance(st.get("worker"), int):
            out.workers.append(st)
    out.counters = {name: dict(c) for name, c in sums.items()}
    all_events.sort(key=lambda e: e.at, reverse=True)
    out.events = all_events[:events]
    out.workers.sort(key=lambda s: s["worker"])
    return out


def retired_state(merged: Merged) -> dict[str, Any]:
    """A merge of dead workers, in the form of a state (without a worker index)."""
    return {
        "counters": merged.counters,
        "requests": merged.requests,
        "idp": merged.idp,
        "store_ops": merged.store_ops,
        "store_errors": [[op, kind, n] for (op, kind), n in merged.store_errors.items()],
        "events": [list(e) for e in merged.events],
        "connections": merged.connections,
    }


def _dict(value: object) -> dict[Any, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


# --- files ------------------------------------------------------------------------------------


def write_state(path: Path, state: State) -> None:
    """Replace `path` atomically with `state`, 0600 (a reader never sees half a file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(state, f, separators=(",", ":"))
    os.replace(tmp, path)


def read_state(path: Path) -> State | None:
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # gone (a worker just retired), or being replaced
    return state if isinstance(state, dict) else None


def read_states(directory: Path, *, exclude: int | None = None) -> list[State]:
    """The other workers' states and the retired one."""
    out = []
    for path in [*sorted(directory.glob("worker-*.json")), directory / RETIRED]:
        if exclude is not None and path == state_file(directory, exclude):
            continue
        if (state := read_state(path)) is not None:
            out.append(state)
    return out


def retire(directory: Path, index: int) -> None:
    """A worker died: add its last published numbers to `retired.json`, remove its file.
    Called by the supervisor, never concurrently with itself."""
    path = state_file(directory, index)
    dead = read_state(path)
    if dead is None:
        return
    previous = read_state(directory / RETIRED) or {}
    merged = merge_states([previous, {k: v for k, v in dead.items() if k != "worker"}])
    write_state(directory / RETIRED, retired_state(merged))
    path.unlink(missing_ok=True)


# --- in the worker ----------------------------------------------------------------------------


class ClusterEvents(EventLog):
    """This worker's event log; `recent` shows every worker's events."""

    def __init__(self, peers: Callable[[], list[State]]) -> None:
        super().__init__()
        self._peers = peers

    def own(self, limit: int | None = None) -> list[Event]:
        return super().recent(limit)

    def recent(self, limit: int | None = None) -> list[Event]:
        own = {"events": [list(e) for e in self.own()]}
        return merge_states([own, *self._peers()], events=limit or EVENTS_KEPT).events


class ClusterMetrics(Metrics):
    """This worker's metrics (recorded as usual); what it reports covers every worker."""

    def __init__(self, slot: WorkerSlot) -> None:
        super().__init__()
        self.slot = slot
        self.connections = 0
        # The process to signal for all the workers (`authproxy reload` sends SIGHUP to the
        # pid the status page gives: in a worker, it should give this one).
        self.supervisor_pid = os.getppid()
        self.events: ClusterEvents = ClusterEvents(self.peers)

    def peers(self) -> list[State]:
        return read_states(self.slot.directory, exclude=self.slot.index)

    def own_state(self, refreshes: dict[str, int], secrets: Sequence[str]) -> dict[str, Any]:
        from .replies import scrub

        with self._lock:
            requests, idp = self.requests.export(), self.idp.export()
            store_ops = self.store_ops.export()
            store_errors = [[op, kind, n] for (op, kind), n in self.store_errors.items()]
        return {
            "worker": self.slot.index,
            "pid": os.getpid(),
            "started_at": self.started_at,
            "updated_at": time.time(),
            "connections": self.connections,
            "counters": Metrics.snapshot(self, refreshes),
            "requests": requests,
            "idp": idp,
            "store_ops": store_ops,
            "store_errors": store_errors,
            "events": [
                [e.at, e.kind, e.credential, scrub(e.message, secrets), e.count]
                for e in self.events.own(EVENTS_KEPT)
            ],
        }

    def merged(self, refreshes: dict[str, int]) -> Merged:
        return merge_states([self.own_state(refreshes, ()), *self.peers()])

    def snapshot(self, refreshes: dict[str, int]) -> dict[str, dict[str, int]]:
        counters = self.merged(refreshes).counters
        return {name: counters.get(name, {}) for name in self.counts}

    def prometheus(self, refreshes: dict[str, int], views: Iterable[CredentialView]) -> str:
        m = self.merged(refreshes)
        total = Metrics()
        total.started_at, total.static = self.started_at, self.static
        for name, by_cred in m.counters.items():
            if name in total.counts:
                total.counts[name].update(by_cred)
        total.requests.absorb(m.requests)
        total.idp.absorb(m.idp)
        total.store_ops.absorb(m.store_ops)
        total.store_errors.update(m.store_errors)
        text = Metrics.prometheus(total, m.counters.get("refreshed", {}), views)
        return text + "\n".join(worker_lines(m.workers)) + "\n"


def worker_lines(workers: Sequence[State]) -> list[str]:
    """Per-worker series: how many run, and how the kernel spread the connections."""
    lines = [
        "# HELP authproxy_workers Worker processes serving the listen address.",
        "# TYPE authproxy_workers gauge",
        f"authproxy_workers {len(workers)}",
        "# HELP authproxy_worker_connections_total Client connections a worker accepted.",
        "# TYPE authproxy_worker_connections_total counter",
    ]
    lines += [f'authproxy_worker_connections_total{{worker="{w["worker"]}"}} '
              f'{int(w.get("connections", 0))}' for w in workers]  # fmt: skip
    lines += [
        "# HELP authproxy_worker_injected_total Requests a worker sent with an injected token.",
        "# TYPE authproxy_worker_injected_total counter",
    ]
    lines += [
        f'authproxy_worker_injected_total{{worker="{w["worker"]}"}} '
        f"{sum(v for v in _dict(_dict(w.get('counters')).get('injected')).values())}"
        for w in workers
    ]
    lines += [
        "# HELP authproxy_worker_start_time_seconds When a worker (re)started (epoch seconds).",
        "# TYPE authproxy_worker_start_time_seconds gauge",
    ]
    lines += [f'authproxy_worker_start_time_seconds{{worker="{w["worker"]}"}} '
              f'{round(float(w.get("started_at", 0)), 3)}' for w in workers]  # fmt: skip
    return lines


class WorkerPublisher:
    """The addon that publishes this worker's state: first once it listens (which tells the
    supervisor it is ready), then every PUBLISH_EVERY seconds, and once more when it stops."""

    def __init__(self, metrics: ClusterMetrics, authproxy: AuthProxy) -> None:
        self._metrics, self._authproxy = metrics, authproxy
        self._task: asyncio.Task[None] | None = None

    def running(self) -> None:
        self.publish()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    def client_connected(self, client: connection.Client) -> None:
        self._metrics.connections += 1

    def done(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.publish()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(PUBLISH_EVERY)
            self.publish()

    def publish(self) -> None:
        rt = self._authproxy.runtime
        refreshes = {n: c.refreshes for n, c in rt.caches.items()} if rt else {}
        secrets = rt.config.secrets() if rt else []
        path = state_file(self._metrics.slot.directory, self._metrics.slot.index)
        try:
            write_state(path, self._metrics.own_state(refreshes, secrets))
        except OSError as e:  # the status page shows this worker's numbers late, nothing worse
            logger.warning("authproxy: cannot publish this worker's numbers to %s: %s", path, e)


def join_workers(authproxy: AuthProxy, slot: WorkerSlot) -> None:
    """Make this process one of several workers: share the listen port, and publish and merge
    the numbers. Before the options are set (the addon instruments its metrics then). The
    publisher runs as one of the addon's parts: an addon in mitmproxy's chain of its own would
    cost each request more than the publisher's work."""
    from . import compat

    compat.share_listen_port()
    metrics = ClusterMetrics(slot)
    authproxy.metrics = metrics
    authproxy.parts = (*authproxy.parts, WorkerPublisher(metrics, authproxy))
