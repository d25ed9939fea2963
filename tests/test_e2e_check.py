"""`authproxy check` as a user runs it: it refuses what `run` refuses, and warns."""

from __future__ import annotations

from pathlib import Path

import yaml
from cryptography.fernet import Fernet
from harness import run_cli

from proxy_addon.store.keys import Keyring
from proxy_addon.store.sqlite import SqliteStore
from proxy_addon.tokens import Token


def _write(tmp_path: Path, config: dict[str, object]) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _cred() -> dict[str, object]:
    return {"grant": "client_credentials", "token_url": "https://idp.example.com/token",
            "client_id": "c", "client_secret": "${SECRET}"}  # fmt: skip


def _store(tmp_path: Path) -> dict[str, str]:
    return {"path": str(tmp_path / "state" / "tokens.db"),
            "key_file": str(tmp_path / "keys" / "store.key")}  # fmt: skip


def test_check_warns_and_passes(tmp_path: Path) -> None:
    path = _write(tmp_path, {
        "store": _store(tmp_path),
        "credentials": {"a": _cred(), "spare": _cred()},
        "routes": [{"host": "*.example.com", "credential": "a"},
                   {"host": "api.example.com", "credential": "a"}],
    })  # fmt: skip
    done = run_cli("--config", str(path), "check", env={"SECRET": "s", "AUTHPROXY_KEY": ""})
    assert done.returncode == 0, done.stderr
    assert "warning: routes[1]" in done.stderr and "never matches" in done.stderr
    assert "warning: credentials.spare: no route uses it" in done.stderr


def test_check_reports_all_missing_variables(tmp_path: Path) -> None:
    path = _write(tmp_path, {"proxy_auth": "${AP_TEST_PW}",
                             "credentials": {"a": {**_cred(), "client_secret": "${AP_TEST_S}"}}})
    done = run_cli("--config", str(path), "check")
    assert done.returncode == 2
    assert "environment variables not set: " in done.stderr
    assert "AP_TEST_PW (for proxy_auth)" in done.stderr
    assert "AP_TEST_S (for credentials.a.client_secret)" in done.stderr
    assert "Traceback" not in done.stderr


def test_check_refuses_a_store_written_with_another_key(tmp_path: Path) -> None:
    store = _store(tmp_path)
    path = _write(tmp_path, {"store": store, "credentials": {"a": _cred()},
                             "routes": [{"host": "api.example.com", "credential": "a"}]})
    from proxy_addon.config import load_config

    key = load_config(path, env={"SECRET": "s"}).credentials["a"].store_key
    other = Keyring.from_keys([Fernet.generate_key()], "elsewhere")
    with SqliteStore(Path(store["path"]), other) as s:
        s.put(key, Token(access_token="t" * 24, expires_at=4e9, obtained_at=0.0), None)
    keys = Path(store["key_file"])
    keys.parent.mkdir(mode=0o700)
    keys.write_text(Fernet.generate_key().decode() + "\n")
    keys.chmod(0o600)
    done = run_cli("--config", str(path), "check", env={"SECRET": "s", "AUTHPROXY_KEY": ""})
    assert done.returncode == 2, done.stdout
    assert "different key" in done.stderr
    assert "Traceback" not in done.stderr
