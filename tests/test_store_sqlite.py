"""The encrypted SQLite token store: durability, secrecy, locking across threads and processes."""

from __future__ import annotations

import hashlib
import logging
import os
import random
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet, MultiFernet
from support.store_writer import numbered_token

from proxy_addon.store.base import StoreError, VersionConflict
from proxy_addon.store.keys import ENV_VAR, Keyring, KeySourceError, add_key, load_keys
from proxy_addon.store.paths import default_db_path, default_key_file
from proxy_addon.store.sealer import Sealer
from proxy_addon.store.sqlite import (
    CorruptRowError,
    CorruptStoreError,
    MissingStoreError,
    SqliteStore,
    UndecryptableError,
)
from proxy_addon.tokens import Token

ROOT = Path(__file__).resolve().parents[1]
HELPER = Path(__file__).resolve().parent / "support" / "store_writer.py"


# -- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture
def key() -> bytes:
    return Fernet.generate_key()


@pytest.fixture
def keyring(key: bytes) -> Keyring:
    return Keyring.from_keys([key], "test key")


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "authproxy" / "tokens.db"


@pytest.fixture
def store(db_path: Path, keyring: Keyring) -> Iterator[SqliteStore]:
    s = SqliteStore(db_path, keyring)
    yield s
    s.close()


