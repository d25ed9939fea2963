"""The proxy end to end: a real `authproxy run`, the local IdP and API over real TLS, and real
clients (Python requests, curl) sending through it."""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import requests
from harness import CLIENT_ID, CLIENT_SECRET, Proxy, cc_credential, route, secrets_in

from proxy_addon.demo.api import ApiServer
from proxy_addon.demo.certs import Pki
from proxy_addon.demo.idp import AuthServer
from proxy_addon.tokens import fingerprint

FAST_RETRY = {"retry_attempts": 2, "backoff_initial": 0.05, "backoff_max": 0.2}


def issued_tokens(idp: AuthServer, api: ApiServer) -> set[str]:
    return {e["token_fp"] for e in api.requests_log if e["token_fp"]}


def basic_config(idp: AuthServer, api: ApiServer, **cred: object) -> dict:
    return {
        "credentials": {"api": cc_credential(idp.token_url, **cred)},
        "routes": [route("api.example.test", api.port)],
    }


# --- injection and routing -----------------------------------------------------------------------


def test_injects_token_on_matching_route_with_requests_and_curl(start_proxy, idp, api) -> None:
    proxy = start_proxy(basic_config(idp, api, scopes=["read", "write"], params={"audience": "x"}))
    url = f"https://api.example.test:{api.port}/v1/items?q=1"

    r = proxy.session().get(url, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["path"] == "/v1/items?q=1"

    c = proxy.curl(url)
    assert c.returncode == 0, c.stderr
    assert json.loads(c.stdout)["ok"] is True

    assert idp.token_requests == 1  # cached across both clients
    entry = idp.requests_log[0]
    assert (entry["grant_type"], entry["scope"], entry["audience"]) == (
        "client_credentials", "read write", "x",
    )  # fmt: skip
    assert [e["authorized"] for e in api.requests_log] == [True, True]


def test_post_client_auth(start_proxy, idp, api) -> None:
    proxy = start_proxy(basic_config(idp, api, client_auth="post"))
    r = proxy.session().get(f"https://api.example.test:{api.port}/", timeout=30)
    assert r.status_code == 200
    assert idp.requests_log[0]["client_id"] == CLIENT_ID


def test_no_injection_and_tls_untouched_for_other_hosts(start_proxy, idp, api, pki) -> None:
    proxy = start_proxy(
        {"credentials": {"api": cc_credential(idp.token_url)},
         "routes": [route("*.example.test", api.port)]}
    )  # fmt: skip
    for host in ("other.test", "evil-example.test", "example.test.evil.test", "example.test"):
        # Passed through: the client sees the API's own certificate, not one from the proxy's CA.
        c = proxy.curl(f"https://{host}:{api.port}/x", ca=pki.ca_cert)
        assert c.returncode == 0, (host, c.stderr)
        assert json.loads(c.stdout) == {"error": "invalid_token"}
        intercepted = proxy.curl(f"https://{host}:{api.port}/x")  # trusting only the proxy CA
        assert intercepted.returncode != 0, host
    assert not any(e["authorized"] for e in api.requests_log)
    assert idp.token_requests == 0
    # While a wildcard-matched host is intercepted and authenticated.
    c = proxy.curl(f"https://a.b.example.test:{api.port}/x")
    assert c.returncode == 0 and json.loads(c.stdout)["ok"] is True


def test_decision_uses_connect_target_not_host_header(start_proxy, idp, api, pki) -> None:
    proxy = start_proxy(basic_config(idp, api))
    # CONNECT to an unrouted host, claiming the routed one in Host: no token, TLS passed through.
    c = proxy.curl(
        f"https://other.test:{api.port}/x", "-H", f"Host: api.example.test:{api.port}",
        ca=pki.ca_cert,
    )  # fmt: skip
    assert c.returncode == 0, c.stderr
    assert json.loads(c.stdout) == {"error": "invalid_token"}
    # CONNECT to the routed host naming another in Host (domain fronting through a shared
    # front end): refused, since that front end would route by Host.
    c = proxy.curl(f"https://api.example.test:{api.port}/y", "-H", "Host: other.test")
    assert json.loads(c.stdout)["error"] == "misdirected_request"
    # The same with the TLS server name (SNI) naming another host, and Host the routed one.
    c = proxy.curl(
        "--connect-to", f"other.test:{api.port}:api.example.test:{api.port}",
        f"https://other.test:{api.port}/z", "-H", f"Host: api.example.test:{api.port}",
    )  # fmt: skip
    assert json.loads(c.stdout)["error"] == "misdirected_request", c.stdout + c.stderr
    assert "TLS server name" in json.loads(c.stdout)["message"]
    assert [e["authorized"] for e in api.requests_log] == [False]


# --- refresh, retry ------------------------------------------------------------------------------


def test_proactive_refresh_across_expiry(start_proxy, idp, api) -> None:
    idp.access_token_ttl = 2  # leeway is capped at half the lifetime: refresh after ~1 s
    proxy = start_proxy(basic_config(idp, api))
    s = proxy.session()
    url = f"https://api.example.test:{api.port}/"
    statuses = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        statuses.append(s.get(url, timeout=30).status_code)
        # The refresh runs in the background: a new token reaches the API on a later request.
        if idp.token_requests >= 3 and len(issued_tokens(idp, api)) >= 3:
            break
    assert idp.token_requests >= 3, "no proactive refresh happened"
    assert set(statuses) == {200}  # never a 401: each token was replaced before it expired
    assert len(issued_tokens(idp, api)) >= 3


def test_401_refreshes_once_and_resends_post_body(start_proxy, idp, api) -> None:
    proxy = start_proxy(basic_config(idp, api))
    s = proxy.session()
    url = f"https://api.example.test:{api.port}/v1/upload"
    assert s.get(url, timeout=30).status_code == 200
    idp.expire_access_tokens()  # the API now rejects the cached token; the proxy can't know
    body = os.urandom(50_000)
    r = s.post(url, data=body, headers={"Content-Type": "application/octet-stream"}, timeout=30)
    assert r.status_code == 200, r.text
    import hashlib

    assert r.json()["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert r.json()["method"] == "POST"
    log = api.requests_log
    assert [(e["method"], e["status"]) for e in log] == [("GET", 200), ("POST", 401), ("POST", 200)]
    assert log[1]["token_fp"] != log[2]["token_fp"]
    assert log[1]["body_sha256"] == log[2]["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert idp.token_requests == 2


def test_concurrent_requests_at_expired_token_make_one_idp_call(start_proxy, idp, api) -> None:
    proxy = start_proxy(basic_config(idp, api))
    url = f"https://api.example.test:{api.port}/"
    assert proxy.session().get(url, timeout=30).status_code == 200
    idp.expire_access_tokens()
    idp.reset_counters()
    idp.set_fault("slow")  # the refresh is slow, so all 50 requests are waiting on it
    idp.slow_seconds = 1.0

    def call(_: int) -> int:
        with proxy.session() as s:
            return s.get(url, timeout=60).status_code

    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        statuses = list(pool.map(call, range(50)))
    assert statuses == [200] * 50
    assert idp.token_requests == 1


def test_idp_down_gives_502_json_then_recovers(start_proxy, idp, api, pki) -> None:
    proxy = start_proxy(basic_config(idp, api, **FAST_RETRY))
    url = f"https://api.example.test:{api.port}/"
    idp.stop()
    s = proxy.session()
    r = s.get(url, timeout=30)
    assert r.status_code == 502
    assert r.headers["X-Authproxy-Error"] == "token_unavailable"
    body = r.json()
    assert body["error"] == "token_unavailable"
    assert body["credential"] == "api"
    assert body["reason"] == "idp_unreachable"
    assert api.requests_log == []  # never sent upstream without its token
    # Other traffic keeps flowing meanwhile.
    other = s.get(f"https://other.test:{api.port}/", verify=str(pki.ca_cert), timeout=30)
    assert other.status_code == 401
    idp.start()
    deadline = time.monotonic() + 15  # the backoff window is at most 0.2 s
    while time.monotonic() < deadline:
        r = s.get(url, timeout=30)
        if r.status_code == 200:
            break
        assert r.status_code == 502
    assert r.status_code == 200


@pytest.mark.parametrize(
    ("fault", "reason"),
    [("500", "idp_unavailable"), ("malformed", "idp_bad_response"),
     ("invalid_grant", "invalid_grant")],
)  # fmt: skip
def test_idp_faults_give_machine_readable_502(start_proxy, idp, api, fault, reason) -> None:
    proxy = start_proxy(basic_config(idp, api, **FAST_RETRY))
    idp.fault = fault
    r = proxy.session().get(f"https://api.example.test:{api.port}/", timeout=30)
    assert r.status_code == 502
    assert r.json()["reason"] == reason
    assert api.requests_log == []
    # Transient faults are retried (2 attempts); terminal ones are not.
    assert idp.token_requests == (1 if fault == "invalid_grant" else 2)


def test_refresh_token_grant_rotates_and_keeps_newest(start_proxy, idp, api) -> None:
    seed = idp.issue_refresh_token(CLIENT_ID, "read")
    idp.access_token_ttl = 3600
    proxy = start_proxy(
        {
            "credentials": {
                "api": {"grant": "refresh_token", "token_url": idp.token_url,
                        "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                        "refresh_token": "${SEED_RT}",
                        # revoked back to back on purpose: no rate limit on 401 refreshes
                        "reject_grace": 0},
            },
            "routes": [route("api.example.test", api.port)],
        },
        env={"SEED_RT": seed},
    )  # fmt: skip
    s = proxy.session()
    url = f"https://api.example.test:{api.port}/"
    for _ in range(3):
        assert s.get(url, timeout=30).status_code == 200
        idp.expire_access_tokens()  # each next call: 401 -> refresh with the rotated token
    assert idp.grant_counts == {"refresh_token": 3}
    assert all(e["status"] == 200 for e in idp.requests_log)  # no reuse of a rotated token


def test_static_token(start_proxy, api, idp) -> None:
    token = "static-" + "s" * 20
    proxy = start_proxy(
        {"credentials": {"api": {"grant": "static", "token": token}},
         "routes": [route("api.example.test", api.port)]}
    )  # fmt: skip
    r = proxy.session().get(f"https://api.example.test:{api.port}/", timeout=30)
    assert r.status_code == 401  # the API does not know it; not retried (cannot refresh)
    assert api.requests_log[0]["token_fp"] == fingerprint(token)
    assert len(api.requests_log) == 1


# --- secrets -------------------------------------------------------------------------------------


def test_no_secret_in_flow_files_logs_or_output(start_proxy, idp, api, tmp_path: Path) -> None:
    flows, har = tmp_path / "flows.mitm", tmp_path / "flows.har"
    proxy = start_proxy(
        basic_config(idp, api), "-w", str(flows), "--set", "flow_detail=4",
        "--set", f"hardump={har}",
    )  # fmt: skip
    s = proxy.session()
    url = f"https://api.example.test:{api.port}/v1"
    assert s.get(url, timeout=30).status_code == 200
    idp.expire_access_tokens()
    assert s.post(url, data=b"x" * 100, timeout=30).status_code == 200  # a retried flow too
    proxy.stop()
    fps = issued_tokens(idp, api)
    assert len(fps) == 2
    secrets = [CLIENT_SECRET, *_issued_access_tokens(idp)]
    data, har_data = flows.read_bytes(), har.read_bytes()
    assert data and har_data
    assert secrets_in([data, har_data, proxy.output()], secrets) == []
    assert b"<redacted:api:" in data
    assert b"<redacted:api:" in har_data
    assert "<redacted:api:" in proxy.output()  # flow_detail=4 prints request headers


def _issued_access_tokens(idp: AuthServer) -> list[str]:
    with idp._lock:  # test-only peek at the server's issued tokens
        return list(idp._access)


def test_proxy_debug_refused_while_credentials_configured(tmp_path, idp, api, pki) -> None:
    proxy = Proxy(tmp_path, {**basic_config(idp, api), "ca_certs": [str(pki.ca_cert)]})
    with pytest.raises(AssertionError, match="proxy did not start"):
        proxy.start("--set", "proxy_debug=true")
    assert "proxy_debug logs raw wire bytes" in proxy.output()


def test_token_requests_ignore_proxy_environment(start_proxy, idp, api) -> None:
    # HTTPS_PROXY pointing at a dead port must not affect the proxy's own token requests.
    proxy = start_proxy(
        basic_config(idp, api), env={"HTTPS_PROXY": "http://127.0.0.1:9", "NO_PROXY": ""}
    )
    assert proxy.session().get(f"https://api.example.test:{api.port}/", timeout=30).ok


def test_idp_certificate_is_verified(start_proxy, tmp_path, idp, api) -> None:
    proxy = start_proxy({**basic_config(idp, api, **FAST_RETRY), "ca_certs": []})
    r = proxy.session().get(f"https://api.example.test:{api.port}/", timeout=30)
    assert r.status_code == 502
    assert r.json()["reason"] == "idp_tls_error"
    assert idp.token_requests == 0


def test_sigterm_stops_cleanly(start_proxy, idp, api) -> None:
    proxy = start_proxy(basic_config(idp, api))
    assert proxy.stop() == 0


def test_mitmdump_script_mode(tmp_path: Path, idp, api, pki: Pki) -> None:
    import sys

    from harness import HOSTS

    from proxy_addon.demo.run import wait_for_proxy
    from proxy_addon.netutil import free_port

    cfg = Proxy(tmp_path, {**basic_config(idp, api), "ca_certs": [str(pki.ca_cert)],
                           "store": {"backend": "memory"}})  # fmt: skip
    port = free_port()
    mitmdump = Path(sys.executable).parent / "mitmdump"
    proc = subprocess.Popen(
        [str(mitmdump), "-q", "--listen-host", "127.0.0.1", "-p", str(port),
         "--set", f"confdir={cfg.confdir}", "-s", "proxy_addon/addon.py",
         "--set", f"authproxy_config={cfg.config_path}"],
        env={**os.environ, "PYTHONPATH": str(HOSTS)}, cwd=Path(__file__).parent.parent,
    )  # fmt: skip
    try:
        wait_for_proxy(proc, port, cfg.ca)
        r = requests.get(
            f"https://api.example.test:{api.port}/",
            proxies={"https": f"http://127.0.0.1:{port}"}, verify=str(cfg.ca), timeout=30,
        )  # fmt: skip
        assert r.status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_api_certificate_is_verified(start_proxy, idp, api, pki, tmp_path) -> None:
    # The proxy trusts the IdP's CA by a bundle of its own making, but not for this API host:
    # an API whose certificate does not verify never sees the request (or its token).
    from proxy_addon.demo.certs import make_pki

    other_ca = make_pki(tmp_path / "other-pki", ("api.example.test",))
    impostor = ApiServer(idp.is_valid, other_ca).start()
    try:
        proxy = start_proxy(basic_config(idp, impostor))
        r = proxy.session().get(f"https://api.example.test:{impostor.port}/", timeout=30)
        assert r.status_code == 502
        assert "certificate verify failed" in r.text.lower()
        assert impostor.requests_log == []
    finally:
        impostor.stop()


def test_streamed_request_body_is_not_retried(start_proxy, idp, api) -> None:
    proxy = start_proxy(basic_config(idp, api), "--set", "stream_large_bodies=1k")
    s = proxy.session()
    url = f"https://api.example.test:{api.port}/upload"
    assert s.get(url, timeout=30).status_code == 200
    idp.expire_access_tokens()
    r = s.post(url, data=b"z" * 20_000, timeout=30)
    assert r.status_code == 401  # the API's answer, passed on: the body is gone, no re-send
    assert [e["method"] for e in api.requests_log] == ["GET", "POST"]
    assert api.requests_log[1]["authorized"] is False
    assert "not retried, the request body was streamed" in proxy.output()


def test_non_loopback_listen_requires_proxy_auth(start_proxy, idp, api) -> None:
    proxy = start_proxy({**basic_config(idp, api), "proxy_auth": "ops:${PROXY_PW}"},
                        env={"PROXY_PW": "pw-" + "q" * 12})  # fmt: skip
    # start_proxy listens on 127.0.0.1; the auth requirement still applies to every client.
    url = f"https://api.example.test:{api.port}/"
    with pytest.raises(requests.exceptions.ProxyError, match="407"):
        proxy.session().get(url, timeout=30)
    s = proxy.session()
    authed = f"http://ops:pw-{'q' * 12}@127.0.0.1:{proxy.port}"
    s.proxies = {"http": authed, "https": authed}
    assert s.get(url, timeout=30).status_code == 200


@pytest.mark.parametrize(
    ("option", "message"),
    [
        # One smoke case per kind; every option is checked in-process (test_sec_options).
        ("mode=regular@0.0.0.0:0", "listening on 0.0.0.0 would let other machines use"),
        ("ssl_insecure=true", "ssl_insecure turns off certificate checks"),
    ],
)
def test_options_that_would_leak_are_refused(tmp_path, idp, api, pki, option, message) -> None:
    proxy = Proxy(tmp_path, {**basic_config(idp, api), "ca_certs": [str(pki.ca_cert)]})
    args = ["--set", option]
    if option.startswith("proxyauth"):
        args += ["--listen", f"0.0.0.0:{proxy.port}"]
    with pytest.raises(AssertionError, match="proxy did not start"):
        proxy.start(*args)
    assert message in proxy.output()
