"""Start-up faults give one clear line and change nothing silently (issue 14, item 8)."""

from __future__ import annotations

import json
import logging
import os
import resource
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from cryptography.fernet import Fernet
from harness import HOSTS, cc_credential, route, run_cli

from proxy_addon.config import StoreConfig, load_config
from proxy_addon.store.base import StoreError
from proxy_addon.store.keys import Keyring
from proxy_addon.store.sqlite import SqliteStore, UndecryptableError
from proxy_addon.tokens import Token

FAST_RETRY = {"retry_attempts": 1, "backoff_initial": 0.05, "backoff_max": 0.2}


def _run(config: Path, *, limit_file_size: int | None = None) -> subprocess.CompletedProcess[str]:
    """`authproxy run` that is expected to stop by itself."""

    def limit() -> None:
        if limit_file_size is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_size, limit_file_size))

    env = {**os.environ, "PYTHONPATH": str(HOSTS), "AUTHPROXY_KEY": ""}
    return subprocess.run(
        [sys.executable, "-m", "proxy_addon", "--config", str(config), "run"],
        capture_output=True, text=True, timeout=60, env=env, preexec_fn=limit,
    )  # fmt: skip


def _one_line(r: subprocess.CompletedProcess[str]) -> str:
    output = (r.stdout + r.stderr).strip()
    assert "Traceback" not in output, output
    assert len(output.splitlines()) == 1, output
    return output


def _config(tmp_path: Path, **extra: object) -> Path:
    path = tmp_path / "c.yaml"
    config = {
        "store": {"path": str(tmp_path / "state" / "tokens.db"),
                  "key_file": str(tmp_path / "keys" / "store.key")},
        "confdir": str(tmp_path / "mitmproxy"),
        "credentials": {"api": cc_credential("https://idp.example.test/token")},
        **extra,
    }  # fmt: skip
    path.write_text(yaml.safe_dump(config))
    return path


# -- (a) the CA bundle cannot be written ---------------------------------------------------------


def test_ca_bundle_that_cannot_be_written_is_one_line(tmp_path: Path, pki) -> None:
    # certifi's bundle alone is larger than the limit, so writing the combined file fails.
    r = _run(_config(tmp_path, ca_certs=[str(pki.ca_cert)]), limit_file_size=64 * 1024)
    assert r.returncode != 0
    line = _one_line(r)
    assert "CA bundle" in line and "File too large" in line, line
    assert not (tmp_path / "state").exists()  # failed before the store was touched


# -- (b) one damaged row ---------------------------------------------------------------------------


def _flip_a_byte(db: Path, key: str) -> None:
    with sqlite3.connect(db) as raw:
        (ct,) = raw.execute("SELECT ciphertext FROM tokens WHERE credential = ?", (key,)).fetchone()
        damaged = bytearray(ct)
        middle = len(damaged) // 2
        damaged[middle] = ord("A") if damaged[middle] != ord("A") else ord("B")
        raw.execute("UPDATE tokens SET ciphertext = ? WHERE credential = ?", (bytes(damaged), key))
    raw.close()


def test_one_damaged_row_stops_only_its_credential(start_proxy, idp, api, tmp_path: Path) -> None:
    config = {
        "tokens": FAST_RETRY,
        "credentials": {"a": cc_credential(idp.token_url), "b": cc_credential(idp.token_url)},
        "routes": [route("api.example.test", api.port, "a", path="/a"),
                   route("api.example.test", api.port, "b", path="/b")],
    }  # fmt: skip
    url = f"https://api.example.test:{api.port}"
    first = start_proxy(config, name="first")
    with first.session() as s:
        assert s.get(f"{url}/a", timeout=30).ok and s.get(f"{url}/b", timeout=30).ok
    first.stop()
    assert idp.token_requests == 2
    key_a = load_config(first.config_path).credentials["a"].store_key
    _flip_a_byte(tmp_path / "state" / "tokens.db", key_a)

    second = start_proxy(config, name="second")  # starts: the key reads the other row
    assert "'a'" in second.output() and "damaged" in second.output()
    with second.session() as s:
        assert s.get(f"{url}/b", timeout=30).status_code == 200
        assert idp.token_requests == 2  # b's stored token was used
        r = s.get(f"{url}/a", timeout=30)
        assert r.status_code == 502
        assert "damaged" in r.json()["message"] and "authproxy logout a" in r.json()["message"]
        assert idp.token_requests == 2  # a damaged row is not papered over with a new token

        t = run_cli("--config", str(second.config_path), "tokens", "--json")
        assert t.returncode == 1, t.stderr  # a credential needs help: as `gh auth status`
        views = {v["name"]: v for v in json.loads(t.stdout)}
        # "damaged" from the store, or "failing" when the running proxy has tried it already.
        assert views["a"]["state"] in ("damaged", "failing")
        assert "damaged" in views["a"]["last_error"]
        assert views["b"]["state"] == "valid"

        out = run_cli("--config", str(second.config_path), "logout", "a")
        assert out.returncode == 0, out.stderr
        deadline = time.monotonic() + 10
        while (status := s.get(f"{url}/a", timeout=30).status_code) != 200:
            assert time.monotonic() < deadline, status
    assert idp.token_requests == 3


