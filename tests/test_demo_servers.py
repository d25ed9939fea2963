"""The demo IdP and API, over real HTTPS on 127.0.0.1."""

from __future__ import annotations

import base64
import hashlib
import logging
import ssl
import stat
import threading
import time
from collections.abc import Iterator
from http.client import HTTPSConnection
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest
import requests

from proxy_addon.demo.api import ApiServer
from proxy_addon.demo.certs import Pki, make_pki
from proxy_addon.demo.idp import AuthServer

CLIENT, SECRET = "demo-client", "s3cret"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def idp(pki: Pki) -> Iterator[AuthServer]:
    with AuthServer(pki) as server:
        server.add_client(CLIENT, SECRET)
        server.add_client("other-client", "other-secret")
        yield server


@pytest.fixture
def api(idp: AuthServer, pki: Pki) -> Iterator[ApiServer]:
    with ApiServer(idp.is_valid, pki) as server:
        yield server


@pytest.fixture
def http(pki: Pki) -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.trust_env = False  # never route through a proxy from the environment
        session.verify = str(pki.ca_cert)
        yield session


def post_token(
    http: requests.Session, idp: AuthServer, auth: Any = (CLIENT, SECRET), **form: str
) -> requests.Response:
    return http.post(idp.token_url, data=form, auth=auth, timeout=5)


def basic(client_id: str, secret: str) -> str:
    pair = f"{quote_plus(client_id)}:{quote_plus(secret)}"
    return "Basic " + base64.b64encode(pair.encode()).decode()


def refresh(http: requests.Session, idp: AuthServer, token: str, **form: str) -> requests.Response:
    return post_token(http, idp, grant_type="refresh_token", refresh_token=token, **form)


# Certificates.


def test_make_pki_writes_a_private_key_and_a_chain_with_wildcards(tmp_path: Path) -> None:
    pki = make_pki(tmp_path, names=("*.example.test", "127.0.0.1"))
    assert stat.S_IMODE(pki.server_key.stat().st_mode) == 0o600
    assert pki.server_cert.read_text().count("BEGIN CERTIFICATE") == 2
    context = pki.server_context()
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2


# The token endpoint.


def test_client_credentials_with_basic_auth_form_urlencodes_the_credentials(
    idp: AuthServer, http: requests.Session
) -> None:
    idp.add_client("id with:colon", "p@ss:w rd+%")
    response = http.post(
        idp.token_url,
        data={"grant_type": "client_credentials", "scope": "read write", "audience": "api"},
        headers={"Authorization": basic("id with:colon", "p@ss:w rd+%")},
        timeout=5,
    )
    assert response.status_code == 200, response.text
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Pragma"] == "no-cache"
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert body["scope"] == "read write"
    assert "refresh_token" not in body
    assert idp.is_valid(body["access_token"])
    [entry] = idp.requests_log
    assert entry["client_id"] == "id with:colon"
    assert entry["audience"] == "api"
    assert entry["status"] == 200
    assert "p@ss" not in repr(entry)


def test_client_credentials_with_post_auth(idp: AuthServer, http: requests.Session) -> None:
    response = post_token(
        http,
        idp,
        auth=None,
        grant_type="client_credentials",
        client_id=CLIENT,
        client_secret=SECRET,
        resource="https://api.test/",
    )
    assert response.status_code == 200, response.text
    assert idp.is_valid(response.json()["access_token"])
    assert "scope" not in response.json()
    assert idp.grant_counts == {"client_credentials": 1}
    assert SECRET not in repr(idp.requests_log)
    assert idp.requests_log[0]["resource"] == "https://api.test/"


@pytest.mark.parametrize("how", ["basic", "post"])
@pytest.mark.parametrize(("client_id", "secret"), [(CLIENT, "wrong"), ("nobody", SECRET)])
def test_bad_client_credentials_are_invalid_client(
    idp: AuthServer, http: requests.Session, how: str, client_id: str, secret: str
) -> None:
    form = {"grant_type": "client_credentials"}
    if how == "post":
        response = post_token(
            http, idp, auth=None, client_id=client_id, client_secret=secret, **form
        )
    else:
        response = post_token(http, idp, auth=(client_id, secret), **form)
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert response.headers["WWW-Authenticate"] == 'Basic realm="authproxy-demo"'
    assert response.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize(
    ("form", "auth", "status", "error"),
    [
        ({"grant_type": "client_credentials"}, None, 401, "invalid_client"),
        (
            {"grant_type": "client_credentials", "client_secret": SECRET},
            "basic",
            400,
            "invalid_request",
        ),
        (
            {"grant_type": "client_credentials", "client_id": "other-client"},
            "basic",
            400,
            "invalid_request",
        ),
        ({}, "basic", 400, "invalid_request"),
        ({"grant_type": "password"}, "basic", 400, "unsupported_grant_type"),
        ({"grant_type": "refresh_token"}, "basic", 400, "invalid_request"),
    ],
)
def test_malformed_token_requests(
    idp: AuthServer,
    http: requests.Session,
    form: dict[str, str],
    auth: str | None,
    status: int,
    error: str,
) -> None:
    response = post_token(http, idp, auth=(CLIENT, SECRET) if auth else None, **form)
    assert (response.status_code, response.json()["error"]) == (status, error)
    assert response.json()["error_description"]


