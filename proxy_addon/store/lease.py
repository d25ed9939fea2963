"""Refresh-lock leases: who holds one, and whether the lease still stands.

A lease names its holder: the host it runs on, its pid and that process's start time. The
verdict (`lease_verdict`) is a pure function over a row and what the waiter observed; the host
facts (`host_identity`, `holder_alive`, `boot_clock`) are read from /proc here, apart from it.

- Same host (same boot, hostname, pid and time namespaces): the lease is measured with
  CLOCK_BOOTTIME, which every process on the host shares and which never steps, so changing the
  wall clock neither extends nor shortens it. A holder whose process is gone (or whose pid now
  belongs to another process) has lost it at once.
- Another host: the holder's pid means nothing here, and its boot clock is not ours. The lease
  is judged by how long the waiter has watched the row go without a renewal, on the waiter's
  own boot clock, so a wall-clock step on either side can neither keep a dead holder's lease
  beyond one TTL of watching, nor take a live one away: a live holder renews every TTL/3.
- Rows written by an authproxy from before leases named their holder: wall clock only, as then.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .base import StoreError

__all__ = [
    "RENEWALS_PER_TTL",
    "Holder",
    "LeaseClocks",
    "LeaseRow",
    "Renewer",
    "boot_clock",
    "holder_alive",
    "host_identity",
    "lease_verdict",
    "process_start",
]

log = logging.getLogger(__name__)

# A holder renews its lease this many times per TTL, so one late renewal does not lose it.
RENEWALS_PER_TTL = 3
# A renewal may be late by this share of the TTL (a busy database, a loaded machine) before a
# remote holder whose wall-clock expiry has passed is considered gone.
_RENEWAL_SLACK = 0.2


def boot_clock() -> float:
    """Seconds on a clock every process of this host shares and that never steps.

    CLOCK_BOOTTIME also counts suspended time, so a lease taken before a suspend is not still
    running after it. Elsewhere only the process-local monotonic clock exists; it is then used
    only to time what this process itself watches (the host identity is empty there).
    """
    clock = getattr(time, "CLOCK_BOOTTIME", None)
    return time.clock_gettime(clock) if clock is not None else time.monotonic()


def host_identity() -> str:
    """Who "this host" is, for pids and boot-clock readings; "" when it cannot be told.

    The boot id changes with every boot (pids and the boot clock start over); the pid and time
    namespaces tell containers sharing one kernel apart (their pids and, with time namespaces,
    their clocks differ); the hostname is there for people reading the locks table.
    """
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        pid_ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""
    try:
        time_ns = os.readlink("/proc/self/ns/time")
    except FileNotFoundError:
        time_ns = "time:none"  # a kernel without time namespaces: one clock for all
    except OSError:
        return ""
    return f"{socket.gethostname()} {boot_id} {pid_ns} {time_ns}"


def process_start(pid: int) -> str | None:
    """The start time of process `pid` (clock ticks since boot), or None if it is gone.

    A zombie counts as gone: it runs no code and will never release anything. "" when the
    process exists but its start time cannot be read.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return ""
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    fields = stat[stat.rfind(b")") + 2 :].split()
    if len(fields) < 20:
        return ""
    if fields[0] in (b"Z", b"X"):  # field 3, the state: zombie or dead
        return None
    return fields[19].decode()  # field 22, starttime


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds a lease, as written into its row when it is taken."""

    host: str  # host_identity() of the holder; "" when it could not tell
    pid: int
    started: str  # process_start(pid) when it took the lease; "" when unknown
    ttl: float  # the holder's lease length, which it renews every ttl / RENEWALS_PER_TTL

    def to_json(self) -> str:
        return json.dumps(
            {"host": self.host, "pid": self.pid, "started": self.started, "ttl": self.ttl},
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | None) -> Holder | None:
        """None for rows without a holder (older authproxy) or with one we cannot read."""
        if not text:
            return None
        try:
            d = json.loads(text)
            return cls(str(d["host"]), int(d["pid"]), str(d["started"]), float(d["ttl"]))
        except (ValueError, KeyError, TypeError):
            return None

    @classmethod
    def me(cls, host: str, ttl: float) -> Holder:
        pid = os.getpid()
        return cls(host, pid, (process_start(pid) or "") if host else "", ttl)

    def describe(self, here: str) -> str:
        where = "this host" if self.host and self.host == here else f"host {self.host or '?'}"
        return f"pid {self.pid} on {where}"


def holder_alive(holder: Holder) -> bool:
    """Does the holder's process still run? Only meaningful for a holder on this host."""
    started = process_start(holder.pid)
    if started is None:
        return False
    # Another process with the same pid (the holder died and the pid was reused) differs here.
    return not (holder.started and started and started != holder.started)


