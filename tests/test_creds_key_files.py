"""Key, certificate and service-account files are read and checked once, at start: a bad one
stops `authproxy run` (and `authproxy check`) with one line naming the config file, the key,
the file and what is wrong, before the token store is touched; requests reuse what was loaded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import CLIENT_ID, HOSTS, cc_credential, route, run_cli
from support.keys import new_key, pem, self_signed_cert, write_key, write_private

from proxy_addon.config import Config, ConfigError, parse_config
from proxy_addon.grants import make_grant
from proxy_addon.runtime import Runtime, load_grant_keys

SOURCE = "/etc/authproxy/config.yaml"
TOKEN_URL = "https://idp.example.test/token"


def config(tmp_path: Path, cred: dict[str, Any], routes: list[Any] | None = None,
           **more: dict[str, Any]) -> Config:  # fmt: skip
    store = {"path": str(tmp_path / "state" / "tokens.db"),
             "key_file": str(tmp_path / "keys" / "store.key")}  # fmt: skip
    return parse_config(
        {"store": store, "credentials": {"c": cred, **more}, "routes": routes or []}, SOURCE
    )


def jwt_client(key_file: Path, **extra: Any) -> dict[str, Any]:
    return {"grant": "client_credentials", "token_url": TOKEN_URL, "client_id": CLIENT_ID,
            "client_auth": "private_key_jwt", "private_key_file": str(key_file),
            **extra}  # fmt: skip


def tls_client(cert: Path, key: Path) -> dict[str, Any]:
    return {"grant": "client_credentials", "token_url": TOKEN_URL, "client_id": CLIENT_ID,
            "client_auth": "tls_client_auth", "client_certificate_file": str(cert),
            "client_key_file": str(key)}  # fmt: skip


def service_account(path: Path, key: Any = None, **over: Any) -> Path:
    data = {"type": "service_account", "client_email": "sa@demo.iam.test", "token_uri": TOKEN_URL,
            "private_key": pem(key or new_key("RSA")).decode(), **over}  # fmt: skip
    return write_private(path, json.dumps(data).encode())


def github_app(key_file: Path) -> dict[str, Any]:
    return {"grant": "github_app", "app_id": "1", "installation_id": "2",
            "private_key_file": str(key_file)}  # fmt: skip


def _cases(tmp: Path) -> dict[str, tuple[dict[str, Any], str, Path, str]]:
    """(case, credential, key, file, what is wrong): each a different way a file goes bad."""
    ec = new_key("EC")
    good_ec = write_key(tmp / "ec.pem", ec)
    cert = self_signed_cert(tmp / "c.crt", ec)
    other_key = write_key(tmp / "other.pem", new_key("EC"))
    missing = tmp / "missing.pem"
    shared = write_key(tmp / "shared.pem", ec, mode=0o644)
    junk = write_private(tmp / "junk.pem", b"not a key\n")
    locked = write_key(tmp / "locked.pem", ec, passphrase="pw")
    directory = tmp / "a-directory"
    directory.mkdir()
    user = service_account(tmp / "user.json", type="authorized_user")
    not_json = write_private(tmp / "sa.txt", b"{nope")
    bad_sa_key = service_account(tmp / "bad-key.json", private_key="-----BEGIN PRIVATE KEY-----")
    pkf = "private_key_file"
    cases = [
        ("jwt missing", jwt_client(missing), pkf, missing, "no such file"),
        ("jwt shared", jwt_client(shared), pkf, shared, "can be read by other users"),
        ("jwt not pem", jwt_client(junk), pkf, junk, "not a PEM private key"),
        ("jwt encrypted", jwt_client(locked), pkf, locked, "encrypted; give its passphrase"),
        ("jwt directory", jwt_client(directory), pkf, directory, "is not a regular file"),
        ("jwt wrong alg", jwt_client(good_ec, signing_alg="RS256"), pkf, good_ec,
         "signing_alg RS256 needs an RSA key, the file holds an EC P-256 key"),
        ("jwt certificate", jwt_client(good_ec, certificate_file=str(missing)),
         "certificate_file", missing, "no such file"),
        ("bearer key", {"grant": "jwt_bearer", "token_url": TOKEN_URL, pkf: str(junk),
                        "assertion_issuer": "me"}, pkf, junk, "not a PEM private key"),
        ("sa type", {"grant": "jwt_bearer", "service_account_file": str(user)},
         "service_account_file", user, "has type 'authorized_user', not 'service_account'"),
        ("sa json", {"grant": "jwt_bearer", "service_account_file": str(not_json)},
         "service_account_file", not_json, "is not JSON"),
        ("sa key", {"grant": "jwt_bearer", "service_account_file": str(bad_sa_key)},
         "service_account_file", bad_sa_key, "not a PEM private key"),
        ("github missing", github_app(missing), pkf, missing, "no such file"),
        ("github ec", github_app(good_ec), pkf, good_ec, "RS256 needs an RSA key"),
        ("tls mismatch", tls_client(cert, other_key), "client_certificate_file", cert,
         f"is not the certificate of client_key_file {other_key}"),
        ("tls encrypted", tls_client(cert, locked), "client_key_file", locked,
         "is encrypted; TLS takes no passphrase"),
        ("tls no cert", tls_client(tmp / "none.crt", good_ec), "client_certificate_file",
         tmp / "none.crt", "no such file"),
        ("tls cert junk", tls_client(junk, good_ec), "client_certificate_file", junk,
         "holds no PEM certificate"),
    ]  # fmt: skip
    return {name: rest for name, *rest in cases}  # type: ignore[misc]


CASES = [
    "jwt missing", "jwt shared", "jwt not pem", "jwt encrypted", "jwt directory", "jwt wrong alg",
    "jwt certificate", "bearer key", "sa type", "sa json", "sa key", "github missing",
    "github ec", "tls mismatch", "tls encrypted", "tls no cert", "tls cert junk",
]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_a_bad_file_is_a_config_error_naming_file_key_and_problem(
    tmp_path: Path, case: str
) -> None:
    cases = _cases(tmp_path)
    assert set(cases) == set(CASES)
    cred, key, path, problem = cases[case]
    cfg = config(tmp_path, cred)
    with pytest.raises(ConfigError) as e:
        Runtime.build(cfg, env={})
    assert e.value.source == SOURCE
    assert e.value.key == f"credentials.c.{key}"
    assert e.value.message.startswith(f"{path}: ") and problem in e.value.message, e.value.message
    assert str(e.value) == f"{SOURCE}: credentials.c.{key}: {e.value.message}"
    assert "\n" not in str(e.value)
    assert not (tmp_path / "state").exists()  # refused before the store was created


def test_good_files_load_once_and_serve_without_the_file(tmp_path: Path, idp, pki) -> None:
    # private_key_jwt against the demo IdP: the key is read at start and kept; a file that
    # goes away afterwards changes nothing until the next start (or reload).
    key = new_key("EC")
    idp.add_client_key("kc", key.public_key())
    path = write_key(tmp_path / "k.pem", key)
    cfg = config(tmp_path, {**jwt_client(path), "token_url": idp.token_url, "client_id": "kc"})
    grant = make_grant(cfg.credentials["c"], str(pki.ca_cert))
    load_grant_keys(cfg, "c", grant)
    path.unlink()
    assert grant.obtain(None).access_token and grant.obtain(None).access_token
    assert idp.token_requests == 2


def test_a_good_github_app_key_loads(tmp_path: Path) -> None:
    cfg = config(tmp_path, github_app(write_key(tmp_path / "app.pem", new_key("RSA"))))
    Runtime.build(cfg, env={}).close()


def test_other_config_of_a_github_app_is_checked_at_start_too(tmp_path: Path) -> None:
    cred = {**github_app(write_key(tmp_path / "app.pem", new_key("RSA"))), "installation_id": "x"}
    with pytest.raises(ConfigError) as e:
        Runtime.build(config(tmp_path, cred), env={})
    assert (e.value.key, e.value.message) == ("credentials.c.installation_id",
                                              "expected a number, got 'x'")  # fmt: skip


def test_a_route_certificate_is_checked_before_the_store(tmp_path: Path) -> None:
    cert = self_signed_cert(tmp_path / "c.crt", new_key("EC"))
    other = write_key(tmp_path / "other.pem", new_key("EC"))
    routes = [route("api.example.test", 443, "c", client_certificate_file=str(cert),
                    client_key_file=str(other))]  # fmt: skip
    cfg = config(tmp_path, cc_credential(TOKEN_URL), routes)
    with pytest.raises(ConfigError) as e:
        Runtime.build(cfg, env={})
    assert e.value.key == "routes[0].client_certificate_file"
    assert e.value.message.startswith(f"{cert}: is not the certificate of client_key_file")
    assert not (tmp_path / "state").exists()


def test_a_command_about_one_credential_is_not_stopped_by_anothers_file(tmp_path: Path) -> None:
    # `authproxy tokens`/`logout` build without loading keys; only run and check load them all.
    cfg = config(tmp_path, jwt_client(tmp_path / "missing.pem"), ok=cc_credential(TOKEN_URL))
    Runtime.build(cfg, env={}, load_keys=False).close()
    with pytest.raises(ConfigError, match=r"credentials\.c\.private_key_file: .*no such file"):
        Runtime.build(cfg, env={})


# --- as a user meets it -------------------------------------------------------------------------


def _write(tmp_path: Path, key_file: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "store": {"path": str(tmp_path / "state" / "tokens.db"),
                  "key_file": str(tmp_path / "keys" / "store.key")},
        "confdir": str(tmp_path / "mitmproxy"),
        "credentials": {"github": github_app(key_file)},
        "routes": [{"host": "api.github.com", "credential": "github"}],
    }))  # fmt: skip
    return path


@pytest.mark.parametrize("command", ["run", "check"])
def test_run_and_check_refuse_a_bad_key_file_in_one_line(tmp_path: Path, command: str) -> None:
    missing = tmp_path / "github-app.pem"
    path = _write(tmp_path, missing)
    env = {"PYTHONPATH": str(HOSTS), "AUTHPROXY_KEY": ""}
    done = run_cli("--config", str(path), command, env=env)
    assert done.returncode != 0
    output = (done.stdout + done.stderr).strip()
    assert "Traceback" not in output, output
    assert output.splitlines()[-1] == (
        f"authproxy: {path}: credentials.github.private_key_file: {missing}: no such file"
    ), output
    if command == "run":
        assert len(output.splitlines()) == 1, output
        assert not (tmp_path / "state").exists()  # nothing created
