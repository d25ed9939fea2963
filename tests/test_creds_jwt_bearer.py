"""`grant: jwt_bearer` (RFC 7523 §2.1) and Google service-account keys, against the demo IdP,
which verifies the assertion with the issuer's registered public key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from harness import route
from support.keys import new_key, pem, write_private

from proxy_addon.config import ConfigError, parse_config
from proxy_addon.errors import GrantError
from proxy_addon.grants import make_grant
from proxy_addon.grants.jwt_bearer import read_service_account
from proxy_addon.grants.keys import KeyFileError

SA_EMAIL = "robot@demo-project.iam.gserviceaccount.test"


def parse(cred: dict[str, Any]) -> Any:
    return parse_config(
        {"credentials": {"c": {"grant": "jwt_bearer", **cred}}}, "t.yaml"
    ).credentials["c"]


def service_account(path: Path, token_uri: str, key: Any, **over: Any) -> Path:
    data = {
        "type": "service_account", "project_id": "demo-project", "private_key_id": "kid-1",
        "private_key": pem(key).decode(), "client_email": SA_EMAIL, "client_id": "1234",
        "token_uri": token_uri, **over,
    }  # fmt: skip
    return write_private(path, json.dumps(data).encode())


def test_service_account_file_checks(tmp_path: Path) -> None:
    key = new_key("RSA")
    good = service_account(tmp_path / "sa.json", "https://oauth2.test/token", key)
    account = read_service_account(str(good))
    assert (account.client_email, account.private_key_id) == (SA_EMAIL, "kid-1")

    user = service_account(tmp_path / "user.json", "https://x.test/t", key, type="authorized_user")
    with pytest.raises(
        KeyFileError,
        match=r"service_account_file: .*user\.json: has type 'authorized_user', not 'service_",
    ):
        read_service_account(str(user))
    shared = write_private(tmp_path / "shared.json", good.read_bytes(), mode=0o644)
    with pytest.raises(KeyFileError, match="can be read by other users"):
        read_service_account(str(shared))
    plain = service_account(tmp_path / "http.json", "http://oauth2.test/token", key)
    with pytest.raises(KeyFileError, match="token_uri must be an https:// URL"):
        read_service_account(str(plain))
    with pytest.raises(KeyFileError, match="no such file"):
        read_service_account(str(tmp_path / "nope.json"))
    junk = write_private(tmp_path / "junk.json", b"{not json")
    with pytest.raises(KeyFileError, match="is not JSON"):
        read_service_account(str(junk))


def test_config_rules(tmp_path: Path) -> None:
    # The service-account file names the token endpoint; no client_id is needed.
    a = parse({"service_account_file": "/a.json"})
    b = parse({"service_account_file": "/b.json"})
    assert a.token_url is None and a.client_id is None
    assert a.identity != b.identity  # two service accounts never share stored tokens
    with pytest.raises(
        ConfigError,
        match=r"c\.service_account_file: grant jwt_bearer needs "
        r"service_account_file or private_key_file with assertion_issuer",
    ):
        parse({"token_url": "https://idp.test/token", "private_key_file": "/k.pem"})
    with pytest.raises(ConfigError, match=r"c\.token_url: is required"):
        parse({"private_key_file": "/k.pem", "assertion_issuer": "me"})
    generic = parse({"token_url": "https://idp.test/token", "private_key_file": "/k.pem",
                     "assertion_issuer": "me", "private_key_passphrase": "pp"})  # fmt: skip
    assert "pp" in generic.secrets()
    other = {"token_url": "https://idp.test/token", "private_key_file": "/k.pem"}
    assert generic.identity != parse({**other, "assertion_issuer": "you"}).identity


def test_generic_jwt_bearer_against_the_idp(tmp_path: Path, idp, pki) -> None:
    key = new_key("EC")
    idp.add_jwt_issuer("svc-issuer", key.public_key())
    path = write_private(tmp_path / "k.pem", pem(key))
    cfg = parse({
        "token_url": idp.token_url, "private_key_file": str(path), "assertion_issuer": "svc-issuer",
        "assertion_subject": "user-7", "key_id": "k7", "scopes": ["read", "write"],
    })  # fmt: skip
    token = make_grant(cfg, str(pki.ca_cert)).obtain(None)
    assert idp.is_valid(token.access_token) and idp.subject_of(token.access_token) == "user-7"
    asserted = idp.jwt.accepted[-1]
    assert asserted.headers["kid"] == "k7" and asserted.claims["aud"] == idp.token_url
    entry = idp.requests_log[-1]
    assert entry["scope"] == "read write" and "assertion" not in entry
    assert idp.grant_counts == {"urn:ietf:params:oauth:grant-type:jwt-bearer": 1}

    wrong = write_private(tmp_path / "wrong.pem", pem(new_key("EC")))
    bad = make_grant(parse({**{k: cfg.options[k] for k in ("assertion_issuer",)},
                            "token_url": idp.token_url, "private_key_file": str(wrong)}),
                     str(pki.ca_cert))  # fmt: skip
    with pytest.raises(GrantError) as e:
        bad.obtain(None)
    assert e.value.terminal and "invalid_grant" in str(e.value)


def test_bad_signing_key_is_a_terminal_error_naming_the_file(tmp_path: Path, idp, pki) -> None:
    locked = write_private(tmp_path / "locked.pem", pem(new_key("EC"), "pw"))
    grant = make_grant(parse({"token_url": idp.token_url, "private_key_file": str(locked),
                              "assertion_issuer": "x"}), True)  # fmt: skip
    encrypted = r"private_key_file: .*locked\.pem: the key is encrypted"
    with pytest.raises(GrantError, match=encrypted) as e:
        grant.obtain(None)
    assert e.value.terminal and idp.token_requests == 0
    user = service_account(tmp_path / "u.json", idp.token_url, new_key("RSA"), type="user")
    grant = make_grant(parse({"service_account_file": str(user)}), True)
    with pytest.raises(GrantError, match="has type 'user', not 'service_account'"):
        grant.obtain(None)


def test_service_account_through_the_proxy(tmp_path: Path, start_proxy, idp, api) -> None:
    key = new_key("RSA")
    idp.add_jwt_issuer(SA_EMAIL, key.public_key())
    sa = service_account(tmp_path / "sa.json", idp.token_url, key)
    proxy = start_proxy({
        "credentials": {"api": {"grant": "jwt_bearer", "service_account_file": str(sa),
                                "scopes": ["https://www.googleapis.test/auth/demo"]}},
        "routes": [route("api.example.test", api.port)],
    })  # fmt: skip
    r = proxy.session().get(f"https://api.example.test:{api.port}/v1", timeout=30)
    assert r.status_code == 200, r.text
    asserted = idp.jwt.accepted[-1]
    # Google-style: the scope is a claim, there is no sub, the kid is the key's id.
    assert asserted.claims["scope"] == "https://www.googleapis.test/auth/demo"
    assert "sub" not in asserted.claims and asserted.headers["kid"] == "kid-1"
    assert asserted.claims["aud"] == idp.token_url
    assert "PRIVATE KEY" not in proxy.output()