def test_repeated_parameter_and_wrong_content_type_are_invalid_request(
    idp: AuthServer, http: requests.Session
) -> None:
    repeated = http.post(
        idp.token_url,
        data="grant_type=client_credentials&scope=a&scope=b",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        auth=(CLIENT, SECRET),
        timeout=5,
    )
    as_json = http.post(
        idp.token_url, json={"grant_type": "client_credentials"}, auth=(CLIENT, SECRET), timeout=5
    )
    assert repeated.json()["error"] == as_json.json()["error"] == "invalid_request"
    assert idp.token_requests == 2


def test_refresh_rotates_the_refresh_token(idp: AuthServer, http: requests.Session) -> None:
    seed = idp.issue_refresh_token(CLIENT, scope="read write")
    first = refresh(http, idp, seed).json()
    assert first["refresh_token"] != seed
    assert first["scope"] == "read write"
    assert idp.is_valid(first["access_token"])
    narrowed = refresh(http, idp, first["refresh_token"], scope="read")
    assert narrowed.status_code == 200, narrowed.text
    assert narrowed.json()["scope"] == "read"
    # The rotated token keeps the original scope, so widening back to it is still allowed...
    again = refresh(http, idp, narrowed.json()["refresh_token"], scope="read write")
    assert again.status_code == 200, again.text
    # ...but not beyond it.
    wider = refresh(http, idp, again.json()["refresh_token"], scope="admin")
    assert wider.json()["error"] == "invalid_scope"
    assert idp.grant_counts == {"refresh_token": 4}


def test_reusing_a_rotated_refresh_token_revokes_the_whole_family(
    idp: AuthServer, http: requests.Session
) -> None:
    unrelated = post_token(http, idp, grant_type="client_credentials").json()["access_token"]
    seed = idp.issue_refresh_token(CLIENT)
    first = refresh(http, idp, seed).json()
    second = refresh(http, idp, first["refresh_token"]).json()
    assert idp.is_valid(first["access_token"]) and idp.is_valid(second["access_token"])

    reuse = refresh(http, idp, seed)
    assert (reuse.status_code, reuse.json()["error"]) == (400, "invalid_grant")
    assert not idp.is_valid(first["access_token"])
    assert not idp.is_valid(second["access_token"])
    assert refresh(http, idp, second["refresh_token"]).json()["error"] == "invalid_grant"
    assert idp.is_valid(unrelated)


def test_refresh_token_is_bound_to_its_client(idp: AuthServer, http: requests.Session) -> None:
    seed = idp.issue_refresh_token(CLIENT)
    stolen = post_token(
        http, idp, auth=("other-client", "other-secret"), grant_type="refresh_token",
        refresh_token=seed,
    )  # fmt: skip
    assert stolen.json()["error"] == "invalid_grant"
    assert refresh(http, idp, "no-such-token").json()["error"] == "invalid_grant"
    assert refresh(http, idp, seed).status_code == 200  # not consumed by the failed attempts


def test_without_rotation_or_expires_in(pki: Pki, http: requests.Session) -> None:
    with AuthServer(pki, rotate_refresh_tokens=False, include_expires_in=False) as idp:
        idp.add_client(CLIENT, SECRET)
        seed = idp.issue_refresh_token(CLIENT)
        for _ in range(2):
            body = refresh(http, idp, seed).json()
            assert "refresh_token" not in body
            assert "expires_in" not in body
            assert idp.is_valid(body["access_token"])


def test_expire_access_tokens_and_revoke_all(idp: AuthServer, http: requests.Session) -> None:
    old = post_token(http, idp, grant_type="client_credentials").json()["access_token"]
    idp.expire_access_tokens()
    assert not idp.is_valid(old)
    seed = idp.issue_refresh_token(CLIENT)
    fresh = refresh(http, idp, seed).json()
    assert idp.is_valid(fresh["access_token"])
    idp.revoke_all()
    assert not idp.is_valid(fresh["access_token"])
    assert refresh(http, idp, fresh["refresh_token"]).json()["error"] == "invalid_grant"
    assert not idp.is_valid("never-issued")


