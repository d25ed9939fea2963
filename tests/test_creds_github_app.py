"""`grant: github_app`: installation tokens from a GitHub-App-like server that verifies the
app JWT, end to end through the proxy."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import route
from support.keys import new_key, pem, write_private

from proxy_addon.config import ConfigError, parse_config
from proxy_addon.demo.api import ApiServer
from proxy_addon.demo.github_app import GitHubAppServer
from proxy_addon.errors import GrantError
from proxy_addon.grants import make_grant
from proxy_addon.grants.github_app import app_jwt_claims, parse_permissions

APP_ID, INSTALLATION = 4242, 777


@pytest.fixture
def gh(pki) -> Iterator[GitHubAppServer]:  # type: ignore[no-untyped-def]
    server = GitHubAppServer(pki).start()
    server.add_app(APP_ID, new_key("RSA").public_key(), client_id="Iv1.demo")
    server.add_installation(INSTALLATION, APP_ID, ("alpha", "beta"))
    yield server
    server.stop()


def parse(cred: dict[str, Any]) -> Any:
    return parse_config(
        {"credentials": {"c": {"grant": "github_app", **cred}}}, "t.yaml"
    ).credentials["c"]


def app_cred(gh: GitHubAppServer, key_file: Path, **extra: Any) -> dict[str, Any]:
    return {"app_id": str(APP_ID), "installation_id": str(INSTALLATION),
            "private_key_file": str(key_file), "api_url": gh.url, **extra}  # fmt: skip


def test_app_jwt_keeps_githubs_limits() -> None:
    claims = app_jwt_claims("42", now=1000)
    assert claims == {"iss": "42", "iat": 940, "exp": 1540}
    assert claims["exp"] - 1000 <= 600
    assert parse_permissions("contents:read issues:write") == {
        "contents": "read",
        "issues": "write",
    }
    with pytest.raises(ValueError, match="permissions: expected name:read"):
        parse_permissions("contents")


def test_config(tmp_path: Path) -> None:
    cfg = parse({"app_id": "1", "installation_id": "2", "private_key_file": "/k.pem",
                 "repositories": ["alpha", "beta"], "permissions": "contents:read"})  # fmt: skip
    assert cfg.options["repositories"] == "alpha beta"
    narrower = parse({"app_id": "1", "installation_id": "2", "private_key_file": "/k.pem",
                      "repositories": ["alpha"]})  # fmt: skip
    assert cfg.identity != narrower.identity  # tokens of different scope never mix
    with pytest.raises(ConfigError, match=r"c\.app_id: grant github_app needs app_id or client_id"):
        parse({"installation_id": "2", "private_key_file": "/k.pem"})
    with pytest.raises(ConfigError, match=r"c\.installation_id: is required"):
        parse({"app_id": "1", "private_key_file": "/k.pem"})
    # The github preset's OAuth endpoints do not get in the way.
    assert parse({"preset": "github", "client_id": "Iv1.x", "installation_id": "2",
                  "private_key_file": "/k.pem"}).client_id == "Iv1.x"  # fmt: skip


def test_installation_token_from_a_verified_app_jwt(tmp_path: Path, gh, pki) -> None:
    key = new_key("RSA")
    gh.add_app(APP_ID, key.public_key(), client_id="Iv1.demo")
    key_file = write_private(tmp_path / "app.pem", pem(key))
    grant = make_grant(parse(app_cred(gh, key_file, repositories=["alpha"],
                                      permissions="contents:read")), str(pki.ca_cert))  # fmt: skip
    token = grant.obtain(None)
    assert gh.is_valid(token.access_token) and token.access_token.startswith("ghs_")
    assert abs(token.expires_at - (time.time() + 3600)) < 5
    issued = gh.tokens[token.access_token]
    assert issued.repositories == ("alpha",) and issued.permissions == {"contents": "read"}

    # The client id works as the issuer too.
    by_client = make_grant(parse({**app_cred(gh, key_file), "app_id": None,
                                  "client_id": "Iv1.demo"}), str(pki.ca_cert))  # fmt: skip
    assert gh.is_valid(by_client.obtain(None).access_token)


def test_github_refusals_are_terminal_and_say_what_to_fix(tmp_path: Path, gh, pki) -> None:
    key = new_key("RSA")
    gh.add_app(APP_ID, key.public_key())
    good = write_private(tmp_path / "app.pem", pem(key))
    wrong = write_private(tmp_path / "wrong.pem", pem(new_key("RSA2")))
    ec = write_private(tmp_path / "ec.pem", pem(new_key("EC")))
    cases = [
        (app_cred(gh, wrong), "github_app_jwt_rejected", "private_key_file is this app's key"),
        (app_cred(gh, good, installation_id="9"), "github_app_refused", "GitHub said 404"),
        (app_cred(gh, good, repositories=["gamma"]), "github_app_refused", "GitHub said 422"),
        (app_cred(gh, ec), "bad_github_app_config", "needs an RSA key, the file holds an EC"),
        (app_cred(gh, good, installation_id="x1"), "bad_github_app_config", "expected a number"),
    ]
    for cred, code, text in cases:
        with pytest.raises(GrantError) as e:
            make_grant(parse(cred), str(pki.ca_cert)).obtain(None)
        assert (e.value.code, e.value.terminal) == (code, True)
        assert text in str(e.value)


def test_github_app_through_the_proxy(tmp_path: Path, start_proxy, gh, pki) -> None:
    key = new_key("RSA")
    gh.add_app(APP_ID, key.public_key())
    key_file = write_private(tmp_path / "app.pem", pem(key))
    with ApiServer(gh.is_valid, pki) as api:
        proxy = start_proxy({
            "credentials": {"gh": {"grant": "github_app", **app_cred(gh, key_file)}},
            "routes": [route("api.example.test", api.port, "gh")],
        })  # fmt: skip
        for _ in range(2):
            r = proxy.session().get(f"https://api.example.test:{api.port}/repos", timeout=30)
            assert r.status_code == 200, r.text
    assert gh.requests == 1  # the hour-long token is cached like any other
    (token,) = list(gh.tokens)
    assert token not in proxy.output()


def test_key_files_are_relative_to_the_config_file(tmp_path: Path) -> None:
    cred = {"grant": "github_app", "app_id": "1", "installation_id": "2",
            "private_key_file": "keys/app.pem"}  # fmt: skip
    route = {"host": "a.test", "credential": "c", "client_certificate_file": "c.pem",
             "client_key_file": "c.key"}  # fmt: skip
    config = parse_config({"credentials": {"c": cred}, "routes": [route]}, "t.yaml",
                          base_dir=tmp_path)  # fmt: skip
    assert config.credentials["c"].options["private_key_file"] == str(tmp_path / "keys/app.pem")
    (r,) = list(config.routes)
    assert r.client_cert == (str(tmp_path / "c.pem"), str(tmp_path / "c.key"))


def test_a_token_unfit_for_a_header_is_refused(tmp_path: Path, gh, pki) -> None:
    from proxy_addon.idp_http import Answer

    grant = make_grant(parse(app_cred(gh, tmp_path / "k.pem")), True)
    body = b'{"token": "ghs_x\\r\\nX-Evil: 1", "expires_at": "2030-01-01T00:00:00Z"}'
    with pytest.raises(GrantError, match="RFC 6750 b64token"):
        grant.read(Answer(201, {}, body), time.time())
    ok = grant.read(
        Answer(201, {}, b'{"token": "ghs_ok", "expires_at": "2030-01-01T00:00:00Z"}'), 0
    )
    assert ok.access_token == "ghs_ok" and ok.expires_at == 1893456000
