"""Mutual TLS client authentication at the token endpoint (RFC 8705 §2): the demo IdP asks
for a client certificate, knows clients by thumbprint (self-signed) or subject (CA-issued),
and binds the tokens it issues over mTLS to that certificate (§3)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from harness import route
from support.keys import new_key, pem, self_signed_cert, write_private

from proxy_addon.config import ConfigError, parse_config
from proxy_addon.demo.idp import x5t_s256
from proxy_addon.errors import GrantError
from proxy_addon.grants import make_grant
from proxy_addon.grants.keys import cert_thumbprint


def parse(cred: dict[str, Any]) -> Any:
    base = {"grant": "client_credentials", "client_id": "mc"}
    return parse_config({"credentials": {"c": {**base, **cred}}}, "t.yaml").credentials["c"]


def self_signed(tmp_path: Path, name: str = "c") -> tuple[Path, Path]:
    key = new_key("EC")
    return self_signed_cert(tmp_path / f"{name}.crt", key, f"client {name}"), write_private(
        tmp_path / f"{name}.key", pem(key)
    )


def grant(
    idp: Any, pki: Any, cert: Path, key: Path, method: str = "self_signed_tls_client_auth"
) -> Any:
    cfg = parse({"token_url": idp.token_url, "client_auth": method,
                 "client_certificate_file": str(cert), "client_key_file": str(key)})  # fmt: skip
    return make_grant(cfg, str(pki.ca_cert))


def test_config_needs_both_files() -> None:
    with pytest.raises(ConfigError, match=r"c\.client_key_file: is required"):
        parse({"token_url": "https://i.test/t", "client_auth": "tls_client_auth",
               "client_certificate_file": "/c.pem"})  # fmt: skip


def test_self_signed_certificate_authenticates_and_binds_the_token(
    tmp_path: Path, idp, pki
) -> None:
    cert, key = self_signed(tmp_path)
    thumb = cert_thumbprint(str(cert), key="client_certificate_file")
    idp.trust_client_certs(cert)
    idp.add_client_cert("mc", thumbprint=thumb)
    token = grant(idp, pki, cert, key).obtain(None)
    assert idp.is_valid(token.access_token)
    assert idp.cnf_of(token.access_token) == thumb

    # Another trusted certificate is not this client's.
    other_cert, other_key = self_signed(tmp_path, "other")
    idp.trust_client_certs(other_cert)
    with pytest.raises(GrantError) as e:
        grant(idp, pki, other_cert, other_key).obtain(None)
    assert e.value.terminal and "invalid_client" in str(e.value)


def test_ca_issued_certificate_known_by_subject(tmp_path: Path, idp, pki) -> None:
    ca = trustme.CA(organization_name="client CA")
    leaf = ca.issue_cert("mc.clients.test")
    ca_file = tmp_path / "client-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert = tmp_path / "leaf.crt"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    key = write_private(tmp_path / "leaf.key", leaf.private_key_pem.bytes())
    subject = x509.load_pem_x509_certificate(cert.read_bytes()).subject.rfc4514_string()
    idp.trust_client_certs(ca_file)
    idp.add_client_cert("mc", subject_dn=subject)
    token = grant(idp, pki, cert, key, "tls_client_auth").obtain(None)
    der = x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(Encoding.DER)
    assert idp.cnf_of(token.access_token) == x5t_s256(der)


def test_bad_certificate_and_key_files(tmp_path: Path, idp, pki) -> None:
    cert, key = self_signed(tmp_path)
    idp.trust_client_certs(cert)
    idp.add_client_cert("mc", thumbprint=cert_thumbprint(str(cert), key="c"))
    _, other_key = self_signed(tmp_path, "other")
    shared = write_private(tmp_path / "shared.key", key.read_bytes(), mode=0o640)
    locked = write_private(tmp_path / "locked.key", pem(new_key("EC"), "pw"))
    cases = [
        (cert, shared, "can be read by other users"),
        (cert, locked, "is encrypted; TLS takes no passphrase"),
        (cert, other_key, "is not the certificate of client_key_file"),
        (tmp_path / "none.crt", key, r"client_certificate_file: .*none\.crt: no such file"),
        (cert, tmp_path / "none.key", r"client_key_file: .*none\.key: no such file"),
    ]
    for c, k, message in cases:
        with pytest.raises(GrantError, match=message) as e:
            grant(idp, pki, c, k).obtain(None)
        assert e.value.terminal
    assert idp.token_requests == 0  # refused before anything was sent


def test_certificate_bound_token_through_the_proxy(tmp_path: Path, start_proxy, idp, api) -> None:
    # The token endpoint binds the token to the certificate (RFC 8705 §3); the API checks that
    # the same certificate is on the connection that presents it. Only the route naming the
    # certificate sends it.
    cert, key = self_signed(tmp_path)
    thumb = cert_thumbprint(str(cert), key="c")
    for server in (idp, api):
        server.trust_client_certs(cert)
    idp.add_client_cert("mc", thumbprint=thumb)
    api.cnf_of = idp.cnf_of
    files = {"client_certificate_file": str(cert), "client_key_file": str(key)}
    proxy = start_proxy({
        "credentials": {"api": {"grant": "client_credentials", "token_url": idp.token_url,
                                "client_id": "mc", "client_auth": "self_signed_tls_client_auth",
                                **files}},
        "routes": [route("api.example.test", api.port, **files),
                   route("other.test", api.port)],
    })  # fmt: skip
    r = proxy.session().get(f"https://api.example.test:{api.port}/bound", timeout=30)
    assert r.status_code == 200, r.text
    (token,) = list(idp._access)
    assert idp.cnf_of(token) == thumb
    r = proxy.session().get(f"https://other.test:{api.port}/unbound", timeout=30)
    assert r.status_code == 401  # same token, no certificate: refused by the binding
    assert "PRIVATE KEY" not in proxy.output()


def test_route_certificate_files_are_checked_at_start(tmp_path: Path, start_proxy, idp) -> None:
    cert, key = self_signed(tmp_path)
    key.chmod(0o644)
    # Refused before the token store is created, naming the route's key and the file.
    refused = r"proxy\.yaml: routes\[0\]\.client_key_file: .*c\.key: can be read by other users"
    with pytest.raises(AssertionError, match=refused):
        start_proxy({
            "credentials": {"api": {"grant": "client_credentials", "token_url": idp.token_url,
                                    "client_id": "x", "client_secret": "y"}},
            "routes": [route("api.example.test", 443, client_certificate_file=str(cert),
                             client_key_file=str(key))],
        })  # fmt: skip
    assert not (tmp_path / "state").exists()
    with pytest.raises(ConfigError, match=r"routes\[0\]\.client_key_file: is required"):
        parse_config({"credentials": {"c": {"grant": "static", "token": "t"}},
                      "routes": [route("a.test", 443, "c", client_certificate_file="/c")]},
                     "t.yaml")  # fmt: skip


class _RecordingConnection:
    """Stands in for the pyOpenSSL connection: records what it is asked to present."""

    def __init__(self) -> None:
        self.certificate: Any = None
        self.private_key: Any = None

    def use_certificate(self, certificate: Any) -> None:
        self.certificate = certificate

    def use_privatekey(self, private_key: Any) -> None:
        self.private_key = private_key


def test_a_renewed_route_certificate_is_presented_without_a_restart(tmp_path: Path) -> None:
    from proxy_addon.mtls import present_client_cert

    cert, key = self_signed(tmp_path, "live")
    first = _RecordingConnection()
    present_client_cert(first, str(cert), str(key))
    # A renewal tool writes the new pair beside the old one and renames it into place.
    (tmp_path / "renewed").mkdir()
    new_cert, new_key_file = self_signed(tmp_path / "renewed", "live")
    new_key_file.replace(key)
    new_cert.replace(cert)
    second = _RecordingConnection()
    present_client_cert(second, str(cert), str(key))
    renewed = x509.load_pem_x509_certificate(cert.read_bytes())
    assert second.certificate == renewed
    assert first.certificate != renewed
    assert second.private_key.public_key() == renewed.public_key()