def test_short_ttl_expires_on_the_servers_clock(pki: Pki, http: requests.Session) -> None:
    with AuthServer(pki, access_token_ttl=0) as idp:
        idp.add_client(CLIENT, SECRET)
        body = post_token(http, idp, grant_type="client_credentials").json()
        assert body["expires_in"] == 0
        assert not idp.is_valid(body["access_token"])


# Faults.


def test_fault_500(idp: AuthServer, http: requests.Session) -> None:
    idp.fault = "500"
    response = post_token(http, idp, grant_type="client_credentials")
    assert response.status_code == 500
    assert response.headers["Content-Type"] == "text/plain"
    assert idp.fault == "500"  # without fault_count it stays on
    assert idp.requests_log[0]["fault"] == "500"


def test_fault_malformed(idp: AuthServer, http: requests.Session) -> None:
    idp.fault = "malformed"
    response = post_token(http, idp, grant_type="client_credentials")
    assert response.status_code == 200
    with pytest.raises(requests.JSONDecodeError):
        response.json()


def test_fault_invalid_grant_even_for_good_requests(
    idp: AuthServer, http: requests.Session
) -> None:
    seed = idp.issue_refresh_token(CLIENT)
    idp.fault = "invalid_grant"
    response = refresh(http, idp, seed)
    assert (response.status_code, response.json()["error"]) == (400, "invalid_grant")
    idp.fault = None
    assert refresh(http, idp, seed).status_code == 200  # the faulted request consumed nothing


def test_fault_count_clears_the_fault_after_n_requests(
    idp: AuthServer, http: requests.Session
) -> None:
    idp.set_fault("500", count=2)
    statuses = [
        post_token(http, idp, grant_type="client_credentials").status_code for _ in range(3)
    ]
    assert statuses == [500, 500, 200]
    assert (idp.fault, idp.fault_count) == (None, None)


def test_unknown_fault_is_rejected(idp: AuthServer) -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        idp.fault = "teapot"


def test_fault_slow_delays_then_answers(idp: AuthServer, http: requests.Session) -> None:
    idp.fault, idp.slow_seconds = "slow", 0.3
    started = time.monotonic()
    response = post_token(http, idp, grant_type="client_credentials")
    assert time.monotonic() - started >= 0.3
    assert response.status_code == 200


def test_stop_cuts_a_slow_request_short(idp: AuthServer, http: requests.Session) -> None:
    idp.fault, idp.slow_seconds = "slow", 60
    outcome: list[BaseException | requests.Response] = []

    def call() -> None:
        try:
            outcome.append(post_token(http, idp, grant_type="client_credentials"))
        except requests.RequestException as error:
            outcome.append(error)

    caller = threading.Thread(target=call)
    caller.start()
    assert idp.wait_for_requests(1, timeout=5, arrived=True)
    assert idp.token_requests == 0  # received, not yet answered
    started = time.monotonic()
    idp.stop()
    caller.join(timeout=5)
    assert not caller.is_alive()
    assert time.monotonic() - started < 5
    assert isinstance(outcome[0], requests.ConnectionError)


# Lifecycle and observability.


def test_stop_refuses_connections_and_start_reuses_the_port(
    idp: AuthServer, http: requests.Session
) -> None:
    port = idp.port
    assert port != 0
    assert post_token(http, idp, grant_type="client_credentials").status_code == 200
    idp.stop()
    with pytest.raises(requests.ConnectionError):  # also on the pooled keep-alive connection
        post_token(http, idp, grant_type="client_credentials")
    idp.start()
    assert idp.port == port
    assert idp.token_url == f"https://127.0.0.1:{port}/token"
    assert post_token(http, idp, grant_type="client_credentials").status_code == 200


def test_wait_for_requests_and_reset_counters(idp: AuthServer, http: requests.Session) -> None:
    assert not idp.wait_for_requests(1, timeout=0.05)
    threading.Thread(target=post_token, args=(http, idp), kwargs={"grant_type": "x"}).start()
    assert idp.wait_for_requests(1, timeout=5)
    assert idp.token_requests == 1
    assert idp.grant_counts == {"x": 1}
    assert idp.requests_log[0]["status"] == 400
    idp.reset_counters()
    assert (idp.token_requests, idp.grant_counts, idp.requests_log) == (0, {}, [])


def test_token_endpoint_only_takes_post(idp: AuthServer, http: requests.Session) -> None:
    assert http.get(idp.token_url, timeout=5).status_code == 405
    assert http.post(idp.url + "/authorize", timeout=5).status_code == 404
    assert idp.token_requests == 0


# The API.


