"""The demo IdP and API, over real HTTPS on 127.0.0.1."""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import secrets
import ssl
import stat
import threading
import time
from collections.abc import Iterator
from http.client import HTTPSConnection
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote_plus, urlencode, urlsplit

import pytest
import requests
from requests_oauthlib import OAuth2Session
from support.user_agent import UserAgentError, approve_device, sign_in

from proxy_addon.demo.api import ApiServer
from proxy_addon.demo.certs import Pki, make_pki
from proxy_addon.demo.idp import DEVICE_CODE_GRANT, AuthServer
from proxy_addon.demo.idp_protocol import redirect_uri_matches
from proxy_addon.demo.server import BackgroundServer, Request, Response

CLIENT, SECRET = "demo-client", "s3cret"
USER, PASSWORD = "alice", "correct horse battery"
CLI = "cli-app"  # a public client: a native app with a loopback redirect URI (RFC 8252)
CALLBACK = "http://127.0.0.1:8400/callback"
WEB, WEB_SECRET, WEB_CALLBACK = "web-app", "web-s3cret", "https://app.example.test/cb"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def idp(pki: Pki) -> Iterator[AuthServer]:
    with AuthServer(pki) as server:
        server.add_client(CLIENT, SECRET)
        server.add_client("other-client", "other-secret")
        server.add_client(CLI, redirect_uris=[CALLBACK])
        server.add_client(WEB, WEB_SECRET, redirect_uris=[WEB_CALLBACK])
        server.add_user(USER, PASSWORD)
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


@pytest.fixture
def ca(pki: Pki) -> str:
    return str(pki.ca_cert)


def pkce() -> tuple[str, str]:
    """(code_verifier, S256 code_challenge), RFC 7636 §4.1 and §4.2."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def authorization_url(idp: AuthServer, challenge: str | None, **params: str | None) -> str:
    """An authorization request of the public CLI client; a None param is left out."""
    base: dict[str, str | None] = {
        "response_type": "code", "client_id": CLI, "redirect_uri": CALLBACK, "scope": "read",
        "state": "state-1", "code_challenge": challenge, "code_challenge_method": "S256",
    }  # fmt: skip
    merged = {k: v for k, v in {**base, **params}.items() if v is not None}
    return f"{idp.authorize_url}?{urlencode(merged)}"


def query(location: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(location).query))


def code_for(idp: AuthServer, ca: str, challenge: str | None, **params: str | None) -> str:
    location = sign_in(
        authorization_url(idp, challenge, **params), username=USER, password=PASSWORD, ca=ca,
        follow_redirect=False,
    )  # fmt: skip
    return query(location)["code"]


def redeem(
    http: requests.Session, idp: AuthServer, code: str, verifier: str | None, **form: str | None
) -> requests.Response:
    """The CLI client's token request for `code`; keyword arguments override the form."""
    body = {"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK,
            "client_id": CLI, "code_verifier": verifier, **form}  # fmt: skip
    data = {k: v for k, v in body.items() if v is not None}
    return post_token(http, idp, auth=None, **data)


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
        ({"grant_type": "urn:example:unknown"}, "basic", 400, "unsupported_grant_type"),
        ({"grant_type": "password", "username": "alice"}, "basic", 400, "invalid_request"),
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
    assert http.post(idp.url + "/nowhere", timeout=5).status_code == 404
    # The authorization endpoint takes its request by POST too (RFC 6749 §3.1).
    asked = http.post(idp.authorize_url, data={"client_id": "nobody"}, timeout=5)
    assert (asked.status_code, "unknown client" in asked.text) == (400, True)
    assert http.delete(idp.authorize_url, timeout=5).headers["Allow"] == "GET, HEAD, POST"
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


# Interactive sign-in: the authorization endpoint and the code grant (RFC 6749 §4.1, RFC 7636).


class Listener(BackgroundServer):
    """A CLI's one-shot loopback redirect listener, as far as the browser can tell."""

    def __init__(self) -> None:
        super().__init__(None, "127.0.0.1", 0)
        self.paths: list[str] = []

    def handle(self, request: Request) -> Response:
        self.paths.append(request.path)
        return Response(200, b"You may close this window.", {"Content-Type": "text/plain"})


