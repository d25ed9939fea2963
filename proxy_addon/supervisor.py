"""`authproxy run --workers N`: N proxy processes on one listen address, and their supervisor.

The supervisor (this process) forks the workers and serves nothing itself. Each worker is a
whole `authproxy run` (runner.run with a `WorkerSlot`) whose listener sets SO_REUSEPORT
(compat.share_listen_port), so the kernel spreads the connections over them with no extra hop.
They share the token store, whose lock spans processes, so a refresh stays single-flight
across workers; they publish their numbers for one status page (workerstate).

- Start: worker 0 first, alone, until it listens: it creates what a first start creates (the
  mitmproxy CA, the store's key file and database), which concurrent first starts would race
  to create differently. Then the others. A worker that dies while the workers start ends the
  start (its own output says why), with its exit status.
- SIGTERM/SIGINT: forwarded to every worker, which stops gracefully (`--grace`); a second
  one is forwarded too (a worker then stops at once). Workers run in their own process group,
  so a Ctrl-C at the terminal reaches them once, through the supervisor, not twice.
- SIGHUP: forwarded to every worker (each reloads its config).
- A worker that dies otherwise is restarted after a backoff (`RestartPolicy`): 0.5 s, doubling
  per death in a row up to 30 s; a worker that ran 30 s resets it. Never a restart storm.
- The workers get SIGTERM if the supervisor dies (PR_SET_PDEATHSIG, Linux).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .localguard import harden_process
from .netutil import free_port
from .workerstate import WorkerSlot, read_state, retire, state_file

if TYPE_CHECKING:
    from .runner import RunOptions

__all__ = [
    "RestartPolicy", "Slot", "cores", "parse_workers", "run_workers", "supervise",
    "workers_problem",
]  # fmt: skip

logger = logging.getLogger("authproxy")

_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
_PR_SET_PDEATHSIG = 1
START_TIMEOUT = 120.0  # seconds a worker may take to listen at start (10 000 routes, a slow disk)
STOP_MARGIN = 30.0  # seconds past --grace and the drain before hanging workers get SIGKILL


def cores() -> int:
    """The cores this process may run on (its CPU affinity, where the platform tells)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def parse_workers(value: str) -> int:
    """`--workers`: a positive number, or `auto` for the number of cores."""
    if value == "auto":
        return cores()
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"--workers takes a positive number or 'auto', not {value!r}")
    return int(value)


def supervise(workers: str, serve: Callable[[RunOptions], int], ro: RunOptions) -> int:
    """`authproxy run --workers WORKERS`: `serve(ro)` in this process for one worker, else
    in that many supervised worker processes. Raises StartupError for a value that cannot run."""
    from .runner import StartupError

    try:
        n = parse_workers(workers)
    except ValueError as e:
        raise StartupError(str(e)) from None
    if problem := workers_problem(ro, n):
        raise StartupError(problem)
    if n == 1:
        return serve(ro)
    if ro.config.store.backend == "memory" and ro.config.credentials:
        print(f"authproxy: warning: the memory store is per process: each of the {n} workers "
              "gets its own tokens (a token request per worker, not one for all); a sqlite or "
              "redis store is shared", file=sys.stderr)  # fmt: skip
    return run_workers(ro, n, serve)


def workers_problem(ro: RunOptions, n: int) -> str | None:
    """Why these options cannot run in `n` workers, or None."""
    if n == 1:
        return None
    if ro.web:
        return "--web serves one web UI from one process: use it with --workers 1"
    if ro.save_flows:
        return ("--save-flows: several workers cannot write one flow file; use --workers 1 "
                "(or --audit-log, which every worker appends to)")  # fmt: skip
    if not sys.platform.startswith("linux"):
        # Elsewhere SO_REUSEPORT does not spread connections (macOS gives them all to one
        # socket) or does not keep other users off the port.
        return "--workers needs Linux (SO_REUSEPORT): use --workers 1 on this platform"
    return None


# --- restart policy (pure) ---------------------------------------------------------------------


@dataclass(frozen=True)
class RestartPolicy:
    base: float = 0.5  # seconds before the first restart
    cap: float = 30.0  # the longest wait
    stable_after: float = 30.0  # a worker that ran this long died "for the first time" again

    def failures_after(self, failures: int, lived: float) -> int:
        """Deaths in a row, counting this one."""
        return 1 if lived >= self.stable_after else failures + 1

    def delay(self, failures: int) -> float:
        """Seconds to wait before restarting a worker that died `failures` times in a row."""
        return min(self.cap, self.base * 2 ** max(0, min(failures - 1, 32)))


