"""Signed client assertions (RFC 7523 §2.2, OIDC Core §9): `private_key_jwt` and
`client_secret_jwt`, checked against the demo IdP, which verifies them with the registered key
and refuses a wrong key, an expired assertion and a replayed `jti`."""

from __future__ import annotations

import base64
import hashlib
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from harness import CLIENT_ID, route
from support.keys import new_key, self_signed_cert, write_key

from proxy_addon.config import ConfigError, parse_config
from proxy_addon.errors import GrantError
from proxy_addon.grants import make_grant
from proxy_addon.grants.client_auth import ASSERTION_TYPE, authenticate
from proxy_addon.grants.keys import KeyFileError, load_private_key, parse_private_key

TOKEN_URL = "https://idp.test/token"
JWT_SECRET = "a-client-secret-long-enough-for-hs256"


def parse(cred: dict[str, Any]) -> Any:
    base = {"grant": "client_credentials", "token_url": TOKEN_URL, "client_id": CLIENT_ID}
    return parse_config({"credentials": {"c": {**base, **cred}}}, "t.yaml").credentials["c"]


def assertion_of(cfg: Any, endpoint: str = TOKEN_URL) -> tuple[dict[str, Any], dict[str, Any]]:
    form = authenticate(cfg, endpoint).form
    assert form["client_assertion_type"] == ASSERTION_TYPE and form["client_id"] == CLIENT_ID
    token = form["client_assertion"]
    claims = jwt.decode(token, options={"verify_signature": False})
    return jwt.get_unverified_header(token), claims


# --- the assertion --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "alg", "natural"),
    [("RSA", "RS256", "RS256"), ("RSA", "PS256", "RS256"), ("EC", "ES256", "ES256"),
     ("Ed25519", "EdDSA", "EdDSA")],
)  # fmt: skip
def test_private_key_jwt_signs_with_each_algorithm(
    tmp_path: Path, kind: str, alg: str, natural: str
) -> None:
    key = new_key(kind)
    path = write_key(tmp_path / "k.pem", key)
    for wanted, expected in ((alg, alg), (None, natural)):
        extra = {"signing_alg": wanted} if wanted else {}
        cfg = parse({"client_auth": "private_key_jwt", "private_key_file": str(path), **extra})
        header, _ = assertion_of(cfg)
        assert header["alg"] == expected
        token = authenticate(cfg, TOKEN_URL).form["client_assertion"]
        verified = jwt.decode(token, key.public_key(), algorithms=[expected], audience=TOKEN_URL)
        assert verified["iss"] == verified["sub"] == CLIENT_ID
        assert verified["exp"] - verified["iat"] == 60


def test_assertion_claims_kid_x5t_fresh_jti_and_audience(tmp_path: Path) -> None:
    key = new_key("RSA")
    path = write_key(tmp_path / "k.pem", key)
    cert = self_signed_cert(tmp_path / "c.pem", key)
    cfg = parse({
        "client_auth": "private_key_jwt", "private_key_file": str(path), "key_id": "k1",
        "certificate_file": str(cert),
    })  # fmt: skip
    header, claims = assertion_of(cfg, "https://idp.test/device")
    der = x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(Encoding.DER)
    thumb = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()
    assert header["kid"] == "k1" and header["x5t#S256"] == thumb
    assert claims["aud"] == "https://idp.test/device"  # the endpoint it is sent to
    assert abs(claims["iat"] - time.time()) < 5 and claims["nbf"] == claims["iat"]
    assert assertion_of(cfg)[1]["jti"] != claims["jti"]  # fresh on every request

    by_issuer = parse({
        "client_auth": "private_key_jwt", "private_key_file": str(path),
        "assertion_audience": "issuer", "issuer": "https://idp.test", "token_url": TOKEN_URL,
    })  # fmt: skip
    assert assertion_of(by_issuer)[1]["aud"] == "https://idp.test"