def test_code_flow_with_pkce_through_requests_oauthlib(
    idp: AuthServer, ca: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # oauthlib insists on https for the authorization response; ours is loopback http, which
    # RFC 8252 §7.3 allows (the redirect never leaves the machine).
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    with Listener() as listener:
        # The app's listener got whatever port was free: not the registered one (§7.3).
        redirect_uri = f"http://127.0.0.1:{listener.port}/callback"
        oauth = OAuth2Session(CLI, redirect_uri=redirect_uri, scope=["read", "write"], pkce="S256")
        oauth.trust_env = False
        url, state = oauth.authorization_url(idp.authorize_url)
        assert query(url)["code_challenge_method"] == "S256"
        location = sign_in(url, username=USER, password=PASSWORD, ca=ca)
        assert [urlsplit(location)._replace(scheme="", netloc="").geturl()] == listener.paths
    assert location.startswith(redirect_uri + "?")
    answer = query(location)
    assert (answer["state"], answer["iss"]) == (state, idp.url)
    token = oauth.fetch_token(
        idp.token_url, authorization_response=location, include_client_id=True, verify=ca,
        timeout=5,
    )  # fmt: skip
    assert idp.is_valid(token["access_token"])
    assert idp.subject_of(token["access_token"]) == USER
    assert token["scope"] == ["read", "write"]
    assert token["expires_in"] == 3600
    [entry] = idp.requests_log
    assert (entry["grant_type"], entry["client_id"], entry["redirect_uri"]) == (
        "authorization_code", CLI, redirect_uri,
    )  # fmt: skip
    assert "code" not in entry and "code_verifier" not in entry
    # Only our servers' logs: urllib3 and requests-oauthlib log whole URLs at DEBUG.
    ours = " ".join(r.getMessage() for r in caplog.records if r.name.startswith("proxy_addon"))
    assert "GET /callback" in ours
    for text in (repr(idp.requests_log), ours):
        assert answer["code"] not in text and PASSWORD not in text


def test_code_refresh_token_rotates_for_a_public_client(
    idp: AuthServer, http: requests.Session, ca: str
) -> None:
    verifier, challenge = pkce()
    first = redeem(http, idp, code_for(idp, ca, challenge), verifier).json()
    renewed = post_token(
        http, idp, auth=None, grant_type="refresh_token", client_id=CLI,
        refresh_token=first["refresh_token"],
    )  # fmt: skip
    assert renewed.status_code == 200, renewed.text
    assert renewed.json()["refresh_token"] != first["refresh_token"]
    assert idp.subject_of(renewed.json()["access_token"]) == USER
    reuse = post_token(
        http, idp, auth=None, grant_type="refresh_token", client_id=CLI,
        refresh_token=first["refresh_token"],
    )  # fmt: skip
    assert reuse.json()["error"] == "invalid_grant"
    assert not idp.is_valid(renewed.json()["access_token"])


def test_the_verifier_must_match_the_challenge(
    idp: AuthServer, http: requests.Session, ca: str
) -> None:
    verifier, challenge = pkce()
    code = code_for(idp, ca, challenge)
    wrong = redeem(http, idp, code, pkce()[0])
    assert (wrong.status_code, wrong.json()["error"]) == (400, "invalid_grant")
    assert redeem(http, idp, code, None).json()["error"] == "invalid_grant"
    assert redeem(http, idp, code, "too-short").json()["error"] == "invalid_request"
    # The failed attempts did not use the code up.
    assert redeem(http, idp, code, verifier).status_code == 200


def test_a_reused_code_is_refused_and_revokes_what_it_bought(
    idp: AuthServer, http: requests.Session, ca: str
) -> None:
    verifier, challenge = pkce()
    code = code_for(idp, ca, challenge)
    tokens = redeem(http, idp, code, verifier).json()
    assert idp.is_valid(tokens["access_token"])
    again = redeem(http, idp, code, verifier)
    assert (again.status_code, again.json()["error"]) == (400, "invalid_grant")
    assert not idp.is_valid(tokens["access_token"])
    renewed = post_token(
        http, idp, auth=None, grant_type="refresh_token", client_id=CLI,
        refresh_token=tokens["refresh_token"],
    )  # fmt: skip
    assert renewed.json()["error"] == "invalid_grant"


def test_a_code_is_bound_to_client_redirect_uri_and_lifetime(
    idp: AuthServer, http: requests.Session, ca: str
) -> None:
    verifier, challenge = pkce()
    code = code_for(idp, ca, challenge)
    stolen = post_token(
        http, idp, grant_type="authorization_code", code=code, redirect_uri=CALLBACK,
        code_verifier=verifier,
    )  # fmt: skip
    assert stolen.json()["error"] == "invalid_grant"
    other_port = redeem(http, idp, code, verifier, redirect_uri="http://127.0.0.1:9/callback")
    assert other_port.json()["error"] == "invalid_grant"
    no_uri = redeem(http, idp, code, verifier, redirect_uri=None)
    assert no_uri.json()["error"] == "invalid_grant"
    idp.code_ttl = 0
    stale = code_for(idp, ca, challenge)
    assert redeem(http, idp, stale, verifier).json()["error"] == "invalid_grant"
    assert redeem(http, idp, code, verifier).status_code == 200


def test_confidential_client_code_flow_and_pkce_downgrade(
    idp: AuthServer, http: requests.Session, ca: str
) -> None:
    def code() -> str:
        return code_for(idp, ca, None, client_id=WEB, redirect_uri=None, code_challenge_method=None)

    form = {"grant_type": "authorization_code", "redirect_uri": WEB_CALLBACK}
    # Without PKCE, the secret binds the code; no redirect_uri was sent, so none is required.
    ok = post_token(http, idp, auth=(WEB, WEB_SECRET), grant_type="authorization_code", code=code())
    assert ok.status_code == 200, ok.text
    assert "refresh_token" in ok.json()
    with_uri = post_token(http, idp, auth=(WEB, WEB_SECRET), code=code(), **form)
    assert with_uri.status_code == 200, with_uri.text
    downgrade = post_token(
        http, idp, auth=(WEB, WEB_SECRET), code=code(), code_verifier=pkce()[0], **form
    )
    assert downgrade.json()["error"] == "invalid_grant"
    # The confidential client must authenticate: its client_id alone is not enough.
    unauthenticated = post_token(http, idp, auth=None, code=code(), client_id=WEB, **form)
    assert (unauthenticated.status_code, unauthenticated.json()["error"]) == (401, "invalid_client")


def test_state_is_echoed_and_pages_escape_it(
    idp: AuthServer, http: requests.Session, ca: str
) -> None:
    hostile = '"><script>alert(1)</script> & é'
    _, challenge = pkce()
    url = authorization_url(idp, challenge, state=hostile, scope="read <b>")
    page = http.get(url, timeout=5)
    assert page.status_code == 200
    assert "<script>alert" not in page.text and "<b>" not in page.text
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert page.headers["Cache-Control"] == "no-store"
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    location = sign_in(url, username=USER, password=PASSWORD, ca=ca, follow_redirect=False)
    assert query(location)["state"] == hostile


def test_deny_redirects_access_denied(idp: AuthServer, ca: str) -> None:
    _, challenge = pkce()
    location = sign_in(
        authorization_url(idp, challenge), username=USER, password="", approve=False, ca=ca,
        follow_redirect=False,
    )  # fmt: skip
    answer = query(location)
    assert location.startswith(CALLBACK + "?")
    assert (answer["error"], answer["state"]) == ("access_denied", "state-1")
    assert "code" not in answer


def test_wrong_password_shows_the_form_again(
    idp: AuthServer, http: requests.Session, ca: str
) -> None:
    _, challenge = pkce()
    url = authorization_url(idp, challenge)
    with pytest.raises(UserAgentError, match="wrong username or password") as raised:
        sign_in(url, username=USER, password="guess", ca=ca)
    assert raised.value.status == 200
    fields = dict(parse_qsl(urlsplit(url).query))
    answer = http.post(
        idp.authorize_url,
        data={**fields, "username": USER, "password": "guess", "decision": "approve"},
        allow_redirects=False,
        timeout=5,
    )
    assert answer.status_code == 200
    assert "Location" not in answer.headers
    assert "wrong username or password" in answer.text
    assert '<form method="post" action="/authorize">' in answer.text
    assert "guess" not in answer.text
    # The request itself by POST, not yet answered: the form, as for GET.
    posted = http.post(idp.authorize_url, data=fields, allow_redirects=False, timeout=5)
    assert (posted.status_code, 'name="password"' in posted.text) == (200, True)
    with pytest.raises(UserAgentError, match="wrong username or password"):
        sign_in(url, username="mallory", password=PASSWORD, ca=ca)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"redirect_uri": "https://evil.example.test/callback"}, "not registered"),
        ({"redirect_uri": "http://127.0.0.1:8400/other"}, "not registered"),
        ({"redirect_uri": "http://localhost:8400/callback"}, "not registered"),
        ({"client_id": "nobody"}, "unknown client"),
        ({"client_id": None}, "client_id is missing"),
    ],
)
def test_untrusted_client_or_redirect_uri_gets_a_page_not_a_redirect(
    idp: AuthServer, http: requests.Session, ca: str, params: dict[str, str | None], message: str
) -> None:
    url = authorization_url(idp, pkce()[1], **params)
    page = http.get(url, allow_redirects=False, timeout=5)
    assert page.status_code == 400
    assert "Location" not in page.headers
    assert message in page.text
    with pytest.raises(UserAgentError, match=message) as raised:
        sign_in(url, username=USER, password=PASSWORD, ca=ca)
    assert raised.value.status == 400


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"code_challenge": None, "code_challenge_method": None}, "invalid_request"),
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge_method": None}, "invalid_request"),  # means plain (RFC 7636 §4.3)
        ({"code_challenge": "short"}, "invalid_request"),
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"response_type": None}, "invalid_request"),
    ],
)
def test_other_authorization_errors_go_back_to_the_client(
    idp: AuthServer, http: requests.Session, params: dict[str, str | None], error: str
) -> None:
    answer = http.get(authorization_url(idp, pkce()[1], **params), allow_redirects=False, timeout=5)
    assert answer.status_code == 302
    location = answer.headers["Location"]
    assert location.startswith(CALLBACK + "?")
    assert (query(location)["error"], query(location)["state"]) == (error, "state-1")