@dataclass
class Slot:
    index: int
    pid: int | None = None
    started: float = 0.0  # monotonic
    failures: int = 0
    restart_at: float | None = None  # monotonic; None: not waiting for a restart


# --- the supervisor -------------------------------------------------------------------------


class StartFailed(Exception):
    def __init__(self, index: int, status: int) -> None:
        super().__init__(f"worker {index} exited with status {status} while starting")
        self.status = status


def run_workers(
    ro: RunOptions,
    n: int,
    serve: Callable[[RunOptions], int],
    policy: RestartPolicy = RestartPolicy(),
) -> int:
    """Run `serve(ro)` in `n` worker processes until SIGTERM/SIGINT; the exit status."""
    host, port = ro.listen or (ro.config.listen_host, ro.config.listen_port)
    if port == 0:  # every worker must bind the same port: choose it once
        port = _free_port(host)
    ro = dataclasses.replace(ro, listen=(host, port))
    harden_process()  # it holds the config's secrets too: no core dump, not dumpable, umask
    base = os.environ.get("XDG_RUNTIME_DIR")
    base = base if base and os.path.isdir(base) else None
    directory = Path(tempfile.mkdtemp(prefix="authproxy-workers-", dir=base))  # 0700
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    sup = _Supervisor(ro, n, serve, policy, directory, old_mask)
    try:
        return sup.run()
    finally:
        sup.kill_all()
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        shutil.rmtree(directory, ignore_errors=True)


