"""The refresh lock's lease: dead holders, renewal, wall-clock steps, prompt time-outs.

Processes holding the lock are real (tests/support/store_writer.py), killed or stopped with
real signals; clock steps are injected into the waiting store, never made to the system clock.
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from proxy_addon.store.keys import ENV_VAR, Keyring
from proxy_addon.store.lease import (
    Holder,
    LeaseClocks,
    LeaseRow,
    holder_alive,
    host_identity,
    lease_verdict,
    process_start,
)
from proxy_addon.store.memory import MemoryStore
from proxy_addon.store.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parents[1]
HELPER = Path(__file__).resolve().parent / "support" / "store_writer.py"
HOUR = 3600.0
HERE = host_identity()

linux_only = pytest.mark.skipif(not HERE, reason="needs /proc (boot id, pid start times)")


# -- fixtures and helpers --------------------------------------------------------------------


@pytest.fixture
def key() -> bytes:
    return Fernet.generate_key()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "tokens.db"


@pytest.fixture
def open_store(db_path: Path, key: bytes) -> Iterator[Callable[..., SqliteStore]]:
    """Stores on one file, as separate processes would have; each closed after the test."""
    opened: list[SqliteStore] = []

    def open_(**kwargs: object) -> SqliteStore:
        store = SqliteStore(db_path, Keyring.from_keys([key], "test key"), **kwargs)  # type: ignore[arg-type]
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


def stepped(seconds: float, host: str = HERE) -> LeaseClocks:
    """This host's clocks, except a wall clock stepped by `seconds`."""
    return LeaseClocks(wall=lambda: time.time() + seconds, host=host)