@pytest.mark.parametrize(
    ("registered", "requested", "matches"),
    [
        ("http://127.0.0.1:8400/callback", "http://127.0.0.1:8400/callback", True),
        ("http://127.0.0.1:8400/callback", "http://127.0.0.1:51004/callback", True),
        ("http://127.0.0.1/callback", "http://127.0.0.1:51004/callback", True),
        ("http://[::1]:8400/cb", "http://[::1]:9/cb", True),
        ("http://localhost:8400/cb", "http://localhost:9/cb", True),
        ("http://127.0.0.1:8400/callback", "http://127.0.0.1:9/callback?x=1", False),
        ("http://127.0.0.1:8400/callback", "http://127.0.0.1:9/Callback", False),
        ("http://127.0.0.1:8400/callback", "http://localhost:9/callback", False),
        ("http://127.0.0.1:8400/callback", "https://127.0.0.1:9/callback", False),
        ("http://127.0.0.1:8400/callback", "http://127.0.0.1:x/callback", False),
        ("http://127.0.0.1:8400/callback", "http://u@127.0.0.1:9/callback", False),
        ("http://127.0.0.1:8400/callback", "http://127.0.0.1:9/callback#f", False),
        ("https://app.example.test/cb", "https://app.example.test:8443/cb", False),
        ("com.example.app:/oauth2redirect", "com.example.app:/oauth2redirect", True),
    ],
)
def test_redirect_uri_matching(registered: str, requested: str, matches: bool) -> None:
    assert redirect_uri_matches(requested, registered) is matches


