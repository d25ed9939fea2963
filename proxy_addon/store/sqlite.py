"""The durable token store: one encrypted SQLite file, shared by threads and processes.

Each row holds a Fernet ciphertext of the token plus the metadata that is safe to show
(expiry, update time, version). WAL mode lets readers run while another process writes, and
`synchronous=FULL` makes every committed update survive a crash or power loss: a refresh
token the IdP has rotated exists nowhere else, so losing the commit would lose the login.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sqlite3
import threading
import time
import uuid
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from ..tokens import Token
from .base import MissingStoreError, Record, StoreError, VersionConflict
from .keys import Keyring, load_keys
from .lease import RENEWALS_PER_TTL, Holder, LeaseClocks, LeaseRow, Renewer, lease_verdict
from .paths import default_db_path, default_key_file, ensure_private_dir
from .safety import UnsafePathError, check_dir, check_sidecar
from .sealer import CorruptRowError, DamagedRowError, Sealer, UndecryptableError

if TYPE_CHECKING:
    from ..config import StoreConfig

__all__ = [
    "CorruptRowError",
    "CorruptStoreError",
    "DamagedRowError",
    "MissingStoreError",
    "SqliteStore",
    "StoreBusyError",
    "UndecryptableError",
    "open_sqlite",
    "stored_rows",
]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS tokens (
        credential TEXT PRIMARY KEY,
        ciphertext BLOB NOT NULL,
        expires_at REAL,
        updated_at REAL NOT NULL,
        version INTEGER NOT NULL
    )""",
    # The refresh locks: see lease.py. `holder` and `boot_expires_at` were added later; an
    # older store gains them on first use of a lock (_lease_columns).
    """CREATE TABLE IF NOT EXISTS locks (
        credential TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        expires_at REAL NOT NULL,
        holder TEXT,
        boot_expires_at REAL
    )""",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)
_TABLES = frozenset({"tokens", "locks", "meta"})

# SQLite primary result codes (the low byte of sqlite_errorcode).
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_CORRUPT, _SQLITE_NOTADB = 5, 6, 11, 26

# Lock polling: start fast so an uncontended hand-over is quick, cap so that a waiter notices
# a release (or a dead holder) within a tenth of a second. A poll only reads; the write lock is
# taken only when the lease looks free.
_POLL_FIRST, _POLL_MAX = 0.005, 0.1
_LEASE_COLUMNS = (("holder", "TEXT"), ("boot_expires_at", "REAL"))


class CorruptStoreError(StoreError):
    """The file is not an authproxy token store (not SQLite, damaged, or truncated)."""


class StoreBusyError(StoreError):
    """Another process kept the database locked for longer than the busy timeout."""


class _Connection:
    """One thread's connection. Closed when its thread ends (the thread-local goes away)."""

    __slots__ = ("__weakref__", "db")

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def close(self) -> None:
        self.db.close()

    def __del__(self) -> None:
        self.db.close()


