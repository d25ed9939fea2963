"""The token store's key in-process: a start with the wrong key, `rotate-key` (through
`cli.main`), and a store that reads a changed key file again. The store shared by processes, and
running proxies following `rotate-key`: test_e2e_store.py, test_e2e_live_store.py."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml
from cryptography.fernet import Fernet
from harness import cc_credential
from support.inproc_cli import authproxy

from proxy_addon.config import load_config
from proxy_addon.demo.idp import AuthServer
from proxy_addon.runtime import Runtime
from proxy_addon.store import StoreError
from proxy_addon.store.keys import Keyring
from proxy_addon.store.sealer import Sealer, UndecryptableError
from proxy_addon.store.sqlite import SqliteStore
from proxy_addon.tokens import Token

TOKEN = Token(access_token="a" * 24, expires_at=4e9, obtained_at=1.0)


@pytest.fixture
def config_path(tmp_path: Path, idp: AuthServer, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config whose store holds a token for `api`, as a first proxy leaves it."""
    monkeypatch.setenv("AUTHPROXY_KEY", "")
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump({
        "store": {"path": str(tmp_path / "state" / "tokens.db"),
                  "key_file": str(tmp_path / "keys" / "store.key")},
        "credentials": {"api": cc_credential(idp.token_url)},
        "routes": [{"host": "api.example.test", "credential": "api"}],
    }))  # fmt: skip
    first = Runtime.build(load_config(path))  # what `authproxy run` builds at start
    try:
        first.store.put(first.config.credentials["api"].store_key, TOKEN, None)
    finally:
        first.close()
    return path


def _stored(path: Path) -> Token | None:
    """The token a proxy starting now reads for `api` (the start fails as the proxy's would)."""
    runtime = Runtime.build(load_config(path))
    try:
        record = runtime.store.get(runtime.config.credentials["api"].store_key)
        return record.token if record else None
    finally:
        runtime.close()


def test_wrong_key_refuses_to_start_and_leaves_store_untouched(
    config_path: Path, tmp_path: Path, idp: AuthServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "state" / "tokens.db"
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    monkeypatch.setenv("AUTHPROXY_KEY", Fernet.generate_key().decode())
    with pytest.raises(StoreError) as refused:  # the addon's start answers this with its message
        _stored(config_path)
    message = str(refused.value)
    assert "'api'" in message and "AUTHPROXY_KEY" in message
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    assert idp.token_requests == 0  # nothing was re-fetched silently


def test_rotate_key_keeps_every_token_readable(
    config_path: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key_file = tmp_path / "keys" / "store.key"
    old_key = key_file.read_text().strip()

    r = authproxy(capsys, "--config", str(config_path), "rotate-key")
    assert r.returncode == 0, r.stderr
    assert "re-encrypted 1 credential(s)" in r.stdout
    keys = [k for k in key_file.read_text().splitlines() if k and not k.startswith("#")]
    assert len(keys) == 2 and keys[1] == old_key  # newest first, the old one still there

    assert _stored(config_path) == TOKEN  # the rotated row is read: no new token needed
    # Rows are under the new key now: the new key alone reads them.
    monkeypatch.setenv("AUTHPROXY_KEY", keys[0])
    assert _stored(config_path) == TOKEN


def test_the_sealer_reads_a_changed_key_file_again(tmp_path: Path) -> None:
    old, new = Fernet.generate_key(), Fernet.generate_key()
    current = [Keyring.from_keys([old], "key file k")]
    token = Token(access_token="t" * 24, expires_at=4e9, obtained_at=0.0)
    db = tmp_path / "state" / "tokens.db"
    with SqliteStore(db, Sealer(current[0], reread=lambda: current[0])) as running:
        running.put("a#1", token, None)
        with SqliteStore(db, Keyring.from_keys([old], "k"), create=False) as cli:
            assert cli.reseal(Sealer(Keyring.from_keys([new, old], "k"))) == 1
        current[0] = Keyring.from_keys([new, old], "key file k (rotated)")
        record = running.get("a#1")
        assert record is not None and record.token == token
    # Without a way to read the keys again, the same situation is an error that never says
    # to delete the token.
    with SqliteStore(db, Keyring.from_keys([old], "k"), create=False) as stale:
        try:
            stale.get("a#1")
        except UndecryptableError as e:
            assert "logout" not in str(e)
        else:
            raise AssertionError("a stale keyring read a re-encrypted row")