def test_registration_refuses_bad_redirect_uris(idp: AuthServer) -> None:
    for bad in ("/relative", "https://app.example.test/cb#frag", "https:///nohost"):
        with pytest.raises(ValueError, match="redirect URI"):
            idp.add_client("bad", redirect_uris=[bad])


def test_public_client_rules(idp: AuthServer, http: requests.Session) -> None:
    refused = post_token(http, idp, auth=None, grant_type="client_credentials", client_id=CLI)
    assert (refused.status_code, refused.json()["error"]) == (400, "unauthorized_client")
    # A public client has no secret, so Basic credentials (even an empty secret) are wrong.
    basic_auth = post_token(http, idp, auth=(CLI, ""), grant_type="client_credentials")
    assert (basic_auth.status_code, basic_auth.json()["error"]) == (401, "invalid_client")
    confidential = post_token(http, idp, auth=None, grant_type="password", client_id=CLIENT,
                              username=USER, password=PASSWORD)  # fmt: skip
    assert (confidential.status_code, confidential.json()["error"]) == (401, "invalid_client")


# The password grant (RFC 6749 §4.3).


def test_password_grant(idp: AuthServer, http: requests.Session) -> None:
    ok = post_token(
        http, idp, grant_type="password", username=USER, password=PASSWORD, scope="read read"
    )
    assert ok.status_code == 200, ok.text
    body = ok.json()
    assert (body["scope"], body["expires_in"]) == ("read", 3600)
    assert idp.subject_of(body["access_token"]) == USER
    assert refresh(http, idp, body["refresh_token"]).status_code == 200
    public = post_token(http, idp, auth=None, grant_type="password", client_id=CLI,
                        username=USER, password=PASSWORD)  # fmt: skip
    assert public.status_code == 200, public.text
    for username, password in ((USER, "guess"), ("mallory", PASSWORD)):
        wrong = post_token(http, idp, grant_type="password", username=username, password=password)
        assert (wrong.status_code, wrong.json()["error"]) == (400, "invalid_grant")
    assert PASSWORD not in repr(idp.requests_log)
    assert idp.requests_log[0]["username"] == USER
    assert idp.grant_counts == {"password": 4, "refresh_token": 1}


