"""A stored token belongs to its credential's identity (IdP, client, scopes...), not its name."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import CLIENT_ID, CLIENT_SECRET, cc_credential, route, run_cli

from proxy_addon.config import CredentialConfig, TokenPolicy, load_config
from proxy_addon.demo.api import ApiServer
from proxy_addon.demo.certs import Pki
from proxy_addon.demo.idp import AuthServer
from proxy_addon.store.keys import load_keys
from proxy_addon.store.sqlite import SqliteStore
from proxy_addon.tokens import Token, fingerprint

CLIENT_B, SECRET_B = "client-b", "secret-b-" + "y" * 16

BASE = CredentialConfig(
    "svc", "client_credentials", token_url="https://idp-a.example/token", client_id="a",
    client_secret="s1", scopes=("read", "write"), params={"audience": "https://api-a"},
)  # fmt: skip


# -- the identity digest (pure) ---------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"token_url": "https://idp-b.example/token"},
        {"issuer": "https://idp-a.example"},
        {"client_id": "b"},
        {"scopes": ("read",)},
        {"params": {"audience": "https://api-b"}},
        {"params": {"audience": "https://api-a", "resource": "x"}},
        {"grant": "refresh_token"},
        {"grant": "password", "username": "bob"},
        {"authorization_params": {"audience": "https://api-b"}},
    ],
)
def test_identity_changes_with_what_decides_the_token(change: dict) -> None:
    changed = dataclasses.replace(BASE, **change)
    assert changed.identity != BASE.identity
    assert changed.store_key != BASE.store_key


@pytest.mark.parametrize(
    "change",
    [
        {"client_secret": "rotated-secret"},
        {"policy": TokenPolicy(refresh_leeway=5, idp_timeout=1)},
        {"client_auth": "post"},
        {"scopes": ("write", "read", "read")},  # order and repeats do not matter
        {"redirect_port": 8765},
        {"revocation_url": "https://idp-a.example/revoke"},
        {"authorization_params": {"prompt": "consent", "login_hint": "me"}},
    ],
)
def test_identity_ignores_secrets_and_tuning(change: dict) -> None:
    assert dataclasses.replace(BASE, **change).identity == BASE.identity


def test_store_key_is_name_and_16_hex_digits_and_not_a_bare_name() -> None:
    name, sep, digest = BASE.store_key.partition("#")
    assert (name, sep) == ("svc", "#")
    assert len(digest) == 16 and int(digest, 16) >= 0
    password = dataclasses.replace(BASE, grant="password", username="a", password="p1")
    assert dataclasses.replace(password, password="p2").identity == password.identity


# -- two configs, one store, end to end --------------------------------------------------------


@pytest.fixture
def idp_b(pki: Pki) -> Iterator[AuthServer]:
    server = AuthServer(pki).start()
    server.add_client(CLIENT_B, SECRET_B)
    yield server
    server.stop()


@pytest.fixture
def api_b(pki: Pki, idp_b: AuthServer) -> Iterator[ApiServer]:
    server = ApiServer(idp_b.is_valid, pki).start()  # takes only B's IdP's tokens
    yield server
    server.stop()


def _issued_fps(idp: AuthServer) -> set[str]:
    with idp._lock:
        return {fingerprint(t) for t in idp._access}


def _stored_keys(tmp_path: Path) -> set[str]:
    keyring = load_keys(tmp_path / "keys" / "store.key", env={})
    with SqliteStore(tmp_path / "state" / "tokens.db", keyring, create=False) as s:
        return set(s.keys())


def test_two_configs_with_one_name_each_get_their_own_token(
    start_proxy, idp, api, idp_b, api_b, tmp_path: Path
) -> None:
    config_a = {"credentials": {"svc": cc_credential(idp.token_url)},
                "routes": [route("api.example.test", api.port, "svc")]}  # fmt: skip
    config_b = {"credentials": {"svc": {"grant": "client_credentials",
                                        "token_url": idp_b.token_url,
                                        "client_id": CLIENT_B, "client_secret": SECRET_B}},
                "routes": [route("api.example.test", api_b.port, "svc")]}  # fmt: skip
    a = start_proxy(config_a, name="a")
    assert a.session().get(f"https://api.example.test:{api.port}/", timeout=30).status_code == 200
    b = start_proxy(config_b, name="b")
    assert b.session().get(f"https://api.example.test:{api_b.port}/", timeout=30).status_code == 200

    # B asked its own IdP, and its API never saw A's token (not even once, before a 401).
    assert idp_b.token_requests == 1
    assert [e["status"] for e in api_b.requests_log] == [200]
    assert api_b.requests_log[0]["token_fp"] in _issued_fps(idp_b)
    assert not {e["token_fp"] for e in api_b.requests_log} & _issued_fps(idp)

    # Both rows coexist, each under its own config's key.
    keys = {load_config(p.config_path).credentials["svc"].store_key for p in (a, b)}
    assert len(keys) == 2
    assert _stored_keys(tmp_path) == keys

    # A restarted still has its own token: B did not overwrite it.
    a.stop()
    again = start_proxy(config_a, name="a-again")
    assert again.session().get(f"https://api.example.test:{api.port}/", timeout=30).ok
    assert idp.token_requests == 1
    assert [e["status"] for e in api.requests_log] == [200, 200]


def test_row_of_an_older_version_is_not_served_and_logout_removes_it(
    start_proxy, idp, api, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # What an authproxy without identities left: a row under the bare name.
    keyring = load_keys(tmp_path / "keys" / "store.key", env={}, create=True)
    legacy = Token(access_token="legacy-" + "z" * 20, expires_at=4e9, obtained_at=0.0)
    with SqliteStore(tmp_path / "state" / "tokens.db", keyring) as s:
        s.put("api", legacy, None)

    config = {"credentials": {"api": cc_credential(idp.token_url)},
              "routes": [route("api.example.test", api.port)]}  # fmt: skip
    p = start_proxy(config)
    assert p.session().get(f"https://api.example.test:{api.port}/", timeout=30).ok
    assert idp.token_requests == 1
    assert fingerprint(legacy.access_token) not in {e["token_fp"] for e in api.requests_log}
    assert "older authproxy" in p.output() and "authproxy logout api" in p.output()
    p.stop()
    key = load_config(p.config_path).credentials["api"].store_key
    assert _stored_keys(tmp_path) == {"api", key}
    t = run_cli("--config", str(p.config_path), "tokens")
    assert t.returncode == 0, t.stderr
    assert "older authproxy" in t.stdout and "authproxy logout api" in t.stdout

    r = run_cli("--config", str(p.config_path), "logout", "api")
    assert r.returncode == 0, r.stderr
    assert "older authproxy" in r.stdout
    assert _stored_keys(tmp_path) == set()


def test_login_logout_and_tokens_use_the_identity_key(tmp_path: Path, caplog) -> None:
    """In process: a token saved by login is what `tokens` reports and `logout` deletes."""
    from proxy_addon.login import save_token
    from proxy_addon.runtime import Runtime

    config_path = tmp_path / "c.yaml"
    config_path.write_text(
        f"store: {{path: {tmp_path}/state/tokens.db, key_file: {tmp_path}/keys/store.key}}\n"
        "credentials:\n  api: {grant: password, token_url: 'https://idp.example.test/token',\n"
        f"    client_id: {CLIENT_ID}, client_secret: {CLIENT_SECRET}, username: u, password: p}}\n"
    )
    config = load_config(config_path)
    key = config.credentials["api"].store_key
    caplog.set_level(logging.INFO)
    rt = Runtime.build(config)
    try:
        save_token(rt.store, key, Token(access_token="t" * 24, expires_at=4e9, obtained_at=0.0))
        assert rt.store.keys() == [key]
    finally:
        rt.close()
    r = run_cli("--config", str(config_path), "tokens", "--json")
    assert r.returncode == 0, r.stderr
    assert '"state": "valid"' in r.stdout
    r = run_cli("--config", str(config_path), "logout", "api")
    assert r.returncode == 0, r.stderr
    assert _stored_keys(tmp_path) == set()


def test_ciphertext_is_sealed_to_the_identity_key(tmp_path: Path) -> None:
    """A row copied onto the other config's key is refused, not served to the wrong IdP's API."""
    import sqlite3

    from proxy_addon.store.sqlite import CorruptRowError

    key_a = BASE.store_key
    key_b = dataclasses.replace(BASE, token_url="https://idp-b.example/token").store_key
    keyring = load_keys(tmp_path / "keys" / "store.key", env={}, create=True)
    db = tmp_path / "state" / "tokens.db"
    with SqliteStore(db, keyring) as s:
        s.put(key_a, Token(access_token="a" * 24, expires_at=4e9, obtained_at=0.0), None)
        s.put(key_b, Token(access_token="b" * 24, expires_at=4e9, obtained_at=0.0), None)
    with sqlite3.connect(db) as raw:
        raw.execute(
            "UPDATE tokens SET ciphertext = (SELECT ciphertext FROM tokens WHERE credential = ?)"
            " WHERE credential = ?",
            (key_a, key_b),
        )
    raw.close()
    with SqliteStore(db, keyring) as s, pytest.raises(CorruptRowError, match="logout svc`"):
        s.get(key_b)