def test_api_echoes_an_authorized_request_but_never_the_token(
    idp: AuthServer, api: ApiServer, http: requests.Session, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = post_token(http, idp, grant_type="client_credentials").json()["access_token"]
    body = b"hello api"
    response = http.post(
        api.url + "/v1/items?page=2",
        data=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=5,
    )
    assert response.status_code == 200, response.text
    echo = response.json()
    fp = hashlib.sha256(token.encode()).hexdigest()[:8]
    assert echo == {
        "ok": True,
        "method": "POST",
        "path": "/v1/items?page=2",
        "host_header": f"127.0.0.1:{api.port}",
        "body_sha256": hashlib.sha256(body).hexdigest(),
        "body_length": len(body),
        "token_fp": fp,
    }
    [entry] = api.requests_log
    assert (entry["authorized"], entry["token_fp"], entry["status"]) == (True, fp, 200)
    assert "authorization" in entry["header_names"]
    for text in (response.text, repr(dict(response.headers)), repr(api.requests_log), caplog.text):
        assert token not in text


@pytest.mark.parametrize(
    ("authorization", "challenge"),
    [
        (None, 'Bearer realm="demo"'),
        ("Bearer not-a-real-token", 'Bearer error="invalid_token"'),
        ("Basic Zm9vOmJhcg==", 'Bearer realm="demo"'),
    ],
)
def test_api_rejects_missing_or_unknown_tokens(
    api: ApiServer, http: requests.Session, authorization: str | None, challenge: str
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = http.get(api.url + "/x", headers=headers, timeout=5)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == challenge
    assert response.json() == {"error": "invalid_token"}
    assert api.wait_for_requests(1, timeout=5)
    assert api.requests_log[0]["authorized"] is False


def test_api_switches_and_expired_tokens(
    idp: AuthServer, api: ApiServer, http: requests.Session
) -> None:
    token = post_token(http, idp, grant_type="client_credentials").json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}

    def call() -> requests.Response:
        return http.get(api.url + "/", headers=headers, timeout=5)

    assert call().status_code == 200
    api.insufficient_scope = True
    refused = call()
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"] == (
        'Bearer error="insufficient_scope", scope="demo.write"'
    )
    api.insufficient_scope, api.always_401 = False, True
    assert call().headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    api.always_401 = False
    assert call().status_code == 200
    idp.expire_access_tokens()
    assert call().headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert [e["status"] for e in api.requests_log] == [200, 401, 401, 200, 401]
    api.reset()
    assert api.requests_log == []


def test_api_refuses_two_authorization_headers(
    idp: AuthServer, api: ApiServer, http: requests.Session, pki: Pki
) -> None:
    token = post_token(http, idp, grant_type="client_credentials").json()["access_token"]
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    connection = HTTPSConnection("127.0.0.1", api.port, context=context, timeout=5)
    connection.putrequest("GET", "/")
    connection.putheader("Authorization", f"Bearer {token}")  # valid, yet ambiguous with two
    connection.putheader("Authorization", "Bearer second")
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 400
    assert response.getheader("WWW-Authenticate") == 'Bearer error="invalid_request"'
    connection.close()


def test_api_reads_a_chunked_body(idp: AuthServer, api: ApiServer, http: requests.Session) -> None:
    token = post_token(http, idp, grant_type="client_credentials").json()["access_token"]
    parts = [b"first part,", b"", b"second " * 1000]
    response = http.put(
        api.url + "/upload",
        data=iter([p for p in parts if p]),  # a generator body makes requests send chunks
        headers={"Authorization": f"Bearer {token}"},
        timeout=5,
    )
    assert response.request.headers["Transfer-Encoding"] == "chunked"
    echo = response.json()
    assert echo["body_sha256"] == hashlib.sha256(b"".join(parts)).hexdigest()
    assert (echo["method"], echo["body_length"]) == ("PUT", len(b"".join(parts)))


def test_api_keeps_the_connection_alive_and_takes_any_method(
    idp: AuthServer, api: ApiServer, http: requests.Session
) -> None:
    token = post_token(http, idp, grant_type="client_credentials").json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    first = http.request("PROPFIND", api.url + "/a", headers=headers, timeout=5)
    second = http.head(api.url + "/b", headers=headers, timeout=5)
    assert first.json()["method"] == "PROPFIND"
    assert second.status_code == 200 and second.content == b""
    assert first.headers.get("Connection", "").lower() != "close"
    assert [e["method"] for e in api.requests_log] == ["PROPFIND", "HEAD"]


def test_plain_http_api() -> None:
    with ApiServer(lambda token: token == "good", None) as api, requests.Session() as http:
        http.trust_env = False
        assert api.url == f"http://127.0.0.1:{api.port}"
        ok = http.get(api.url + "/p", headers={"Authorization": "Bearer good"}, timeout=5)
        bad = http.get(api.url + "/p", headers={"Authorization": "Bearer bad"}, timeout=5)
        assert (ok.status_code, bad.status_code) == (200, 401)
        assert ok.json()["token_fp"] == hashlib.sha256(b"good").hexdigest()[:8]