# The device authorization grant (RFC 8628).


def device_authorization(
    http: requests.Session, idp: AuthServer, client_id: str = CLI, **form: str
) -> dict[str, Any]:
    response = http.post(
        idp.device_authorization_url, data={"client_id": client_id, **form}, timeout=5
    )
    assert response.status_code == 200, response.text
    assert response.headers["Cache-Control"] == "no-store"
    return response.json()


def poll(
    http: requests.Session, idp: AuthServer, device_code: str, client_id: str = CLI
) -> requests.Response:
    return post_token(http, idp, auth=None, grant_type=DEVICE_CODE_GRANT,
                      device_code=device_code, client_id=client_id)  # fmt: skip


def error_of(response: requests.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]


def test_device_flow_pending_slow_down_approve_token(
    idp: AuthServer, http: requests.Session, ca: str
) -> None:
    grant = device_authorization(http, idp, scope="read")
    assert re.fullmatch(r"[BCDFGHJKLMNPQRSTVWXZ]{4}-[BCDFGHJKLMNPQRSTVWXZ]{4}", grant["user_code"])
    assert grant["verification_uri"] == idp.device_url == idp.url + "/device"
    assert grant["verification_uri_complete"] == f"{idp.device_url}?user_code={grant['user_code']}"
    assert (grant["expires_in"], grant["interval"]) == (600, 5)
    device_code = grant["device_code"]
    assert error_of(poll(http, idp, device_code)) == (400, "authorization_pending")
    # Back to back, well within the 5 s interval: too fast, and again (now within 10 s).
    assert error_of(poll(http, idp, device_code)) == (400, "slow_down")
    assert error_of(poll(http, idp, device_code)) == (400, "slow_down")
    page = approve_device(
        grant["verification_uri_complete"], username=USER, password=PASSWORD, ca=ca
    )
    assert "Device approved" in page
    # Answered: the token comes at once, however soon after the last poll.
    token = poll(http, idp, device_code)
    assert token.status_code == 200, token.text
    body = token.json()
    assert (body["scope"], body["token_type"]) == ("read", "Bearer")
    assert idp.is_valid(body["access_token"]) and body["refresh_token"]
    assert idp.subject_of(body["access_token"]) == USER
    # A device code is single-use; coming back, it takes its tokens along.
    assert error_of(poll(http, idp, device_code)) == (400, "invalid_grant")
    assert not idp.is_valid(body["access_token"])
    assert device_code not in repr(idp.requests_log)
    assert idp.grant_counts == {DEVICE_CODE_GRANT: 5}


