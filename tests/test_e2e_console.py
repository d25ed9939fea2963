"""The operator's console in a real headless Chromium, through a real proxy: it fits 1200 px,
refreshes itself (its inline script runs under the page's CSP), and never shows a token.

Set AUTHPROXY_CONSOLE_SCREENSHOT=docs/console.png to refresh the README's screenshot."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from harness import CLIENT_SECRET, cc_credential, route, secrets_in

from proxy_addon.demo.api import ApiServer
from proxy_addon.demo.idp import AuthServer

WRONG_SECRET = "wrong-secret-" + "w" * 20
STATIC_TOKEN = "static-token-" + "t" * 20

pytestmark = pytest.mark.skipif(
    not shutil.which("chromedriver") and not os.environ.get("CI"),
    reason="needs Debian's chromium and chromium-driver (.ci/run installs them)",
)


def _config(idp: AuthServer, api: ApiServer) -> dict:
    return {
        "credentials": {
            "billing": cc_credential(idp.token_url, scopes=["billing.read", "billing.write"]),
            "partner": {**cc_credential(idp.token_url), "client_secret": WRONG_SECRET},
            "github": {"grant": "authorization_code", "authorization_url": idp.authorize_url,
                       "token_url": idp.token_url, "client_id": "public-app",
                       "scopes": ["repo", "read:org"]},
            "legacy": {"grant": "static", "token": STATIC_TOKEN},
        },
        "routes": [
            route("api.example.test", api.port, "billing", path="/billing"),
            route("other.test", api.port, "partner"),
            route("*.b.example.test", api.port, "github", existing_authorization="reject"),
            route("example.test", api.port, "legacy", path="/legacy"),
        ],
    }  # fmt: skip


def _issued(idp: AuthServer) -> list[str]:
    with idp._lock:  # test-only peek at the server's issued tokens
        return list(idp._access)


def _chromium(proxy_url: str, profile: Path):  # type: ignore[no-untyped-def]
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                "--window-size=1200,900", "--force-device-scale-factor=1",
                "--disable-features=HttpsUpgrades,HttpsFirstBalancedModeAutoEnable",
                f"--proxy-server={proxy_url}", f"--user-data-dir={profile}"):  # fmt: skip
        options.add_argument(arg)
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    return webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))


def test_console_in_headless_chromium_fits_refreshes_and_holds_no_token(
    start_proxy, idp, api, tmp_path
) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    proxy = start_proxy(_config(idp, api))
    s = proxy.session()
    base = f"https://api.example.test:{api.port}/billing"
    assert s.get(f"{base}/invoices", timeout=30).status_code == 200
    idp.expire_access_tokens()
    assert s.get(f"{base}/invoices?page=2", timeout=30).status_code == 200  # 401, refresh, retry
    assert s.get(f"https://other.test:{api.port}/", timeout=30).status_code == 502
    assert s.get(f"https://x.b.example.test:{api.port}/", timeout=30).status_code == 502
    s.get(f"https://example.test:{api.port}/legacy/report", timeout=30)

    driver = _chromium(proxy.url, tmp_path / "chrome")
    try:
        driver.get("http://authproxy.local/")
        WebDriverWait(driver, 30).until(lambda d: "credential-billing" in d.page_source)
        width = driver.execute_script("return window.innerWidth")
        scroll_width = driver.execute_script("return document.documentElement.scrollWidth")
        first = driver.page_source
        # The page refreshes itself: a new call shows up without reloading it.
        assert s.get(f"{base}/more", timeout=30).status_code == 200
        WebDriverWait(driver, 20).until(
            lambda d: d.execute_script(
                "return document.querySelector('#credential-billing .counts b').textContent"
            ) == "4"  # injected: 4
        )
        refreshed = driver.page_source
        for _ in range(3):  # the whole page in the screenshot: grow the window until it fits
            height = driver.execute_script("return document.documentElement.scrollHeight")
            if driver.execute_script("return window.innerHeight") >= height:
                break
            driver.set_window_size(1200, height + 150)
        shot = tmp_path / "console.png"
        driver.save_screenshot(str(shot))
    finally:
        driver.quit()
    assert width == 1200
    assert scroll_width <= 1200, f"the console overflows: {scroll_width} px wide"
    for state in ("valid", "failing", "needs login"):
        assert f'<span class="pill">{state}</span>' in first
    assert "invalid_client" in first
    assert 'class="kind refresh">refreshed<' in first and 'class="kind retry">retried<' in first
    assert "None" not in first
    assert len(_issued(idp)) == 2  # the first token, and the one after the 401
    secrets = [*_issued(idp), CLIENT_SECRET, WRONG_SECRET, STATIC_TOKEN]
    assert secrets_in([first, refreshed, proxy.output()], secrets) == []
    if target := os.environ.get("AUTHPROXY_CONSOLE_SCREENSHOT"):
        shutil.copyfile(shot, target)
