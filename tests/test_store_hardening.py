"""Store files and directories another local user could read, plant or swap are refused.

Tests run as root, so "another user" is simulated by chown-ing to uid 65534 (nobody).
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from proxy_addon.store.base import StoreError
from proxy_addon.store.keys import Keyring, load_keys
from proxy_addon.store.sqlite import SqliteStore
from proxy_addon.tokens import Token

NOBODY = 65534

pytestmark = pytest.mark.skipif(not hasattr(os, "geteuid"), reason="POSIX ownership")
# Giving a file to another user needs root (the test suite's usual user here).
needs_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="chown to another user needs root"
)


@pytest.fixture
def keyring() -> Keyring:
    return Keyring.from_keys([Fernet.generate_key()], "test key")


@pytest.fixture
def db_path(tmp_path: Path, keyring: Keyring) -> Path:
    """A store with one row, closed again, in a private directory."""
    path = tmp_path / "state" / "tokens.db"
    with SqliteStore(path, keyring) as s:
        s.put("api", Token(access_token="a" * 24, expires_at=4e9, obtained_at=0.0), None)
    return path


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys" / "store.key"
    load_keys(path, env={}, create=True)
    return path


def _set_mode(path: Path, mode: int) -> None:
    """Loosen (or set) a mode on purpose: the tests plant what an unsafe setup looks like."""
    os.chmod(path, mode)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _refused(open_it: Callable[[], object], *expected: str) -> str:
    with pytest.raises(StoreError) as excinfo:
        result = open_it()
        if isinstance(result, SqliteStore):
            result.close()
    message = str(excinfo.value)
    for part in expected:
        assert part in message, message
    return message


# -- key file ----------------------------------------------------------------------------------


def test_key_file_open_to_others_is_refused(key_file: Path) -> None:
    _set_mode(key_file, 0o644)
    _refused(lambda: load_keys(key_file, env={}), "open to other users", f"chmod 600 {key_file}")


@needs_root
def test_key_file_of_another_user_is_refused(key_file: Path) -> None:
    os.chown(key_file, NOBODY, NOBODY)
    _refused(lambda: load_keys(key_file, env={}), "another user (uid 65534)", "chown")


def test_key_file_symlink_is_not_followed(tmp_path: Path, key_file: Path) -> None:
    real = tmp_path / "keys" / "real.key"
    key_file.rename(real)
    key_file.symlink_to(real)
    _refused(lambda: load_keys(key_file, env={}), "symbolic link")
    _refused(lambda: load_keys(key_file, env={}, create=True), "symbolic link")


def test_key_file_in_a_directory_others_can_write_is_refused(key_file: Path) -> None:
    _set_mode(key_file.parent, 0o777)
    _refused(
        lambda: load_keys(key_file, env={}), "can be written by other users",
        f"chmod go-w {key_file.parent}",
    )  # fmt: skip


@needs_root
def test_no_key_is_generated_in_a_directory_of_another_user(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    os.chown(keys, NOBODY, NOBODY)
    _refused(lambda: load_keys(keys / "store.key", env={}, create=True), "another user")
    assert not (keys / "store.key").exists()


# -- database and the files beside it ---------------------------------------------------------


@needs_root
def test_database_of_another_user_is_refused_untouched(db_path: Path, keyring: Keyring) -> None:
    os.chown(db_path, NOBODY, NOBODY)
    before = _digest(db_path)
    _refused(lambda: SqliteStore(db_path, keyring), "another user (uid 65534)", "chown")
    assert _digest(db_path) == before


def test_database_open_to_others_is_refused(db_path: Path, keyring: Keyring) -> None:
    _set_mode(db_path, 0o660)
    _refused(lambda: SqliteStore(db_path, keyring), f"chmod 600 {db_path}")
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o660  # not silently "fixed"


@needs_root
@pytest.mark.parametrize("suffix", ["-wal", "-shm", "-journal"])
def test_planted_sidecar_is_refused(db_path: Path, keyring: Keyring, suffix: str) -> None:
    sidecar = Path(f"{db_path}{suffix}")
    sidecar.write_bytes(b"")
    _set_mode(sidecar, 0o600)
    os.chown(sidecar, NOBODY, NOBODY)
    _refused(lambda: SqliteStore(db_path, keyring), str(sidecar), "another user")


def test_sidecar_symlink_is_refused(db_path: Path, keyring: Keyring, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    Path(f"{db_path}-wal").symlink_to(target)
    _refused(lambda: SqliteStore(db_path, keyring), "symbolic link")
    assert not target.exists()


def test_database_symlink_is_not_followed(tmp_path: Path, keyring: Keyring) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    target = tmp_path / "victim.db"
    (state / "tokens.db").symlink_to(target)
    for create in (True, False):
        _refused(lambda c=create: SqliteStore(state / "tokens.db", keyring, create=c),
                 "symbolic link")  # fmt: skip
    assert not target.exists()  # a dangling link was not followed to create a file either

    target.write_bytes(b"")
    _set_mode(target, 0o600)
    _refused(lambda: SqliteStore(state / "tokens.db", keyring), "symbolic link")
    assert target.read_bytes() == b""


# -- directories --------------------------------------------------------------------------------


def test_world_writable_state_directory_is_refused(db_path: Path, keyring: Keyring) -> None:
    _set_mode(db_path.parent, 0o777)
    _refused(lambda: SqliteStore(db_path, keyring), f"chmod go-w {db_path.parent}")
    _set_mode(db_path.parent, 0o1777)  # sticky is not enough for the directory itself
    _refused(lambda: SqliteStore(db_path, keyring), "can be written by other users")


@needs_root
def test_state_directory_of_another_user_is_refused(db_path: Path, keyring: Keyring) -> None:
    os.chown(db_path.parent, NOBODY, NOBODY)
    _refused(lambda: SqliteStore(db_path, keyring), "belongs to another user")


def test_parent_writable_by_everyone_needs_the_sticky_bit(tmp_path: Path, keyring: Keyring) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    _set_mode(shared, 0o777)
    db = shared / "me" / "tokens.db"
    _refused(lambda: SqliteStore(db, keyring), f"chmod o-w {shared}")
    _set_mode(shared, 0o1777)  # like /tmp: others cannot rename what is ours
    SqliteStore(db, keyring).close()
    assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700


def test_new_store_directories_are_private_whatever_the_umask(
    tmp_path: Path, keyring: Keyring
) -> None:
    old = os.umask(0)
    try:
        db = tmp_path / "a" / "b" / "tokens.db"
        SqliteStore(db, keyring).close()
    finally:
        os.umask(old)
    for d in (tmp_path / "a", tmp_path / "a" / "b"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d


def test_runtime_refuses_with_one_line_through_the_cli(tmp_path: Path) -> None:
    from harness import run_cli

    config = tmp_path / "c.yaml"
    config.write_text(
        f"store: {{path: {tmp_path}/state/tokens.db, key_file: {tmp_path}/keys/store.key}}\n"
        "credentials:\n  api: {grant: client_credentials, token_url: 'https://idp.test/t',\n"
        "    client_id: c, client_secret: s}\n"
    )
    load_keys(tmp_path / "keys" / "store.key", env={}, create=True)
    _set_mode(tmp_path / "keys" / "store.key", 0o640)
    r = run_cli("--config", str(config), "tokens", env={"AUTHPROXY_KEY": ""})
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert "chmod 600" in r.stderr