def test_device_polling_at_the_interval_is_not_too_fast(
    idp: AuthServer, http: requests.Session
) -> None:
    idp.device_interval = 0.2
    grant = device_authorization(http, idp)
    assert grant["interval"] == 0.2
    assert error_of(poll(http, idp, grant["device_code"]))[1] == "authorization_pending"
    # The rule under test is about elapsed time, so time has to pass: there is nothing to
    # synchronise with, only a deadline to get past.
    deadline = time.monotonic() + 0.25
    while time.monotonic() < deadline:
        threading.Event().wait(deadline - time.monotonic())
    assert error_of(poll(http, idp, grant["device_code"]))[1] == "authorization_pending"


def test_device_flow_denied(idp: AuthServer, http: requests.Session, ca: str) -> None:
    grant = device_authorization(http, idp)
    page = approve_device(
        grant["verification_uri_complete"], username=USER, password="", approve=False, ca=ca
    )
    assert "Device denied" in page
    assert error_of(poll(http, idp, grant["device_code"])) == (400, "access_denied")
    with pytest.raises(UserAgentError, match="already used") as raised:
        approve_device(grant["verification_uri_complete"], username=USER, password=PASSWORD, ca=ca)
    assert raised.value.status == 400


def test_device_code_expires(idp: AuthServer, http: requests.Session, ca: str) -> None:
    idp.device_code_ttl = 0  # expired the moment it is issued: no waiting needed
    grant = device_authorization(http, idp)
    assert grant["expires_in"] == 0
    assert error_of(poll(http, idp, grant["device_code"])) == (400, "expired_token")
    with pytest.raises(UserAgentError, match="unknown or expired code") as raised:
        approve_device(grant["verification_uri_complete"], username=USER, password=PASSWORD, ca=ca)
    assert raised.value.status == 400


def test_device_verification_page_details(idp: AuthServer, http: requests.Session, ca: str) -> None:
    grant = device_authorization(http, idp)
    form = http.get(grant["verification_uri_complete"], timeout=5)
    assert f'value="{grant["user_code"]}"' in form.text
    assert 'name="decision" value="approve"' in form.text
    with pytest.raises(UserAgentError, match="wrong username or password"):
        approve_device(grant["verification_uri_complete"], username=USER, password="no", ca=ca)
    # A person types the code as they like: lower case, no dash.
    typed = grant["user_code"].replace("-", " ").lower()
    answer = http.post(idp.device_url, data={"user_code": typed, "username": USER,
                                             "password": PASSWORD, "decision": "approve"},
                       timeout=5)  # fmt: skip
    assert (answer.status_code, "Device approved" in answer.text) == (200, True)
    unknown = http.post(idp.device_url, data={"user_code": "BCDF-GHJK", "decision": "deny"},
                        timeout=5)  # fmt: skip
    assert (unknown.status_code, "unknown or expired code" in unknown.text) == (400, True)


def test_device_code_is_bound_to_its_client(idp: AuthServer, http: requests.Session) -> None:
    grant = device_authorization(http, idp)
    stolen = post_token(http, idp, grant_type=DEVICE_CODE_GRANT, device_code=grant["device_code"])
    assert error_of(stolen) == (400, "invalid_grant")
    missing = post_token(http, idp, auth=None, grant_type=DEVICE_CODE_GRANT, client_id=CLI)
    assert error_of(missing) == (400, "invalid_request")
    # A confidential client authenticates at the device authorization endpoint too.
    refused = http.post(idp.device_authorization_url, data={"client_id": CLIENT}, timeout=5)
    assert (refused.status_code, refused.json()["error"]) == (401, "invalid_client")
    basic = http.post(idp.device_authorization_url, auth=(CLIENT, SECRET), timeout=5,
                      data={"scope": "a"})  # fmt: skip
    assert basic.status_code == 200, basic.text
    theirs = basic.json()["device_code"]
    assert error_of(poll(http, idp, theirs)) == (400, "invalid_grant")  # as the public client
    assert error_of(poll(http, idp, theirs, client_id=CLIENT)) == (401, "invalid_client")
    authenticated = post_token(http, idp, grant_type=DEVICE_CODE_GRANT, device_code=theirs)
    assert error_of(authenticated) == (400, "authorization_pending")


