"""Health probes against a real `authproxy run` on a real redis-server (issue 9): /healthz and
/readyz straight to the listen port (as an orchestrator probes) and through the proxy, /readyz
turning 503 in bounded time while Redis is down, and the store's errors in /metrics."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests
from cryptography.fernet import Fernet
from harness import cc_credential, route
from support import redis_server

from proxy_addon.demo.api import ApiServer
from proxy_addon.demo.idp import AuthServer

pytestmark = pytest.mark.skipif(
    not redis_server.available(), reason="redis-server is not installed (.ci/run installs it)"
)


KEY = Fernet.generate_key().decode()


def test_probes_in_both_forms_follow_the_store(
    start_proxy, idp: AuthServer, api: ApiServer, tmp_path: Path
) -> None:
    redis = redis_server.RedisServer(tmp_path).start()
    try:
        home = tmp_path / "home"
        home.mkdir()
        proxy = start_proxy(
            {"store": {"backend": "redis", "url": redis.url},
             "credentials": {"api": cc_credential(idp.token_url)},
             "routes": [route("api.example.test", api.port)]},
            env={"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
                 "XDG_STATE_HOME": str(home / ".state"), "AUTHPROXY_KEY": KEY},
        )  # fmt: skip
        direct = requests.Session()
        direct.trust_env = False
        # Straight to the listen port, twice on one kept-alive connection, as a kubelet does.
        for _ in range(2):
            r = direct.get(f"{proxy.url}/readyz", timeout=10)
            assert (r.status_code, r.json()["status"]) == (200, "ready"), r.text
        assert direct.get(f"{proxy.url}/healthz", timeout=10).json() == {"status": "ok"}
        # Anything else straight to the port is not the console.
        assert direct.get(f"{proxy.url}/status.json", headers={"Host": "authproxy.local"},
                          timeout=10).status_code != 200  # fmt: skip
        with proxy.session() as s:
            assert s.get("http://authproxy.local/readyz", timeout=10).status_code == 200

            redis.kill()
            start = time.monotonic()
            r = direct.get(f"{proxy.url}/readyz", timeout=10)
            assert r.status_code == 503, r.text
            assert r.json()["checks"]["store"]["status"] in ("store_unavailable", "store_timeout")
            assert time.monotonic() - start < 4
            assert redis.password not in r.text and str(redis.port) not in r.text
            assert direct.get(f"{proxy.url}/healthz", timeout=10).status_code == 200
            metrics = s.get("http://authproxy.local/metrics", timeout=10).text
            assert 'authproxy_store_errors_total{op="ping"' in metrics
            assert 'authproxy_store_operation_seconds_count{op="ping"}' in metrics

            redis.start()
            deadline = time.monotonic() + 10
            while direct.get(f"{proxy.url}/readyz", timeout=10).status_code != 200:
                assert time.monotonic() < deadline, "readyz did not recover with Redis"
                time.sleep(0.1)
    finally:
        redis.stop()


def test_with_proxy_authentication_a_probe_sends_it_too(
    start_proxy, idp: AuthServer, api: ApiServer
) -> None:
    """As the compose example's healthcheck: mitmproxy's proxy authentication comes first."""
    import base64

    auth = "prober:a-long-password-1"
    proxy = start_proxy({"proxy_auth": auth,
                         "credentials": {"api": cc_credential(idp.token_url)},
                         "routes": [route("api.example.test", api.port)]})  # fmt: skip
    direct = requests.Session()
    direct.trust_env = False
    assert direct.get(f"{proxy.url}/readyz", timeout=10).status_code == 407
    header = {"Proxy-Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}
    r = direct.get(f"{proxy.url}/readyz", headers=header, timeout=10)
    assert (r.status_code, r.json()["status"]) == (200, "ready")