class SqliteStore:
    """A TokenStore in one SQLite file; safe to use from many threads and processes at once.

    Each thread gets its own connection (SQLite connections must not be shared while in
    use), so readers never wait for a writer and a write is one short transaction.
    """

    def __init__(
        self,
        path: Path,
        sealer: Sealer | Keyring,
        *,
        create: bool = True,
        lock_ttl: float = 15.0,
        busy_timeout: float = 10.0,
        clocks: LeaseClocks | None = None,
    ) -> None:
        self.path = Path(path)
        if isinstance(sealer, Keyring):
            sealer = Sealer(sealer)
        self._sealer = sealer.at(str(self.path))
        self._lock_ttl = lock_ttl
        self._busy_timeout = busy_timeout
        self._clocks = clocks or LeaseClocks()
        self._lease_columns_ok = False
        # credential -> (row signature, boot-clock time first seen): how long a lease row has
        # gone without renewal, as this process watched it (see lease.lease_verdict).
        self._watched: dict[str, tuple[tuple[str, float, float | None], float]] = {}
        self._watched_guard = threading.Lock()
        self._local = threading.local()
        self._conns: weakref.WeakSet[_Connection] = weakref.WeakSet()
        self._conns_guard = threading.Lock()
        self._closed = False
        self._open(create)

    # -- TokenStore ---------------------------------------------------------------------

    def get(self, credential: str) -> Record | None:
        conn = self._conn()
        with self._errors(f"reading {credential!r}"):
            row = conn.execute(
                "SELECT ciphertext, version, updated_at FROM tokens WHERE credential = ?",
                (credential,),
            ).fetchone()
        if row is None:
            return None
        ciphertext, version, updated_at = row
        token = self._sealer.open(credential, ciphertext, lambda: self._other_rows(credential))
        return Record(credential, token, version, updated_at)

    @contextmanager
    def lock(self, credential: str, timeout: float = 60.0) -> Iterator[None]:
        # Unique per acquisition, so a renewal or release never touches a lease someone else
        # now holds; pid and thread are there for whoever inspects the locks table.
        owner = f"{os.getpid()}:{threading.get_ident()}:{uuid.uuid4().hex}"
        self._acquire(credential, owner, timeout)
        renewer = Renewer(
            credential,
            self._lock_ttl / RENEWALS_PER_TTL,
            lambda: self._renew(credential, owner),
            lambda: self._closed,
        )
        try:
            renewer.start()
            yield
        finally:
            renewer.stop()
            self._release(credential, owner)

    def put(self, credential: str, token: Token, expected_version: int | None) -> Record:
        # Encrypt before taking the write lock: the transaction stays as short as possible.
        ciphertext = self._sealer.seal(credential, token)
        conn = self._conn()
        with self._errors(f"storing {credential!r}"), self._transaction(conn):
            row = conn.execute(
                "SELECT version FROM tokens WHERE credential = ?", (credential,)
            ).fetchone()
            current = row[0] if row else None
            if current != expected_version:
                raise VersionConflict(
                    f"{credential!r} was updated by another writer (stored version {current}, "
                    f"expected {expected_version}); re-read it and retry"
                )
            version = (current or 0) + 1
            updated_at = time.time()
            conn.execute(
                """INSERT INTO tokens (credential, ciphertext, expires_at, updated_at, version)
                   VALUES (?, ?, ?, ?, ?)
                   ON CONFLICT (credential) DO UPDATE SET
                       ciphertext = excluded.ciphertext,
                       expires_at = excluded.expires_at,
                       updated_at = excluded.updated_at,
                       version = excluded.version""",
                (credential, ciphertext, token.expires_at, updated_at, version),
            )
        return Record(credential, token, version, updated_at)

    def delete(self, credential: str) -> bool:
        conn = self._conn()
        with self._errors(f"deleting {credential!r}"):
            cur = conn.execute("DELETE FROM tokens WHERE credential = ?", (credential,))
        return cur.rowcount > 0

    def keys(self) -> list[str]:
        conn = self._conn()
        with self._errors("listing credentials"):
            rows = conn.execute("SELECT credential FROM tokens ORDER BY credential").fetchall()
        return [row[0] for row in rows]

    def close(self) -> None:
        self._closed = True
        with self._conns_guard:
            conns = list(self._conns)
            self._conns.clear()
        for c in conns:
            c.close()

    def reseal(self, sealer: Sealer) -> int:
        """Re-encrypt every row under `sealer`'s newest key (see TokenStore.reseal).

        One transaction per row: an interrupted rotation leaves each row either old or new,
        and both stay readable while the old key is still in the ring.
        """
        self._sealer = sealer = sealer.at(str(self.path))
        conn = self._conn()
        names = self.keys()
        rotated = 0
        for name in names:
            with self._errors(f"re-encrypting {name!r}"), self._transaction(conn):
                row = conn.execute(
                    "SELECT ciphertext FROM tokens WHERE credential = ?", (name,)
                ).fetchone()
                if row is None:
                    continue  # logged out while we were rotating
                ciphertext = sealer.reseal(name, row[0])
                conn.execute(
                    "UPDATE tokens SET ciphertext = ? WHERE credential = ?", (ciphertext, name)
                )
                rotated += 1
        # Old ciphertexts linger in WAL frames until a checkpoint; secure_delete already
        # zeroes them in the database pages. A busy checkpoint is harmless, just incomplete.
        with self._errors("checkpointing after key rotation"):
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            log.info("checkpoint after key rotation deferred: the store is in use")
        log.info("re-encrypted %d row(s) of %s with the newest key", rotated, self.path)
        return rotated

    # -- beyond the protocol --------------------------------------------------------------

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"

    # -- opening ----------------------------------------------------------------------------

    def _open(self, create: bool) -> None:
        created = False
        if not os.path.lexists(self.path):
            if not create:
                raise MissingStoreError(
                    f"there is no token store at {self.path} yet: the proxy creates it when "
                    "it starts (check the store path in the config)"
                )
            created = self._create_file()
        checked = _check_files(self.path)
        conn = self._connect()
        try:
            _same_file(self.path, checked)
            # Only reads until the file has been recognised as ours: a damaged file must be
            # left byte-for-byte as it was, for the user to inspect or restore.
            if not self._inspect(conn):
                if not create:
                    raise MissingStoreError(
                        f"{self.path} holds no token store yet: the proxy initialises it "
                        "when it first starts"
                    )
                if checked.st_size == 0 and not created:
                    log.warning(
                        "the token store %s was an empty file (0 bytes); initialised it as "
                        "a new store. If it held tokens before (a full disk, an interrupted "
                        "copy), restore it from a backup; otherwise nothing was lost",
                        self.path,
                    )
                self._use_wal(conn)
                self._initialise(conn)
            else:
                self._use_wal(conn)
        except BaseException:
            conn.close()
            raise
        self._adopt(conn)

    def _create_file(self) -> bool:
        """Create the empty database file; False if another process created it meanwhile."""
        try:
            ensure_private_dir(self.path.parent)
            check_dir(self.path.parent, "token store")
            # Created here rather than by SQLite, so it is 0600 from the first byte on;
            # SQLite then gives the -wal and -shm files the same mode. O_EXCL never follows a
            # symbolic link, so a link planted meanwhile is refused when it is opened.
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            return False
        except OSError as e:
            raise StoreError(
                f"cannot create the token store {self.path}: {e.strerror} ({e.filename})"
            ) from e
        try:
            os.fchmod(fd, 0o600)  # the umask may have taken away our own write bit
        finally:
            os.close(fd)
        return True

    def _inspect(self, conn: sqlite3.Connection) -> bool:
        """True if `conn` is an authproxy store, False if empty; raises if anything else."""
        try:
            tables = {
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
            (check,) = conn.execute("PRAGMA quick_check(1)").fetchone()
            if check != "ok":
                raise CorruptStoreError(self._corrupt_message(f"integrity check: {check}"))
            if not tables:
                return False
            if not tables >= _TABLES:
                raise CorruptStoreError(
                    f"{self.path} is a SQLite database but not an authproxy token store; it "
                    "was left untouched. Point the store path at another file"
                )
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.DatabaseError as e:
            raise CorruptStoreError(self._corrupt_message(str(e))) from e
        if row is None or row[0] != str(SCHEMA_VERSION):
            found = row[0] if row else "none"
            raise CorruptStoreError(
                f"the token store {self.path} has schema version {found}, this authproxy "
                f"understands version {SCHEMA_VERSION}; it was left untouched. Use the "
                "authproxy version that wrote it, or point the store path at a new file"
            )
        return True

    def _initialise(self, conn: sqlite3.Connection) -> None:
        # IF NOT EXISTS / OR IGNORE: another process may be initialising it right now.
        with self._errors("initialising"), self._transaction(conn):
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
        log.info("initialised token store %s", self.path)

    def _use_wal(self, conn: sqlite3.Connection) -> None:
        # Persistent in the file, so a no-op (and no write) on every open but the first.
        with self._errors("switching to WAL mode"):
            (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        if mode != "wal":
            raise StoreError(
                f"cannot switch the token store {self.path} to WAL mode (got {mode!r}); it "
                "needs a local filesystem that supports shared memory (not NFS)"
            )

    # -- connections ------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self._busy_timeout,
                isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                check_same_thread=False,  # only so close() may close it from another thread
            )
        except sqlite3.Error as e:
            raise StoreError(f"cannot open the token store {self.path}: {e}") from e
        try:
            # These already read the file header, so a damaged file fails here.
            with self._errors("opening"):
                conn.execute("PRAGMA synchronous = FULL")
                # Zero freed space, so a deleted or re-encrypted ciphertext does not linger.
                conn.execute("PRAGMA secure_delete = ON")
                conn.execute("PRAGMA trusted_schema = OFF")
        except StoreError:
            conn.close()
            raise
        return conn

    def _adopt(self, conn: sqlite3.Connection) -> _Connection:
        holder = _Connection(conn)
        self._local.conn = holder
        with self._conns_guard:
            self._conns.add(holder)
        return holder

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError(f"the token store {self.path} has been closed")
        holder: _Connection | None = getattr(self._local, "conn", None)
        if holder is None:
            holder = self._adopt(self._connect())
        return holder.db

    @contextmanager
    def _transaction(self, conn: sqlite3.Connection) -> Iterator[None]:
        # IMMEDIATE takes the write lock up front (waiting via busy_timeout), so a
        # read-then-write can never fail half-way with SQLITE_BUSY_SNAPSHOT.
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """Turn sqlite3 errors into StoreErrors that name the file and say what to do."""
        try:
            yield
        except sqlite3.Error as e:
            code = getattr(e, "sqlite_errorcode", 0) & 0xFF
            if code in (_SQLITE_BUSY, _SQLITE_LOCKED):
                raise StoreBusyError(
                    f"the token store {self.path} stayed locked for more than "
                    f"{self._busy_timeout:g}s while {doing}; another process is holding it. "
                    "Retry, or look for a stuck authproxy process"
                ) from e
            if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
                raise CorruptStoreError(self._corrupt_message(str(e))) from e
            raise StoreError(f"token store {self.path}: failed while {doing}: {e}") from e

    def _corrupt_message(self, reason: str) -> str:
        return (
            f"the token store {self.path} is damaged or not a token store ({reason}); it was "
            "left untouched. Move it aside and log in again, or restore it from a backup"
        )

    # -- locks --------------------------------------------------------------------------------

    def _acquire(self, credential: str, owner: str, timeout: float) -> None:
        deadline = time.monotonic() + max(timeout, 0.0)
        holder = Holder.me(self._clocks.host, self._lock_ttl)
        delay = _POLL_FIRST
        while True:
            budget = deadline - time.monotonic()
            try:
                if self._try_acquire(credential, owner, holder, budget):
                    return
            except StoreBusyError:
                if budget >= self._busy_timeout:
                    raise  # another writer kept the database for the whole busy_timeout
                # It kept it for as long as this waiter had left: that is a time-out.
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(self._timeout_message(credential, timeout))
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, _POLL_MAX)

    def _timeout_message(self, credential: str, timeout: float) -> str:
        return (
            f"timed out after {timeout:g}s waiting for the refresh lock of {credential!r} in "
            f"{self.path}: another thread or process is refreshing it (a lock left by a "
            "killed process is taken over at once on the same host, after its lease elsewhere)"
        )

    def _try_acquire(self, credential: str, owner: str, holder: Holder, budget: float) -> bool:
        """Take the lease if it is free or its holder has lost it; waits at most `budget`."""
        conn = self._conn()
        doing = f"taking the refresh lock of {credential!r}"
        with self._errors(doing):
            self._lease_columns(conn)
            # A plain read never waits for a writer (WAL): waiters do not queue for the write
            # lock while the lease is plainly held.
            row = self._read_lease(conn, credential)
        if row is not None and self._lease_lost(credential, row) is None:
            return False
        with (
            self._errors(doing),
            self._busy_limit(conn, budget),
            self._transaction(conn),
        ):
            row = self._read_lease(conn, credential)
            why = None if row is None else self._lease_lost(credential, row)
            if row is not None and why is None:
                return False
            ttl = self._lock_ttl
            conn.execute(
                """INSERT OR REPLACE INTO locks
                   (credential, owner, expires_at, holder, boot_expires_at)
                   VALUES (?, ?, ?, ?, ?)""",
                (
                    credential,
                    owner,
                    self._clocks.wall() + ttl,
                    holder.to_json(),
                    self._clocks.boot() + ttl,
                ),
            )
        if why is not None:
            log.warning("taking over the refresh lock of %r: %s", credential, why)
        with self._watched_guard:
            self._watched.pop(credential, None)
        return True

    def _read_lease(self, conn: sqlite3.Connection, credential: str) -> LeaseRow | None:
        row = conn.execute(
            "SELECT owner, expires_at, holder, boot_expires_at FROM locks WHERE credential = ?",
            (credential,),
        ).fetchone()
        if row is None:
            return None
        return LeaseRow(row[0], row[1], Holder.from_json(row[2]), row[3])

    def _lease_lost(self, credential: str, row: LeaseRow) -> str | None:
        """None while `row`'s holder keeps its lease, else why it has lost it."""
        boot = self._clocks.boot()
        with self._watched_guard:
            seen = self._watched.get(credential)
            if seen is None or seen[0] != row.signature:
                seen = self._watched[credential] = (row.signature, boot)
        return lease_verdict(
            row,
            here=self._clocks.host,
            wall_now=self._clocks.wall(),
            boot_now=boot,
            unchanged_for=boot - seen[1],
        )

    def _renew(self, credential: str, owner: str) -> bool:
        """Extend our lease by a TTL from now; False if it is no longer ours."""
        conn = self._conn()
        ttl = self._lock_ttl
        with self._errors(f"renewing the refresh lock of {credential!r}"):
            cur = conn.execute(
                """UPDATE locks SET expires_at = ?, boot_expires_at = ?
                   WHERE credential = ? AND owner = ?""",
                (self._clocks.wall() + ttl, self._clocks.boot() + ttl, credential, owner),
            )
        return cur.rowcount > 0

    def _release(self, credential: str, owner: str) -> None:
        try:
            conn = self._conn()
            with self._errors(f"releasing the refresh lock of {credential!r}"):
                cur = conn.execute(
                    "DELETE FROM locks WHERE credential = ? AND owner = ?", (credential, owner)
                )
        except StoreError as e:
            # Not raised: it would hide the caller's own exception, and the lease expires.
            log.warning("could not release the refresh lock of %r (%s)", credential, e)
            return
        if cur.rowcount == 0:
            log.warning(
                "the refresh lock of %r was taken over while held (this holder stalled for "
                "longer than lock_ttl=%gs without renewing it); another holder may have "
                "refreshed meanwhile",
                credential,
                self._lock_ttl,
            )

    def _lease_columns(self, conn: sqlite3.Connection) -> None:
        """Add the lease columns to a store created before they existed (once per store).

        Older authproxy versions keep working with the wider table: they write only owner and
        expires_at, and their rows are judged by the wall clock.
        """
        if self._lease_columns_ok:
            return
        have = {r[1] for r in conn.execute("PRAGMA table_info(locks)")}
        if any(name not in have for name, _ in _LEASE_COLUMNS):
            with self._transaction(conn):
                have = {r[1] for r in conn.execute("PRAGMA table_info(locks)")}
                for name, kind in _LEASE_COLUMNS:
                    if name not in have:
                        conn.execute(f"ALTER TABLE locks ADD COLUMN {name} {kind}")
        self._lease_columns_ok = True

    @contextmanager
    def _busy_limit(self, conn: sqlite3.Connection, seconds: float) -> Iterator[None]:
        """Wait at most `seconds` (not the whole busy_timeout) for another writer."""
        limit = min(self._busy_timeout, max(seconds, 0.0))
        if limit >= self._busy_timeout:
            yield
            return
        conn.execute(f"PRAGMA busy_timeout = {int(limit * 1000)}")
        try:
            yield
        finally:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")

    def _other_rows(self, credential: str) -> list[bytes]:
        """The sealed rows other than `credential`'s (to tell a damaged row from a wrong key)."""
        conn = self._conn()
        with self._errors("checking the key against the other rows"):
            rows = conn.execute(
                "SELECT ciphertext FROM tokens WHERE credential != ?", (credential,)
            ).fetchall()
        return [bytes(r[0]) for r in rows]


