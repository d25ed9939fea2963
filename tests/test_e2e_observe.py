"""Watching the proxy: the status page, metrics, the audit log and mitmproxy's web UI — none of
which may ever show a secret."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import pytest
import requests
from harness import CLIENT_SECRET, Proxy, cc_credential, route, secrets_in

from proxy_addon.demo.api import ApiServer
from proxy_addon.demo.certs import Pki
from proxy_addon.demo.idp import AuthServer
from proxy_addon.netutil import free_port


def _config(idp: AuthServer, api: ApiServer, **extra: object) -> dict:
    return {
        "credentials": {"api": cc_credential(idp.token_url, scopes=["read"])},
        "routes": [route("api.example.test", api.port)],
        **extra,
    }


def _issued(idp: AuthServer) -> list[str]:
    with idp._lock:  # test-only peek at the server's issued tokens
        return list(idp._access)


def test_status_page_json_and_metrics(start_proxy, idp, api) -> None:
    proxy = start_proxy(_config(idp, api))
    s = proxy.session()
    url = f"https://api.example.test:{api.port}/"
    assert s.get(url, timeout=30).status_code == 200
    idp.expire_access_tokens()
    assert s.get(url, timeout=30).status_code == 200  # one 401 -> refresh -> retry

    status = s.get("http://authproxy.local/status.json", timeout=30)
    assert status.status_code == 200
    body = status.json()
    (cred,) = body["credentials"]
    assert (cred["name"], cred["grant"], cred["state"], cred["scopes"]) == (
        "api", "client_credentials", "valid", ["read"],
    )  # fmt: skip
    assert 3500 < cred["expires_in"] <= 3600
    assert body["counters"]["injected"] == {"api": 3}  # two requests and one retry
    assert body["counters"]["retried"] == {"api": 1}
    assert body["counters"]["refreshed"] == {"api": 2}

    metrics = s.get("http://authproxy.local/metrics", timeout=30)
    assert metrics.headers["content-type"].startswith("text/plain")
    assert 'authproxy_injected_total{credential="api"} 3' in metrics.text
    assert 'authproxy_retried_total{credential="api"} 1' in metrics.text
    assert 'authproxy_credential_usable{credential="api",state="valid"} 1' in metrics.text

    page = s.get("http://authproxy.local/", timeout=30)
    assert 'id="credential-api"' in page.text
    all_text = [status.text, metrics.text, page.text]
    assert secrets_in(all_text, [*_issued(idp), CLIENT_SECRET]) == []
    assert len(api.requests_log) == 3  # the status page was never forwarded


def test_status_shows_failures(start_proxy, idp, api) -> None:
    proxy = start_proxy(_config(idp, api))
    idp.fault = "invalid_grant"
    s = proxy.session()
    assert s.get(f"https://api.example.test:{api.port}/", timeout=30).status_code == 502
    (cred,) = s.get("http://authproxy.local/status.json", timeout=30).json()["credentials"]
    assert cred["state"] == "needs login"
    assert "invalid_grant" in cred["last_error"]
    metrics = s.get("http://authproxy.local/metrics", timeout=30).text
    assert 'authproxy_token_failures_total{credential="api"} 1' in metrics


def test_audit_log_records_calls_without_secrets(start_proxy, idp, api, pki, tmp_path) -> None:
    audit = tmp_path / "audit" / "calls.jsonl"
    proxy = start_proxy(_config(idp, api), "--audit-log", str(audit))
    s = proxy.session()
    base = f"https://api.example.test:{api.port}"
    assert s.get(f"{base}/v1/items?user=alice&page=2", timeout=30).status_code == 200
    idp.expire_access_tokens()
    assert s.post(f"{base}/v1/items", data=b"{}", timeout=30).status_code == 200
    idp.fault = "invalid_grant"
    idp.expire_access_tokens()
    assert s.get(f"{base}/v1/other", timeout=30).status_code == 502
    assert (
        s.get(f"https://other.test:{api.port}/", verify=pki.ca_cert, timeout=30).status_code == 401
    )
    proxy.stop()

    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    # The passed-through request to other.test is no API call of ours: not in the log.
    assert [(r["method"], r["path"], r["status"]) for r in lines] == [
        ("GET", "/v1/items?user=&page=", 200),
        ("POST", "/v1/items", 200),
        ("GET", "/v1/other", 502),
    ]
    first, second, third = lines
    assert first["credential"] == "api" and first["host"] == "api.example.test"
    assert first["refreshed"] is True and first["retried"] is False
    assert second["retried"] is True and second["refreshed"] is True
    assert (third["retried"], third["error"]) == (False, "token_unavailable")
    assert all(isinstance(r["duration_ms"], float) and r["duration_ms"] >= 0 for r in lines)
    assert oct(audit.stat().st_mode & 0o777) == "0o600"
    raw = audit.read_text()
    assert "alice" not in raw
    assert secrets_in([raw], [*_issued(idp), CLIENT_SECRET]) == []


# --- mitmweb -------------------------------------------------------------------------------------


def _hold_answers(api: ApiServer) -> tuple[threading.Event, threading.Event]:
    """Make the API hold each answer: `arrived` is set when a request is in, and it answers
    once `release` is set."""
    arrived, release = threading.Event(), threading.Event()
    handle = api.handle

    def held(request):  # type: ignore[no-untyped-def]
        arrived.set()
        assert release.wait(30)
        return handle(request)

    api.handle = held  # type: ignore[method-assign]
    return arrived, release


def _start_web(tmp_path: Path, pki: Pki, config: dict) -> tuple[Proxy, int, str]:
    web_port, password = free_port(), "web-" + "p" * 20
    proxy = Proxy(tmp_path, {**config, "ca_certs": [str(pki.ca_cert)],
                             "store": {"backend": "memory"}})  # fmt: skip
    proxy.start("--web", "--set", f"web_port={web_port}", "--set", f"web_password={password}")
    return proxy, web_port, password


def test_web_ui_never_holds_a_token_even_in_flight(tmp_path, pki, idp, api) -> None:
    proxy, web_port, password = _start_web(tmp_path, pki, _config(idp, api))
    web = requests.Session()
    web.trust_env = False
    web.headers["Authorization"] = f"Bearer {password}"
    flows_url = f"http://127.0.0.1:{web_port}/flows"
    try:
        arrived, release = _hold_answers(api)  # until the test has looked at the UI
        result: list[int] = []
        t = threading.Thread(
            target=lambda: result.append(
                proxy.session()
                .get(f"https://api.example.test:{api.port}/x", timeout=60)
                .status_code
            )
        )
        t.start()
        assert arrived.wait(30)
        in_flight = web.get(flows_url, timeout=30)
        dump = web.get(flows_url + "/dump", timeout=30)
        release.set()
        t.join(60)
        assert result == [200]
        after = web.get(flows_url, timeout=30)
        after_dump = web.get(flows_url + "/dump", timeout=30)
    finally:
        release.set()
        proxy.stop()
    assert in_flight.status_code == 200 and after.status_code == 200
    tokens = [*_issued(idp), CLIENT_SECRET]
    assert len(tokens) == 2
    texts = [in_flight.content, dump.content, after.content, after_dump.content, proxy.output()]
    assert secrets_in(texts, tokens) == []
    assert "api.example.test" not in in_flight.text  # kept out of the UI while it held a token
    assert "api.example.test" in after.text  # and shown once redacted
    assert b"<redacted:api:" in after_dump.content


@pytest.mark.skipif(
    not shutil.which("chromedriver") and not os.environ.get("CI"),
    reason="needs Debian's chromium and chromium-driver (.ci/run installs them)",
)
def test_web_ui_in_headless_chromium_shows_no_token(tmp_path, pki, idp, api) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    proxy, web_port, password = _start_web(tmp_path, pki, _config(idp, api))
    options = webdriver.ChromeOptions()
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                f"--user-data-dir={tmp_path / 'chrome'}"):  # fmt: skip
        options.add_argument(arg)
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    try:
        s = proxy.session()
        url = f"https://api.example.test:{api.port}/v1/hello"
        assert s.get(url, timeout=30).status_code == 200
        idp.expire_access_tokens()
        assert s.post(url, data=b"body", timeout=30).status_code == 200  # retried flow too

        driver.get(f"http://127.0.0.1:{web_port}/?token={password}")
        WebDriverWait(driver, 30).until(lambda d: "/v1/hello" in d.page_source)
        rows = driver.find_elements(By.XPATH, "//tr[contains(., '/v1/hello')]")
        assert len(rows) >= 2, "the flow list shows fewer flows than were sent"
        rows[-1].click()  # open a flow's request details
        WebDriverWait(driver, 30).until(lambda d: "redacted:api:" in d.page_source)
        page = driver.page_source
        shot = tmp_path / "mitmweb.png"
        driver.save_screenshot(str(shot))
    finally:
        driver.quit()
        proxy.stop()
    assert secrets_in([page], [*_issued(idp), CLIENT_SECRET]) == []
    assert shot.stat().st_size > 0


def test_replay_from_the_web_ui_never_shows_a_token(tmp_path, pki, idp, api) -> None:
    proxy, web_port, password = _start_web(tmp_path, pki, _config(idp, api))
    base = f"http://127.0.0.1:{web_port}"
    web = requests.Session()
    web.trust_env = False
    web.headers["Authorization"] = f"Bearer {password}"
    release = threading.Event()
    try:
        assert proxy.session().get(f"https://api.example.test:{api.port}/x", timeout=30).ok
        (flow,) = [f for f in web.get(f"{base}/flows", timeout=30).json()
                   if f["request"]["host"] == "api.example.test"]  # fmt: skip
        xsrf = "f" * 32  # mitmweb (tornado) wants the same token in a cookie and a header
        web.cookies.set("_mitmproxy_xsrf", xsrf, domain="127.0.0.1", path="/")
        arrived, release = _hold_answers(api)
        r = web.post(f"{base}/flows/{flow['id']}/replay", headers={"X-XSRFToken": xsrf},
                     timeout=30)  # fmt: skip
        assert r.status_code == 200, r.text
        assert arrived.wait(30)
        in_flight = [web.get(f"{base}/flows", timeout=30).content,
                     web.get(f"{base}/flows/dump", timeout=30).content]  # fmt: skip
        release.set()
        assert api.wait_for_requests(2, 30)
    finally:
        release.set()
        proxy.stop()
    assert [e["authorized"] for e in api.requests_log] == [True, True]  # the replay worked
    assert secrets_in(in_flight, [*_issued(idp), CLIENT_SECRET]) == []