def test_client_secret_jwt_is_hs256_with_the_secret() -> None:
    cfg = parse({"client_auth": "client_secret_jwt", "client_secret": JWT_SECRET})
    token = authenticate(cfg, TOKEN_URL).form["client_assertion"]
    claims = jwt.decode(token, JWT_SECRET, algorithms=["HS256"], audience=TOKEN_URL)
    assert claims["sub"] == CLIENT_ID
    assert "client_secret" not in authenticate(cfg, TOKEN_URL).form


# --- configuration and bad input ----------------------------------------------------------


def test_config_rules_for_the_new_methods(tmp_path: Path) -> None:
    # A signed assertion proves the client: client_credentials needs no secret then.
    cfg = parse({"client_auth": "private_key_jwt", "private_key_file": "/k.pem"})
    assert cfg.client_secret is None and cfg.options["private_key_file"] == "/k.pem"
    with pytest.raises(ConfigError, match=r"c\.private_key_file: is required"):
        parse({"client_auth": "private_key_jwt"})
    with pytest.raises(
        ConfigError, match=r"c\.client_secret: is required for client_auth client_secret_jwt"
    ):
        parse({"client_auth": "client_secret_jwt"})
    with pytest.raises(
        ConfigError, match=r"c\.client_secret: is required for grant client_credentials"
    ):
        parse({})
    pw = parse({
        "client_auth": "private_key_jwt", "private_key_file": "/k", "private_key_passphrase": "pp"
    })  # fmt: skip
    assert "pp" in pw.secrets()


def test_bad_key_files_get_errors_naming_file_and_fix(tmp_path: Path) -> None:
    key = new_key("EC")
    missing = tmp_path / "missing.pem"
    with pytest.raises(KeyFileError, match=r"private_key_file: .*missing\.pem: no such file"):
        load_private_key(str(missing), key="private_key_file")
    shared = write_key(tmp_path / "shared.pem", key, mode=0o644)
    with pytest.raises(KeyFileError, match=r"can be read by other users .*chmod 600"):
        load_private_key(str(shared), key="private_key_file")
    locked = write_key(tmp_path / "locked.pem", key, passphrase="open sesame")
    with pytest.raises(
        KeyFileError, match="encrypted; give its passphrase as private_key_passphrase"
    ):
        load_private_key(str(locked), key="private_key_file")
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        load_private_key(str(locked), key="private_key_file", passphrase="nope")
    assert load_private_key(str(locked), key="private_key_file", passphrase="open sesame")
    with pytest.raises(KeyFileError, match="not a PEM private key"):
        parse_private_key(b"-----BEGIN CERTIFICATE-----\nxx\n", key="private_key_file")
    unreadable = write_key(tmp_path / "unreadable.pem", key, mode=0o000)
    if not Path("/proc/self").exists() or __import__("os").geteuid() != 0:
        with pytest.raises(KeyFileError, match="permission denied"):
            load_private_key(str(unreadable), key="private_key_file")

    # The wrong key type for the algorithm, as the grant meets it: a terminal GrantError.
    ec_file = write_key(tmp_path / "ec.pem", key)
    cfg = parse({
        "client_auth": "private_key_jwt", "private_key_file": str(ec_file), "signing_alg": "RS256"
    })  # fmt: skip
    with pytest.raises(
        GrantError, match=r"signing_alg RS256 needs an RSA key, the file holds an EC P-256 key"
    ) as e:
        authenticate(cfg, TOKEN_URL)
    assert e.value.terminal and e.value.code == "bad_client_key"


# --- against the demo IdP -----------------------------------------------------------------


def _grant(idp: Any, pki: Any, **cred: Any) -> Any:
    cfg = parse({"token_url": idp.token_url, **cred})
    return make_grant(cfg, str(pki.ca_cert))