def test_damaged_row_is_told_apart_from_a_wrong_key(tmp_path: Path) -> None:
    key = Keyring.from_keys([Fernet.generate_key()], "test key")
    db = tmp_path / "state" / "tokens.db"
    token = Token(access_token="x" * 24, expires_at=4e9, obtained_at=0.0)
    with SqliteStore(db, key) as s:
        s.put("a#1", token, None)
        s.put("b#2", token, None)
    _flip_a_byte(db, "a#1")
    with SqliteStore(db, key) as s:
        with pytest.raises(UndecryptableError, match=r"'a' \(row 'a#1'\).*is damaged") as e:
            s.get("a#1")
        assert "authproxy logout a`" in str(e.value)
        assert s.get("b#2") is not None
    wrong = Keyring.from_keys([Fernet.generate_key()], "key file /other")
    with SqliteStore(db, wrong) as s:
        with pytest.raises(UndecryptableError, match="different key") as e:
            s.get("b#2")
        assert "is damaged" not in str(e.value)


def test_wrong_key_still_refuses_to_build(tmp_path: Path) -> None:
    from proxy_addon.runtime import Runtime

    config = load_config(_config(tmp_path))
    store = Runtime.build(config).store
    store.put(config.credentials["api"].store_key, Token("t" * 24, 4e9, 0.0), None)
    store.close()
    with pytest.raises(UndecryptableError, match="different key"):
        Runtime.build(config, {"AUTHPROXY_KEY": Fernet.generate_key().decode()})


# -- (c) a deleted key file ------------------------------------------------------------------------


def test_deleted_key_file_is_not_silently_regenerated(tmp_path: Path) -> None:
    from proxy_addon.runtime import open_store

    cfg = StoreConfig(path=tmp_path / "state" / "tokens.db", key_file=tmp_path / "keys" / "k")
    store = open_store(cfg, {})
    store.put("api#1", Token("t" * 24, 4e9, 0.0), None)
    store.close()
    cfg.key_file.unlink()  # type: ignore[union-attr]
    for create in (True, False):
        with pytest.raises(StoreError) as excinfo:
            open_store(cfg, {}, create=create)
        message = str(excinfo.value)
        assert "holds 1 token(s)" in message and "Restore" in message, message
        assert not cfg.key_file.exists()  # type: ignore[union-attr]

    r = run_cli("--config", str(_config(tmp_path)), "rotate-key", env={"AUTHPROXY_KEY": ""})
    assert r.returncode == 2 and "Restore" in r.stderr, r.stdout + r.stderr
    assert not (tmp_path / "keys" / "store.key").exists()


def test_key_is_generated_for_an_empty_store(tmp_path: Path) -> None:
    from proxy_addon.runtime import open_store

    cfg = StoreConfig(path=tmp_path / "state" / "tokens.db", key_file=tmp_path / "keys" / "k")
    open_store(cfg, {}).close()  # a store without rows
    cfg.key_file.unlink()  # type: ignore[union-attr]
    open_store(cfg, {}).close()  # nothing to lose: a new key is fine
    assert cfg.key_file.exists()  # type: ignore[union-attr]


# -- (d) a 0-byte store ----------------------------------------------------------------------------


def test_empty_store_file_is_initialised_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = Keyring.from_keys([Fernet.generate_key()], "test key")
    db = tmp_path / "state" / "tokens.db"
    SqliteStore(db, key).close()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # ours: no warning

    db.unlink()
    db.write_bytes(b"")
    db.chmod(0o600)
    with caplog.at_level(logging.WARNING), SqliteStore(db, key) as s:
        assert s.keys() == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("0 bytes" in w and str(db) in w and "backup" in w for w in warnings), warnings


# -- (e) the listen port is checked before the store -----------------------------------------------


def test_busy_port_is_one_line_and_creates_no_store(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        r = _run(_config(tmp_path, listen=f"127.0.0.1:{port}"))
    assert r.returncode == 2
    line = _one_line(r)
    assert f"cannot listen on 127.0.0.1:{port}" in line and "in use" in line, line
    assert not (tmp_path / "state").exists()
    assert not (tmp_path / "keys").exists()


def test_listen_check_sees_the_overrides_and_a_free_port() -> None:
    from proxy_addon.config import Config
    from proxy_addon.portcheck import effective_listen, listen_problem

    config = Config("c.yaml", listen_host="127.0.0.1", listen_port=8080)
    assert effective_listen(None, config) == ("127.0.0.1", 8080)
    assert effective_listen(("::1", 9), config) == ("::1", 9)
    assert effective_listen(None, config, ["listen_port=9001"]) == ("127.0.0.1", 9001)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert listen_problem("127.0.0.1", port) is None
    assert listen_problem("127.0.0.1", 0) is None