class Helper:
    """tests/support/store_writer.py in `holder` mode: takes the lock and holds it until told."""

    def __init__(self, db: Path, key: bytes, ttl: float, credential: str = "cred") -> None:
        env = {**os.environ, ENV_VAR: key.decode(), "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, str(HELPER), "holder", str(db), credential, str(ttl)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=env,
        )  # fmt: skip
        self.stderr = ""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line != "locked\n":
            self.finish(kill=True)
            pytest.fail(f"the holder did not take the lock ({line!r}): {self.stderr}")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def release(self) -> None:
        """Let it leave the lock's block and exit."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def finish(self, *, kill: bool = False) -> int:
        if kill and self.proc.poll() is None:
            self.proc.kill()
        assert self.proc.stdin is not None and self.proc.stderr is not None
        self.proc.stdin.close()
        self.stderr = self.proc.stderr.read()
        self.proc.wait(timeout=10)
        self.proc.stdout.close()  # type: ignore[union-attr]
        self.proc.stderr.close()
        return self.proc.returncode


@pytest.fixture
def holders() -> Iterator[list[Helper]]:
    started: list[Helper] = []
    yield started
    for h in started:
        if h.proc.returncode is None:
            h.signal(signal.SIGCONT)
            h.finish(kill=True)


def takeover_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "taking over" in r.getMessage()]


def timed_lock(store: SqliteStore, timeout: float, credential: str = "cred") -> float:
    """Seconds until `store` got the lock (released again at once)."""
    started = time.monotonic()
    with store.lock(credential, timeout=timeout):
        return time.monotonic() - started


# -- the verdict, pure ---------------------------------------------------------------------------

ME, OTHER = "host-a boot-1 pid:[1] time:[1]", "host-b boot-2 pid:[1] time:[1]"
T, B = 1_000_000.0, 500.0  # a wall-clock and a boot-clock reading of "now"


def row(host: str | None, *, wall_left: float, boot_left: float | None = None) -> LeaseRow:
    holder = None if host is None else Holder(host, 4242, "777", ttl=15.0)
    boot = None if boot_left is None else B + boot_left
    return LeaseRow("owner", T + wall_left, holder, boot)


@pytest.mark.parametrize(
    ("lease", "alive", "unchanged_for", "lost"),
    [
        # Written by an older authproxy: the wall clock, as it did.
        (row(None, wall_left=5), True, 0, None),
        (row(None, wall_left=-1), True, 0, "ran out"),
        # Same host: the holder's process decides at once, then the boot clock alone.
        (row(ME, wall_left=10, boot_left=10), False, 0, "is gone"),
        (row(ME, wall_left=-HOUR, boot_left=10), True, 0, None),  # waiter's wall stepped ahead
        (row(ME, wall_left=HOUR, boot_left=-1), True, 0, "did not renew"),  # stepped back
        # Another host: how long the waiter watched it go unrenewed, on its own boot clock.
        (row(OTHER, wall_left=-1), False, 0.0, None),  # pids of other hosts mean nothing here
        (row(OTHER, wall_left=-1), True, 2.0, None),  # just renewed, maybe
        (row(OTHER, wall_left=-1), True, 8.5, "let it run out"),  # a renewal is overdue
        (row(OTHER, wall_left=-HOUR), True, 4.0, None),  # waiter stepped ahead; it renews
        (row(OTHER, wall_left=HOUR), True, 14.0, None),  # waiter stepped back; ttl not over
        (row(OTHER, wall_left=HOUR), True, 15.0, "has not renewed it"),  # ... now it is
    ],
)
def test_lease_verdict(
    lease: LeaseRow, alive: bool, unchanged_for: float, lost: str | None
) -> None:
    verdict = lease_verdict(
        lease,
        here=ME,
        wall_now=T,
        boot_now=B,
        unchanged_for=unchanged_for,
        alive=lambda holder: alive,
    )
    if lost is None:
        assert verdict is None
    else:
        assert verdict is not None and lost in verdict


def test_a_host_that_cannot_name_itself_never_judges_by_pid() -> None:
    lease = LeaseRow("owner", T + 5, Holder("", 4242, "", ttl=15.0), B + 5)
    verdict = lease_verdict(
        lease, here="", wall_now=T, boot_now=B, unchanged_for=0, alive=lambda h: False
    )
    assert verdict is None


def test_holder_rows_round_trip_and_tolerate_garbage() -> None:
    h = Holder(ME, 12, "345", 15.0)
    assert Holder.from_json(h.to_json()) == h
    for garbage in (None, "", "not json", "[]", '{"host": "x"}'):
        assert Holder.from_json(garbage) is None


@linux_only
def test_a_holder_is_alive_only_while_its_very_process_runs() -> None:
    me = Holder.me(HERE, 15.0)
    assert me.started and holder_alive(me)
    # The same pid with another start time: the holder died and its pid went to a newcomer.
    assert not holder_alive(Holder(HERE, os.getpid(), str(int(me.started) + 1), 15.0))

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        them = Holder(HERE, child.pid, process_start(child.pid) or "", 15.0)
        assert holder_alive(them)
        child.kill()
        deadline = time.monotonic() + 10
        while holder_alive(them):  # a zombie (killed, not yet reaped) counts as gone
            assert time.monotonic() < deadline, "a killed, unreaped child still looks alive"
            time.sleep(0.01)
        assert child.poll() is not None or process_start(child.pid) is None
    finally:
        child.kill()
        child.wait()
    assert not holder_alive(them)


@linux_only
def test_host_identity_names_boot_and_namespaces() -> None:
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert boot_id in HERE and "pid:[" in HERE and host_identity() == HERE


# -- a dead holder -------------------------------------------------------------------------------


@linux_only
def test_a_killed_holder_on_this_host_is_taken_over_at_once(
    db_path: Path, key: bytes, open_store, holders, caplog: pytest.LogCaptureFixture
) -> None:
    store = open_store()
    holder = Helper(db_path, key, ttl=60)
    holders.append(holder)
    with pytest.raises(TimeoutError):
        timed_lock(store, 0.1)

    holder.signal(signal.SIGKILL)  # not reaped: a zombie until finish()
    with caplog.at_level(logging.WARNING):
        waited = timed_lock(store, timeout=10)
    assert waited < 2, f"waited {waited:.1f}s for a lease whose holder was dead"
    lines = takeover_lines(caplog)
    assert len(lines) == 1 and "is gone" in lines[0] and f"pid {holder.proc.pid}" in lines[0]
    holder.finish()


@linux_only
def test_a_stopped_holder_loses_its_lease_after_the_ttl_even_if_the_wall_clock_steps_back(
    db_path: Path, key: bytes, open_store, holders, caplog: pytest.LogCaptureFixture
) -> None:
    ttl = 1.0
    store = open_store(clocks=stepped(-HOUR))  # the waiter's wall clock is an hour behind
    holder = Helper(db_path, key, ttl=ttl)
    holders.append(holder)
    holder.signal(signal.SIGSTOP)  # alive, but neither refreshing nor renewing
    with caplog.at_level(logging.WARNING):
        waited = timed_lock(store, timeout=10 * ttl)
    assert waited < 3 * ttl
    assert "did not renew" in takeover_lines(caplog)[0]


@linux_only
def test_a_killed_holder_on_another_host_is_taken_over_after_its_ttl_despite_a_step_back(
    db_path: Path, key: bytes, open_store, holders, caplog: pytest.LogCaptureFixture
) -> None:
    ttl = 1.0
    # Named as another host, the waiter cannot look at the holder's pid: only the TTL tells.
    store = open_store(clocks=stepped(-HOUR, host="another host"))
    holder = Helper(db_path, key, ttl=ttl)
    holders.append(holder)
    holder.signal(signal.SIGKILL)
    holder.finish()
    with caplog.at_level(logging.WARNING):
        waited = timed_lock(store, timeout=10 * ttl)
    assert 0.9 * ttl <= waited < 3 * ttl
    assert "has not renewed it" in takeover_lines(caplog)[0]


# -- a live holder keeps its lease ---------------------------------------------------------------


@pytest.mark.parametrize("waiter_host", [HERE, "another host"], ids=["same host", "other host"])
def test_a_holder_keeps_its_lease_for_longer_than_the_ttl(
    db_path: Path, key: bytes, open_store, holders, waiter_host: str
) -> None:
    ttl = 1.0
    store = open_store(clocks=LeaseClocks(host=waiter_host))
    holder = Helper(db_path, key, ttl=ttl)
    holders.append(holder)
    with pytest.raises(TimeoutError, match="'cred'"):
        timed_lock(store, timeout=2.5 * ttl)  # the holder's critical section outlasts its TTL
    holder.release()
    assert holder.finish() == 0
    assert "taken over" not in holder.stderr and "lost" not in holder.stderr
    assert timed_lock(store, timeout=1) < 0.5  # released on exit


@pytest.mark.parametrize("waiter_host", [HERE, "another host"], ids=["same host", "other host"])
def test_a_wall_clock_step_forward_does_not_steal_a_live_lease(
    open_store, waiter_host: str
) -> None:
    ttl = 1.5  # renewed every 0.5s; a remote waiter calls it overdue after 0.8s
    holder_store = open_store(lock_ttl=ttl)
    waiter = open_store(clocks=stepped(+HOUR, host=waiter_host))
    with holder_store.lock("cred", timeout=1), pytest.raises(TimeoutError):
        timed_lock(waiter, timeout=2 * ttl)


@linux_only
def test_a_stalled_holder_that_wakes_up_neither_renews_nor_releases_its_successors_lease(
    db_path: Path, key: bytes, open_store, holders
) -> None:
    ttl = 0.5
    store, third = open_store(), open_store()
    holder = Helper(db_path, key, ttl=ttl)
    holders.append(holder)
    holder.signal(signal.SIGSTOP)
    with store.lock("cred", timeout=10 * ttl):
        holder.signal(signal.SIGCONT)
        holder.release()
        assert holder.finish() == 0
        with pytest.raises(TimeoutError):  # the lease is still ours
            timed_lock(third, timeout=3 * ttl)
    assert "taken over while held" in holder.stderr
    assert timed_lock(third, timeout=1) < 0.5


# -- waiting ---------------------------------------------------------------------------------------


def test_a_short_timeout_is_kept_while_the_lease_is_held(open_store) -> None:
    holder_store, waiter = open_store(), open_store()
    with holder_store.lock("cred", timeout=1):
        for timeout in (0.0, 0.3):
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                timed_lock(waiter, timeout)
            assert time.monotonic() - started < timeout + 0.1 + 0.4  # + a poll, + a loaded machine


def test_a_short_timeout_is_kept_while_another_process_writes(open_store, db_path: Path) -> None:
    waiter = open_store()
    timed_lock(waiter, 1)  # the lease itself is free
    other = sqlite3.connect(db_path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another writer holds the database's write lock
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="'cred'"):
            timed_lock(waiter, timeout=0.3)
        assert time.monotonic() - started < 0.3 + 0.1 + 0.4
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert timed_lock(waiter, 1) < 0.5


def test_threads_of_one_process_exclude_each_other(open_store) -> None:
    store = open_store(lock_ttl=5.0)
    inside, overlaps = [0], []
    guard = threading.Lock()

    def work() -> None:
        for _ in range(5):
            with store.lock("cred", timeout=10):
                with guard:
                    inside[0] += 1
                    overlaps.append(inside[0])
                time.sleep(0.02)  # work inside the critical section, not synchronisation
                with guard:
                    inside[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert overlaps and max(overlaps) == 1


# -- stores from before leases named their holder ------------------------------------------------


def test_an_older_store_gains_the_lease_columns_and_its_rows_are_honoured(
    open_store, db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    open_store().close()
    raw = sqlite3.connect(db_path, isolation_level=None)
    try:
        raw.execute("DROP TABLE locks")
        raw.execute(
            "CREATE TABLE locks (credential TEXT PRIMARY KEY, owner TEXT NOT NULL, "
            "expires_at REAL NOT NULL)"
        )
        # A lease an older authproxy holds for another minute, by the wall clock.
        raw.execute("INSERT INTO locks VALUES ('cred', 'old', ?)", (time.time() + 60,))
        store = open_store()
        with pytest.raises(TimeoutError):
            timed_lock(store, 0.2)
        columns = {r[1] for r in raw.execute("PRAGMA table_info(locks)")}
        assert {"holder", "boot_expires_at"} <= columns
        raw.execute("UPDATE locks SET expires_at = ? WHERE owner = 'old'", (time.time() - 1,))
    finally:
        raw.close()
    with caplog.at_level(logging.WARNING):
        timed_lock(store, 1)
    assert "ran out" in takeover_lines(caplog)[0]


# -- the in-memory store keeps the same contract ------------------------------------------------


def test_memory_store_lock_times_out_promptly_and_takes_any_timeout() -> None:
    store = MemoryStore()
    errors: list[BaseException] = []
    with store.lock("cred", timeout=float("inf")):

        def wait(timeout: float) -> None:
            started = time.monotonic()
            try:
                with store.lock("cred", timeout=timeout):
                    errors.append(AssertionError("got a held lock"))
            except TimeoutError:
                if time.monotonic() - started > max(timeout, 0) + 0.3:
                    errors.append(AssertionError(f"timeout {timeout} kept late"))
            except BaseException as e:
                errors.append(e)

        for timeout in (-1.0, 0.0, 0.2):
            t = threading.Thread(target=wait, args=(timeout,))
            t.start()
            t.join(timeout=5)
    assert not errors, errors
    with store.lock("cred", timeout=0):
        pass