@dataclass(frozen=True, slots=True)
class LeaseRow:
    """A row of the locks table, as a waiter reads it."""

    owner: str  # unique per acquisition: renewals and the release touch only their own row
    expires_at: float  # wall clock (time.time) of the holder
    holder: Holder | None = None  # None: written by an older authproxy
    boot_expires_at: float | None = None  # on the holder host's boot clock

    @property
    def signature(self) -> tuple[str, float, float | None]:
        """Changes with every renewal: what a waiter watches to tell a live remote holder."""
        return (self.owner, self.expires_at, self.boot_expires_at)


@dataclass(frozen=True, slots=True)
class LeaseClocks:
    """What a store measures leases with; tests pass their own instead of stepping the clock."""

    wall: Callable[[], float] = time.time
    boot: Callable[[], float] = boot_clock
    host: str = field(default_factory=host_identity)


def lease_verdict(
    row: LeaseRow,
    *,
    here: str,
    wall_now: float,
    boot_now: float,
    unchanged_for: float,
    alive: Callable[[Holder], bool] = holder_alive,
) -> str | None:
    """None while `row`'s lease stands; otherwise why it no longer does (for the log line).

    `here` is the waiter's host identity, `unchanged_for` how long the waiter has seen this
    very row (same owner, same expiry) without a renewal, on its own boot clock.
    """
    holder = row.holder
    if holder is None:  # written by an older authproxy, which knows the wall clock only
        left = row.expires_at - wall_now
        return None if left > 0 else f"its lease ran out {-left:.1f}s ago"
    who = holder.describe(here)
    if here and holder.host == here:
        if not alive(holder):
            return f"its holder ({who}) is gone"
        if row.boot_expires_at is None:
            return "its row names no lease end on this host's clock"
        left = row.boot_expires_at - boot_now
        if left > 0:
            return None
        return f"its holder ({who}) did not renew it for {holder.ttl + -left:.1f}s (stuck?)"
    # Another host. A row nobody renewed for a whole TTL is dead whatever the clocks say; one
    # whose wall-clock end has passed is dead once a renewal is overdue here too (a waiter's
    # clock stepped forward alone never takes a lease from a holder that keeps renewing).
    if unchanged_for >= holder.ttl:
        return f"its holder ({who}) has not renewed it for {unchanged_for:.1f}s"
    overdue = holder.ttl / RENEWALS_PER_TTL + holder.ttl * _RENEWAL_SLACK
    if row.expires_at <= wall_now and unchanged_for >= overdue:
        return (
            f"its holder ({who}) let it run out {wall_now - row.expires_at:.1f}s ago and "
            f"has not renewed it for {unchanged_for:.1f}s"
        )
    return None


class Renewer:
    """Extends a held lease every `every` seconds, so a refresh may outlast the lease's TTL.

    `renew()` extends the lease if it is still the caller's and says whether it was; it may
    raise the backend's StoreError (logged, retried at the next tick) unless `closed()`. A
    holder that dies stops renewing with it, so the TTL still bounds how long a killed holder
    blocks everyone. Stops with the lock's block; the release waits for it. Shared by every
    backend with a lease.
    """

    def __init__(
        self,
        credential: str,
        every: float,
        renew: Callable[[], bool],
        closed: Callable[[], bool] = lambda: False,
    ) -> None:
        self._credential, self._every, self._renew, self._closed = credential, every, renew, closed
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"authproxy-lease-{credential}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.ident is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stopping.wait(self._every):
            try:
                kept = self._renew()
            except StoreError as e:
                if self._closed():
                    return
                log.warning("could not renew the refresh lock of %r (%s)", self._credential, e)
                continue
            if not kept:
                if not self._stopping.is_set():
                    log.error(
                        "lost the refresh lock of %r: this holder stalled for longer than "
                        "its lease and another one took it over; their refresh may race this one",
                        self._credential,
                    )
                return