class _Supervisor:
    def __init__(
        self,
        ro: RunOptions,
        n: int,
        serve: Callable[[RunOptions], int],
        policy: RestartPolicy,
        directory: Path,
        old_mask: set[int | signal.Signals],
    ) -> None:
        self.ro, self.serve, self.policy = ro, serve, policy
        self.directory, self.old_mask = directory, old_mask
        self.slots = [Slot(i) for i in range(n)]
        self.stopping = False
        self.stop_deadline = 0.0
        self.status = 0

    def log(self, message: str) -> None:
        # Plain stderr: the supervisor runs no mitmproxy, hence no termlog.
        print(f"authproxy: {message}", file=sys.stderr, flush=True)

    def run(self) -> int:
        host, port = self.ro.listen or ("", 0)
        try:
            self.start_and_wait([self.slots[0]])
            self.start_and_wait(self.slots[1:])
        except StartFailed as e:
            self.log(f"{e}; stopping the other workers")
            self.stop(signal.SIGTERM)
            self.wait_all()
            return e.status or 1
        if not self.stopping:
            self.log(f"{len(self.slots)} workers on {host}:{port} "
                     f"(pids {' '.join(str(s.pid) for s in self.slots)})")  # fmt: skip
        while self.stopping is False or any(s.pid for s in self.slots):
            if self.stopping and time.monotonic() > self.stop_deadline:
                self.log("workers still running past the grace period: killing them")
                self.kill_all()
                self.wait_all()
                break
            self.restart_due()
            self.handle(signal.sigtimedwait(_SIGNALS, self.next_wake()))
        return self.status

    # --- starting -----------------------------------------------------------------------

    def start_and_wait(self, slots: list[Slot]) -> None:
        if self.stopping:
            return
        for slot in slots:
            self.spawn(slot)
        deadline = time.monotonic() + START_TIMEOUT
        while not self.stopping and not all(self.ready(s) for s in slots):
            if time.monotonic() > deadline:
                raise StartFailed(slots[0].index, 1)
            self.handle(signal.sigtimedwait(_SIGNALS, 0.05), starting=True)

    def ready(self, slot: Slot) -> bool:
        state = read_state(state_file(self.directory, slot.index))
        return state is not None and state.get("pid") == slot.pid

    def spawn(self, slot: Slot) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker
            status = 1
            try:
                _become_worker(parent, self.old_mask)
                status = self.serve(dataclasses.replace(
                    self.ro, worker=WorkerSlot(slot.index, self.directory)
                ))  # fmt: skip
            except _startup_error() as e:  # as `authproxy run` says it, with its status
                print(f"authproxy: {e}", file=sys.stderr)
                status = 2
            except SystemExit as e:
                status = e.code if isinstance(e.code, int) else 1
            except BaseException:
                traceback.print_exc()
            finally:
                # What the worker registered (its CA bundle's temporary directory), as a
                # normal exit would; then out without the supervisor's own cleanup.
                with contextlib.suppress(Exception):
                    atexit._run_exitfuncs()
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(status)
        slot.pid, slot.started, slot.restart_at = pid, time.monotonic(), None

    # --- running ------------------------------------------------------------------------

    def next_wake(self) -> float:
        now = time.monotonic()
        waits = [s.restart_at - now for s in self.slots if s.restart_at is not None]
        if self.stopping:
            waits.append(self.stop_deadline - now)
        return max(0.01, min(waits, default=1.0))

    def restart_due(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.restart_at is not None and now >= slot.restart_at and not self.stopping:
                self.log(f"restarting worker {slot.index}")
                try:
                    self.spawn(slot)
                except OSError as e:  # no memory or process slot now: try again later
                    slot.failures += 1
                    delay = self.policy.delay(slot.failures)
                    self.log(f"cannot start worker {slot.index} ({e.strerror or e}); "
                             f"trying again in {delay:g}s")  # fmt: skip
                    slot.restart_at = now + delay

    def handle(self, info: signal.struct_siginfo | None, *, starting: bool = False) -> None:
        if info is None:
            return
        sig = info.si_signo
        if sig == signal.SIGCHLD:
            self.reap(starting=starting)
        elif sig == signal.SIGHUP:
            self.log("SIGHUP: reloading every worker")
            self.forward(signal.SIGHUP)
        elif sig in (signal.SIGTERM, signal.SIGINT):
            self.stop(signal.Signals(sig))

    def stop(self, sig: signal.Signals) -> None:
        if not self.stopping:
            self.stopping = True
            # A worker takes --grace, then up to a drain timeout for a refresh in flight.
            self.stop_deadline = time.monotonic() + self.ro.grace + _drain_bound(self.ro)
            for slot in self.slots:
                slot.restart_at = None
            if running := sum(bool(s.pid) for s in self.slots):
                self.log(f"{sig.name}: stopping {running} worker(s)")
        self.forward(sig)  # a second signal too: the workers then stop at once

    def forward(self, sig: signal.Signals) -> None:
        for slot in self.slots:
            if slot.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, sig)

    def reap(self, *, starting: bool) -> None:
        while True:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = next((s for s in self.slots if s.pid == pid), None)
            if slot is None:
                continue
            status = os.waitstatus_to_exitcode(wait_status)
            slot.pid = None
            with contextlib.suppress(OSError):
                retire(self.directory, slot.index)
            if self.stopping:
                self.status = self.status or (status if status > 0 else 0)
                continue
            if starting:
                raise StartFailed(slot.index, status if status > 0 else 1)
            lived = time.monotonic() - slot.started
            slot.failures = self.policy.failures_after(slot.failures, lived)
            delay = self.policy.delay(slot.failures)
            how = f"signal {-status}" if status < 0 else f"status {status}"
            self.log(f"worker {slot.index} (pid {pid}) died ({how}) after {lived:.1f}s; "
                     f"restarting it in {delay:g}s")  # fmt: skip
            slot.restart_at = time.monotonic() + delay

    def wait_all(self) -> None:
        while any(s.pid for s in self.slots):
            if self.stopping and time.monotonic() > self.stop_deadline:
                self.kill_all()
            self.handle(signal.sigtimedwait(_SIGNALS, 0.5))

    def kill_all(self) -> None:
        for slot in self.slots:
            if slot.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signal.SIGKILL)
        self.stop_deadline = time.monotonic() + 5  # SIGKILL is not refused


def _drain_bound(ro: RunOptions) -> float:
    """How long past --grace a worker may still be stopping, plus a margin."""
    drains = [
        c.policy.drain_timeout if c.policy.drain_timeout is not None else c.policy.idp_timeout + 2
        for c in ro.config.credentials.values()
    ]
    return max(drains, default=0.0) + STOP_MARGIN


def _startup_error() -> type[Exception]:
    from .runner import StartupError

    return StartupError


def _become_worker(parent: int, old_mask: set[int | signal.Signals]) -> None:
    """In the forked child: default signal handling, its own process group, and SIGTERM when
    the supervisor dies."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the supervisor died before prctl
        os._exit(1)


def _free_port(host: str) -> int:
    return free_port(host or "127.0.0.1")
