"""The demo IdP's fault knobs that scripts/probe_refresh.py turns: 503 with Retry-After, and
lifetimes it advertises apart from the real one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from proxy_addon.demo.certs import Pki, make_pki
from proxy_addon.demo.idp import AuthServer

CLIENT, SECRET = "probe-client", "probe-secret"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def idp(pki: Pki) -> Iterator[AuthServer]:
    with AuthServer(pki) as server:
        server.add_client(CLIENT, SECRET)
        yield server


def token(idp: AuthServer, pki: Pki) -> requests.Response:
    with requests.Session() as http:
        http.trust_env = False
        return http.post(
            idp.token_url,
            data={"grant_type": "client_credentials"},
            auth=(CLIENT, SECRET),
            verify=str(pki.ca_cert),
            timeout=5,
        )


def test_fault_503_says_when_to_come_back(idp: AuthServer, pki: Pki) -> None:
    idp.fault = "503"
    r = token(idp, pki)
    assert (r.status_code, r.headers["Retry-After"]) == (503, "10")
    idp.retry_after = "120"
    assert token(idp, pki).headers["Retry-After"] == "120"
    idp.retry_after = None
    assert "Retry-After" not in token(idp, pki).headers
    assert [e["status"] for e in idp.requests_log] == [503, 503, 503]


@pytest.mark.parametrize("advertised", [-5, 0, 10**9, 0.5])
def test_advertised_lifetime_apart_from_the_real_one(
    idp: AuthServer, pki: Pki, advertised: float
) -> None:
    idp.advertised_expires_in = advertised
    body = token(idp, pki).json()
    assert body["expires_in"] == advertised
    assert idp.is_valid(body["access_token"])  # the real lifetime is still access_token_ttl