def _check_files(path: Path) -> os.stat_result:
    """Check the database file, its directory and the files SQLite opens beside it.

    By lstat, not by opening: closing any descriptor of the database file would drop the POSIX
    locks of every SQLite connection to it in this process, and another process could then
    checkpoint and reset the WAL under them. A symbolic link is refused here, and since only
    this user can write the directory (checked first), nobody else can put one there before
    SQLite opens the path; `_same_file` then confirms the path still names the checked file.
    """
    try:
        check_dir(path.parent, "token store")
        st = os.lstat(path)
    except FileNotFoundError:
        raise MissingStoreError(f"the token store {path} disappeared while opening it") from None
    except OSError as e:
        raise StoreError(f"cannot open the token store {path}: {e.strerror}") from e
    check_sidecar(path, "token store")
    for suffix in ("-wal", "-shm", "-journal"):
        check_sidecar(Path(f"{path}{suffix}"), "token store file")
    return st


def _same_file(path: Path, checked: os.stat_result) -> None:
    """SQLite opens by name: make sure it opened the file we checked, not a swapped one."""
    try:
        now = os.lstat(path)
    except OSError as e:
        raise StoreError(f"cannot open the token store {path}: {e.strerror}") from e
    if (now.st_dev, now.st_ino) != (checked.st_dev, checked.st_ino):
        raise UnsafePathError(
            f"the token store {path} was replaced while it was being opened; check who else "
            "writes to its directory, then start again"
        )


def stored_rows(path: Path) -> int:
    """How many tokens the store at `path` holds, read without a key (and without changing
    anything); 0 when there is no store or it cannot be read (opening it then says why)."""
    if not os.path.lexists(path):
        return 0
    _check_files(path)
    uri = f"{Path(path).absolute().as_uri()}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True)
        try:
            (count,) = conn.execute("SELECT count(*) FROM tokens").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return 0
    return int(count)


def open_sqlite(cfg: StoreConfig, env: Mapping[str, str], create: bool = True) -> SqliteStore:
    """The configured store (store/registry.py), with its key from AUTHPROXY_KEY or the key
    file; `create=True` may create the database and generate a key file."""
    db_path = cfg.path or default_db_path(env)
    key_file = cfg.key_file or default_key_file(env)
    # Counted before a key is generated: a fresh key over existing rows would only make every
    # later start fail with "a different key".
    rows = stored_rows(db_path)
    keyring = load_keys(key_file, env, db_path=db_path, create=create, stored_rows=rows)
    # Read again when a row does not decrypt: `authproxy rotate-key` by another process.
    reread = functools.partial(load_keys, key_file, env, db_path=db_path, create=False)
    return SqliteStore(db_path, Sealer(keyring, reread=reread), create=create)