# Discovery (RFC 8414, OpenID Connect Discovery) and revocation (RFC 7009).


@pytest.mark.parametrize("document", ["openid-configuration", "oauth-authorization-server"])
def test_discovery_documents(idp: AuthServer, http: requests.Session, document: str) -> None:
    response = http.get(f"{idp.url}/.well-known/{document}", timeout=5)
    assert response.status_code == 200
    meta = response.json()
    assert meta["issuer"] == idp.url
    assert meta["authorization_endpoint"] == idp.url + "/authorize"
    assert meta["token_endpoint"] == idp.token_url
    assert meta["device_authorization_endpoint"] == idp.url + "/device_authorization"
    assert meta["revocation_endpoint"] == idp.url + "/revoke"
    assert set(meta["grant_types_supported"]) == {
        "authorization_code", "refresh_token", "client_credentials", "password",
        DEVICE_CODE_GRANT, "urn:ietf:params:oauth:grant-type:jwt-bearer",
    }  # fmt: skip
    assert meta["response_types_supported"] == ["code"]
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert meta["token_endpoint_auth_methods_supported"] == [
        "client_secret_basic", "client_secret_post", "none", "private_key_jwt",
        "client_secret_jwt", "tls_client_auth", "self_signed_tls_client_auth",
    ]  # fmt: skip
    assert http.post(response.url, timeout=5).status_code == 405
    assert idp.discovery_requests == 1
    assert idp.token_requests == 0


def revoke(
    http: requests.Session, idp: AuthServer, token: str, auth: Any = (CLIENT, SECRET), **form: str
) -> requests.Response:
    return http.post(idp.revocation_url, data={"token": token, **form}, auth=auth, timeout=5)


def test_revoking_a_refresh_token_revokes_its_grant(
    idp: AuthServer, http: requests.Session
) -> None:
    seed = idp.issue_refresh_token(CLIENT)
    tokens = refresh(http, idp, seed).json()
    answer = revoke(http, idp, tokens["refresh_token"], token_type_hint="refresh_token")
    assert (answer.status_code, answer.content) == (200, b"")
    assert not idp.is_valid(tokens["access_token"])
    assert refresh(http, idp, tokens["refresh_token"]).json()["error"] == "invalid_grant"
    assert idp.revocations == 1


def test_revoking_an_access_token_spares_the_refresh_token(
    idp: AuthServer, http: requests.Session
) -> None:
    seed = idp.issue_refresh_token(CLIENT)
    tokens = refresh(http, idp, seed).json()
    # A wrong hint does not hide the token (RFC 7009 §2.1).
    assert revoke(http, idp, tokens["access_token"], token_type_hint="refresh_token").ok
    assert not idp.is_valid(tokens["access_token"])
    renewed = refresh(http, idp, tokens["refresh_token"])
    assert renewed.status_code == 200
    assert idp.is_valid(renewed.json()["access_token"])


def test_revocation_errors_and_counter(idp: AuthServer, http: requests.Session) -> None:
    assert revoke(http, idp, "never-issued").status_code == 200  # §2.2: not an error
    mine = post_token(http, idp, grant_type="client_credentials").json()["access_token"]
    other = revoke(http, idp, mine, auth=("other-client", "other-secret"))
    assert error_of(other) == (400, "unauthorized_client")
    assert idp.is_valid(mine)
    assert error_of(revoke(http, idp, mine, auth=None)) == (401, "invalid_client")
    assert error_of(revoke(http, idp, "", auth=(CLIENT, SECRET))) == (400, "invalid_request")
    public = http.post(idp.revocation_url, data={"token": "x", "client_id": CLI}, timeout=5)
    assert public.status_code == 200
    assert idp.revocations == 2
    assert idp.token_requests == 1  # revocations are not token requests
    idp.reset_counters()
    assert idp.revocations == idp.discovery_requests == 0