@pytest.fixture
def open_umask() -> Iterator[None]:
    """Modes must come from the code, not from a friendly umask."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def unique_token(expires_at: float = 2_000_000_000.0) -> Token:
    tag = uuid.uuid4().hex
    return Token(
        access_token=f"access-{tag}",
        expires_at=expires_at,
        obtained_at=expires_at - 3600,
        refresh_token=f"refresh-{tag}",
        scope=("read", "write"),
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def numbered(token: Token) -> int:
    """n of a token written by the helper; fails if its fields come from different writes."""
    assert token.refresh_token is not None
    n = int(token.refresh_token.removeprefix("rt-"))
    assert token.access_token == f"at-{n}"
    assert token.expires_at == token.obtained_at == float(n)
    assert token.scope == (f"scope-{n}",)
    assert token.seed_id == f"seed-{n}"
    return n



def helper(mode: str, db: Path, credential: str, key: bytes, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, ENV_VAR: key.decode(), "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, str(HELPER), mode, str(db), credential, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def finish(proc: subprocess.Popen[str], *, kill: bool = False) -> tuple[str, str]:
    """Wait for (or SIGKILL) the helper; returns the rest of its stdout and its stderr.

    Reads through the same buffered file objects as readline(): communicate() would read the
    raw pipe and miss lines readline() had already pulled into the buffer.
    """
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    if kill:
        proc.send_signal(signal.SIGKILL)
    proc.stdin.close()
    out, err = proc.stdout.read(), proc.stderr.read()  # EOF once it has exited
    proc.wait(timeout=10)
    proc.stdout.close()
    proc.stderr.close()
    return out, err


def expect_line(proc: subprocess.Popen[str], expected: str | None = None) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        _, err = finish(proc, kill=True)
        pytest.fail(f"helper exited early (rc={proc.returncode}):\n{err}")
    if expected is not None:
        assert line == expected + "\n"
    return line


# -- round trip ----------------------------------------------------------------------------


def test_round_trip_versions_and_cas(store: SqliteStore, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    t1, t2 = unique_token(1000.0), unique_token(2000.0)
    assert store.get("a") is None

    r1 = store.put("a", t1, None)
    assert (r1.credential, r1.token, r1.version) == ("a", t1, 1)
    assert store.get("a") == r1
    with pytest.raises(VersionConflict, match="'a'"):
        store.put("a", t2, None)

    r2 = store.put("a", t2, 1)
    assert r2.version == 2 and store.get("a") == r2
    with pytest.raises(VersionConflict):
        store.put("a", t1, 1)
    assert store.get("a") == r2  # a refused update changes nothing

    store.put("b", t1, None)
    assert store.keys() == ["a", "b"]

    assert store.delete("a") is True
    assert store.delete("a") is False
    assert store.get("a") is None
    assert store.keys() == ["b"]

    for secret in (t1.access_token, t1.refresh_token, t2.access_token, t2.refresh_token):
        assert secret is not None and secret not in caplog.text


def test_survives_reopen_and_sees_other_instances_writes(db_path: Path, keyring: Keyring) -> None:
    token = unique_token()
    with SqliteStore(db_path, keyring) as first, SqliteStore(db_path, keyring) as second:
        first.put("a", token, None)
        assert second.get("a") is not None
        second.put("a", token, 1)
        with pytest.raises(VersionConflict):
            first.put("a", token, 1)
    with SqliteStore(db_path, keyring, create=False) as again:
        record = again.get("a")
        assert record is not None and record.token == token and record.version == 2


def test_closed_store_refuses_use(store: SqliteStore) -> None:
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.get("a")


# -- secrecy and permissions ---------------------------------------------------------------


def test_token_bytes_never_reach_disk(store: SqliteStore, db_path: Path) -> None:
    tokens = [unique_token() for _ in range(5)]
    version: int | None = None
    for token in tokens:
        version = store.put("a", token, version).version
        store.put(f"other-{version}", token, None)
    secrets = [s.encode() for t in tokens for s in (t.access_token, t.refresh_token) if s]

    def assert_clean(files: list[Path]) -> None:
        for f in files:
            data = f.read_bytes()
            for secret in secrets:
                assert secret not in data, f"a token is in plaintext in {f.name}"

    sidecars = [Path(f"{db_path}-wal"), Path(f"{db_path}-shm")]
    assert all(f.exists() for f in sidecars)
    assert_clean([db_path, *sidecars])

    store.close()  # the last connection checkpoints the WAL into the database
    assert db_path.stat().st_size > 0
    assert_clean([db_path, *[f for f in sidecars if f.exists()]])


def test_file_modes(db_path: Path, keyring: Keyring, open_umask: None) -> None:
    with SqliteStore(db_path, keyring) as s:
        s.put("a", unique_token(), None)
        assert mode_of(db_path.parent) == 0o700
        for f in (db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm")):
            assert mode_of(f) == 0o600, f.name


def test_existing_loose_db_file_is_refused_not_tightened(db_path: Path, keyring: Keyring) -> None:
    # It may have been read or replaced while open: refused with the fix, never used.
    SqliteStore(db_path, keyring).close()
    os.chmod(db_path, 0o644)
    with pytest.raises(StoreError, match=f"open to other users.*chmod 600 {db_path}"):
        SqliteStore(db_path, keyring).close()
    assert mode_of(db_path) == 0o644


def test_row_swapped_onto_another_credential_is_refused(store: SqliteStore, db_path: Path) -> None:
    store.put("a", unique_token(), None)
    store.put("b", unique_token(), None)
    with sqlite3.connect(db_path) as raw:
        raw.execute(
            "UPDATE tokens SET ciphertext = (SELECT ciphertext FROM tokens WHERE credential = 'a')"
            " WHERE credential = 'b'"
        )
    raw.close()
    with pytest.raises(CorruptRowError) as excinfo:
        store.get("b")
    assert "'b'" in str(excinfo.value) and "authproxy logout b" in str(excinfo.value)


# -- keys ------------------------------------------------------------------------------------


def test_key_file_generated_private_and_stable(tmp_path: Path, open_umask: None) -> None:
    key_file = tmp_path / "config" / "authproxy" / "store.key"
    with pytest.raises(KeySourceError) as excinfo:
        load_keys(key_file, env={})
    assert ENV_VAR in str(excinfo.value) and str(key_file) in str(excinfo.value)
    assert not key_file.exists()

    first = load_keys(key_file, env={}, create=True)
    assert mode_of(key_file) == 0o600
    assert mode_of(key_file.parent) == 0o700
    assert first.source == f"key file {key_file}"
    assert len(first.keys) == 1
    assert load_keys(key_file, env={}).keys == first.keys


def test_env_keys_win_over_the_key_file(tmp_path: Path) -> None:
    key_file = tmp_path / "store.key"
    load_keys(key_file, env={}, create=True)
    k1, k2 = Fernet.generate_key(), Fernet.generate_key()
    ring = load_keys(key_file, env={ENV_VAR: f"{k1.decode()}, {k2.decode()}"})
    assert ring.keys == (k1, k2)
    assert ring.source == ENV_VAR
    token = Fernet(k2).encrypt(b"x")
    assert ring.fernet.decrypt(token) == b"x"  # older keys still decrypt
    assert Fernet(k1).decrypt(ring.fernet.encrypt(b"y")) == b"y"  # newest encrypts


def test_malformed_keys_name_source_and_line_not_the_key(tmp_path: Path) -> None:
    key_file = tmp_path / "store.key"
    bad = "not-a-key-" + uuid.uuid4().hex
    key_file.write_text(f"{Fernet.generate_key().decode()}\n\n{bad}\n")
    key_file.chmod(0o600)
    with pytest.raises(KeySourceError) as excinfo:
        load_keys(key_file, env={})
    assert f"{key_file}, line 3" in str(excinfo.value)
    assert bad not in str(excinfo.value)
    assert excinfo.value.__cause__ is None and excinfo.value.__suppress_context__

    with pytest.raises(KeySourceError) as excinfo:
        load_keys(key_file, env={ENV_VAR: f"{Fernet.generate_key().decode()},{bad}"})
    assert f"{ENV_VAR}, entry 2" in str(excinfo.value)
    assert bad not in str(excinfo.value)

    key_file.write_text("# only a comment\n")
    with pytest.raises(KeySourceError, match="holds no keys"):
        load_keys(key_file, env={})


def test_key_file_beside_the_database_is_refused(tmp_path: Path) -> None:
    key_file, db = tmp_path / "store.key", tmp_path / "tokens.db"
    with pytest.raises(KeySourceError, match=r"same directory.*Move the key file"):
        load_keys(key_file, env={}, db_path=db, create=True)
    assert not key_file.exists()
    with pytest.raises(KeySourceError, match="same directory"):
        add_key(key_file, db_path=db)


def test_add_key_prepends_atomically(tmp_path: Path, open_umask: None) -> None:
    key_file = tmp_path / "keys" / "store.key"
    old = load_keys(key_file, env={}, create=True)
    description = add_key(key_file)
    new = load_keys(key_file, env={})
    assert len(new.keys) == 2 and new.keys[1] == old.keys[0]
    assert new.keys[0].decode() not in description and str(key_file) in description
    assert mode_of(key_file) == 0o600
    assert sorted(p.name for p in key_file.parent.iterdir()) == ["store.key"]  # no temp left


def test_default_paths_follow_xdg() -> None:
    env = {"HOME": "/home/u", "XDG_STATE_HOME": "/s", "XDG_CONFIG_HOME": "/c"}
    assert default_db_path(env) == Path("/s/authproxy/tokens.db")
    assert default_key_file(env) == Path("/c/authproxy/store.key")
    relative = {"HOME": "/home/u", "XDG_STATE_HOME": "rel", "XDG_CONFIG_HOME": ""}
    assert default_db_path(relative) == Path("/home/u/.local/state/authproxy/tokens.db")
    assert default_key_file(relative) == Path("/home/u/.config/authproxy/store.key")


# -- wrong key, missing and damaged files ----------------------------------------------------


def test_wrong_key_is_reported_and_changes_nothing(db_path: Path, keyring: Keyring) -> None:
    with SqliteStore(db_path, keyring) as s:
        s.put("github", unique_token(), None)
    before = sha256(db_path)

    other = Keyring.from_keys([Fernet.generate_key()], "key file /elsewhere/store.key")
    with SqliteStore(db_path, other, create=False) as s:
        with pytest.raises(UndecryptableError) as excinfo:
            s.get("github")
        assert s.keys() == ["github"]  # metadata needs no key
    message = str(excinfo.value)
    for part in ("'github'", str(db_path), "key file /elsewhere/store.key", ENV_VAR):
        assert part in message
    assert "logout" not in message  # the right key fixes it: never advise deleting the token
    assert sha256(db_path) == before


def test_missing_store_is_not_created_without_create(db_path: Path, keyring: Keyring) -> None:
    with pytest.raises(MissingStoreError) as excinfo:
        SqliteStore(db_path, keyring, create=False)
    assert str(db_path) in str(excinfo.value)
    assert not db_path.parent.exists()


def _assert_refused_untouched(db_path: Path, keyring: Keyring, match: str) -> None:
    before = sha256(db_path)
    for create in (True, False):
        with pytest.raises(CorruptStoreError, match=match) as excinfo:
            SqliteStore(db_path, keyring, create=create)
        assert str(db_path) in str(excinfo.value)
        assert "untouched" in str(excinfo.value)
    assert sha256(db_path) == before


def test_random_bytes_file_is_refused_untouched(db_path: Path, keyring: Keyring) -> None:
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(os.urandom(8192))
    db_path.chmod(0o600)
    _assert_refused_untouched(db_path, keyring, "not a database")


def test_truncated_database_is_refused_untouched(db_path: Path, keyring: Keyring) -> None:
    with SqliteStore(db_path, keyring) as s:
        for i in range(40):
            big = Token(access_token="x" * 2000 + uuid.uuid4().hex, expires_at=1.0, obtained_at=0)
            s.put(f"cred-{i}", big, None)
    size = db_path.stat().st_size
    assert size > 8 * 4096
    with open(db_path, "r+b") as f:
        f.truncate(size // 2)
    _assert_refused_untouched(db_path, keyring, "malformed")


def test_foreign_sqlite_database_is_refused_untouched(db_path: Path, keyring: Keyring) -> None:
    db_path.parent.mkdir(parents=True)
    with sqlite3.connect(db_path) as raw:
        raw.execute("CREATE TABLE notes (body TEXT)")
    raw.close()
    db_path.chmod(0o600)
    _assert_refused_untouched(db_path, keyring, "not an authproxy token store")


# -- key rotation --------------------------------------------------------------------------


def _rotation_fixture(tmp_path: Path, db_path: Path) -> tuple[Path, dict[str, Token]]:
    key_file = tmp_path / "config" / "store.key"
    tokens = {f"cred-{i}": unique_token() for i in range(5)}
    with SqliteStore(db_path, load_keys(key_file, env={}, create=True)) as s:
        for name, token in tokens.items():
            s.put(name, token, None)
    return key_file, tokens


def test_rotation_re_encrypts_every_row(tmp_path: Path, db_path: Path) -> None:
    key_file, tokens = _rotation_fixture(tmp_path, db_path)
    old = load_keys(key_file, env={})
    add_key(key_file)
    ring = load_keys(key_file, env={})

    with SqliteStore(db_path, ring) as s:
        before = {n: s.get(n) for n in tokens}
        assert s.reseal(Sealer(ring)) == len(tokens)
        # versions and timestamps untouched: the token is the same
        assert {n: s.get(n) for n in tokens} == before
        assert {n: s.get(n).token for n in tokens} == tokens  # type: ignore[union-attr]

    newest_only = Keyring.from_keys(ring.keys[:1], "newest key")
    with SqliteStore(db_path, newest_only, create=False) as s:
        assert {n: s.get(n).token for n in tokens} == tokens  # type: ignore[union-attr]
    with SqliteStore(db_path, old, create=False) as s:
        for name in tokens:
            with pytest.raises(UndecryptableError, match=name):
                s.get(name)


class _FailsAfter(MultiFernet):
    """A ring whose re-encryption dies after `budget` rows, like a crash mid-rotation."""

    def __init__(self, fernets: list[Fernet], budget: int) -> None:
        super().__init__(fernets)
        self.budget = budget

    def rotate(self, msg: bytes | str) -> bytes:
        if self.budget == 0:
            raise RuntimeError("simulated crash during rotation")
        self.budget -= 1
        return super().rotate(msg)


def test_interrupted_rotation_leaves_every_row_readable(tmp_path: Path, db_path: Path) -> None:
    key_file, tokens = _rotation_fixture(tmp_path, db_path)
    add_key(key_file)
    ring = load_keys(key_file, env={})
    failing = Keyring(_FailsAfter([Fernet(k) for k in ring.keys], 2), ring.keys, "failing")

    with SqliteStore(db_path, ring) as s, pytest.raises(RuntimeError, match="simulated"):
        s.reseal(Sealer(failing))

    with SqliteStore(db_path, ring, create=False) as s:
        assert {n: s.get(n).token for n in tokens} == tokens  # type: ignore[union-attr]
    # Each row is its own transaction: exactly the first two (in name order) were committed.
    newest_only = Keyring.from_keys(ring.keys[:1], "newest key")
    with SqliteStore(db_path, newest_only, create=False) as s:
        readable = []
        for name in sorted(tokens):
            try:
                s.get(name)
                readable.append(name)
            except UndecryptableError:
                pass
    assert readable == sorted(tokens)[:2]


# -- crash safety --------------------------------------------------------------------------


def test_kill_9_never_loses_a_committed_token(db_path: Path, keyring: Keyring, key: bytes) -> None:
    rng = random.Random()
    last = 0
    for _ in range(20):
        # A short lease, because the writer is usually killed while holding the lock.
        proc = helper("writer", db_path, "cred", key, "0.2")
        for _ in range(rng.randint(1, 4)):
            last = int(expect_line(proc))
            time.sleep(rng.uniform(0, 0.02))  # random kill timing, deliberately
        out, _ = finish(proc, kill=True)
        # Every line it printed reports a commit; the newest of them must be on disk.
        complete = [line for line in out.splitlines(keepends=True) if line.endswith("\n")]
        if complete:
            last = int(complete[-1])

        with SqliteStore(db_path, keyring, create=False) as s:
            record = s.get("cred")
        assert record is not None
        n = numbered(record.token)
        # The writer may have committed n+1 and died before printing it, nothing more.
        assert last <= n <= last + 1
        assert record.version == n
        last = n


# -- locking -------------------------------------------------------------------------------


def test_lock_excludes_threads_and_processes(
    tmp_path: Path, db_path: Path, store: SqliteStore, key: bytes
) -> None:
    rounds = 15
    markers = tmp_path / "markers"
    procs = [
        helper("locker", db_path, "cred", key, "30", str(markers), str(rounds)) for _ in range(2)
    ]
    try:
        for proc in procs:
            expect_line(proc, "ready")

        errors: list[BaseException] = []
        start = threading.Barrier(3)

        def contend() -> None:
            try:
                start.wait(timeout=10)
                for _ in range(rounds):
                    with store.lock("cred", timeout=30):
                        with open(markers, "a") as f:
                            f.write(f"enter t{threading.get_ident()}\n")
                        record = store.get("cred")
                        n = numbered(record.token) + 1 if record else 1
                        store.put("cred", numbered_token(n), record.version if record else None)
                        with open(markers, "a") as f:
                            f.write(f"exit t{threading.get_ident()}\n")
                    time.sleep(random.uniform(0, 0.02))  # jitter so that contenders interleave
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=contend) for _ in range(2)]
        for t in threads:
            t.start()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        start.wait(timeout=10)
        for t in threads:
            t.join(timeout=60)
        for proc in procs:
            out, err = finish(proc)
            assert proc.returncode == 0, err
            assert out == "done\n"
        assert not errors, errors
    finally:
        for proc in procs:
            if not proc.stdout.closed:  # type: ignore[union-attr]
                finish(proc, kill=True)

    lines = markers.read_text().splitlines()
    assert len(lines) == 2 * 4 * rounds
    for enter, leave in zip(lines[::2], lines[1::2], strict=True):
        assert enter.startswith("enter ") and leave == "exit " + enter.removeprefix("enter ")
    record = store.get("cred")
    assert record is not None and numbered(record.token) == 4 * rounds


def test_lock_does_not_block_readers_or_other_credentials(store: SqliteStore) -> None:
    store.put("a", unique_token(), None)
    done = threading.Event()
    errors: list[BaseException] = []

    def elsewhere() -> None:
        try:
            assert store.get("a") is not None
            store.put("b", unique_token(), None)
            with store.lock("b", timeout=5):
                pass
            with pytest.raises(TimeoutError, match="'a'"), store.lock("a", timeout=0.05):
                pass
        except BaseException as e:
            errors.append(e)
        finally:
            done.set()

    with store.lock("a", timeout=5):
        thread = threading.Thread(target=elsewhere)
        thread.start()
        assert done.wait(timeout=10), "work on other credentials waited for the lock on 'a'"
    thread.join()
    assert not errors, errors
    with store.lock("a", timeout=1):  # released on exit
        pass


def test_lease_of_a_killed_holder_expires(
    db_path: Path, store: SqliteStore, key: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    ttl = 2.0
    holder = helper("holder", db_path, "cred", key, str(ttl))
    try:
        expect_line(holder, "locked")
        # While another process holds the lease: readers and other credentials go on.
        started = time.monotonic()
        store.put("other", unique_token(), None)
        assert store.get("cred") is None
        assert time.monotonic() - started < ttl
        with pytest.raises(TimeoutError, match="'cred'"), store.lock("cred", timeout=0.05):
            pass
    finally:
        finish(holder, kill=True)

    with caplog.at_level(logging.WARNING), store.lock("cred", timeout=10 * ttl):
        assert "taking over the refresh lock of 'cred'" in caplog.text