def test_idp_accepts_private_key_jwt_and_refuses_a_wrong_key(tmp_path: Path, idp, pki) -> None:
    key = new_key("EC")
    idp.add_client_key("kc", key.public_key())
    good = write_key(tmp_path / "good.pem", key)
    grant = _grant(
        idp, pki, client_id="kc", client_auth="private_key_jwt", private_key_file=str(good)
    )
    assert grant.obtain(None).access_token
    assert idp.jwt.accepted[-1].issuer == "kc"

    wrong = write_key(tmp_path / "wrong.pem", new_key("EC"))
    grant = _grant(
        idp, pki, client_id="kc", client_auth="private_key_jwt", private_key_file=str(wrong)
    )
    with pytest.raises(GrantError) as e:
        grant.obtain(None)
    assert e.value.terminal and "invalid_client" in str(e.value)


def test_idp_accepts_client_secret_jwt(idp, pki) -> None:
    idp.add_client_key(CLIENT_ID, JWT_SECRET)
    grant = _grant(idp, pki, client_auth="client_secret_jwt", client_secret=JWT_SECRET)
    assert grant.obtain(None).access_token


def _post(idp: Any, pki: Any, assertion: str) -> requests.Response:
    form = {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion, "client_id": "kc"}  # fmt: skip
    return requests.post(idp.token_url, data=form, verify=str(pki.ca_cert), timeout=10)


def test_idp_refuses_expired_and_replayed_assertions(tmp_path: Path, idp, pki) -> None:
    key = new_key("EC")
    idp.add_client_key("kc", key.public_key())
    now = int(time.time())
    claims = {"iss": "kc", "sub": "kc", "aud": idp.token_url, "jti": "j-1"}
    expired = jwt.encode({**claims, "iat": now - 600, "exp": now - 300}, key, "ES256")
    r = _post(idp, pki, expired)
    assert (r.status_code, r.json()["error"]) == (401, "invalid_client")
    assert "expired" in r.json()["error_description"]

    fresh = jwt.encode({**claims, "jti": "j-2", "iat": now, "exp": now + 60}, key, "ES256")
    assert _post(idp, pki, fresh).status_code == 200
    again = _post(idp, pki, fresh)
    assert again.status_code == 401 and "jti" in again.json()["error_description"]

    elsewhere = jwt.encode({**claims, "jti": "j-3", "aud": "https://other.test/token",
                            "iat": now, "exp": now + 60}, key, "ES256")  # fmt: skip
    assert _post(idp, pki, elsewhere).status_code == 401
    # alg confusion: an HS256 token MACed with the public key's bytes is refused.
    assert _post(idp, pki, jwt.encode({**claims, "jti": "j-4", "iat": now, "exp": now + 60},
                                      "x" * 32, "HS256")).status_code == 401  # fmt: skip


def test_private_key_jwt_through_the_proxy(tmp_path: Path, start_proxy, idp, api) -> None:
    key = new_key("RSA")
    idp.add_client_key("kc", key.public_key())
    path = write_key(tmp_path / "client.pem", key)
    proxy = start_proxy({
        "credentials": {"api": {
            "grant": "client_credentials", "token_url": idp.token_url, "client_id": "kc",
            "client_auth": "private_key_jwt", "private_key_file": str(path), "signing_alg": "PS256",
        }},
        "routes": [route("api.example.test", api.port)],
    })  # fmt: skip
    r = proxy.session().get(f"https://api.example.test:{api.port}/x", timeout=30)
    assert r.status_code == 200, r.text
    assert idp.jwt.accepted[-1].headers["alg"] == "PS256"
    assert "client_assertion" not in idp.requests_log[0]  # never logged
    assert path.read_bytes()[:40].decode() not in proxy.output()


def test_a_key_made_readable_by_others_later_is_refused(tmp_path: Path) -> None:
    # The parsed key is cached, but not past a chmod.
    path = write_key(tmp_path / "k.pem", new_key("EC"))
    assert load_private_key(str(path), key="private_key_file")
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="can be read by other users"):
        load_private_key(str(path), key="private_key_file")
