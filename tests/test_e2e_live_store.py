"""Running proxies follow the store: `rotate-key` and `refresh` by another process (issue 13)."""

from __future__ import annotations

import time
from collections.abc import Callable

from harness import Proxy, cc_credential, route, run_cli

from proxy_addon.cache import STORE_LOOK
from proxy_addon.demo.api import ApiServer
from proxy_addon.demo.idp import AuthServer


def _config(idp: AuthServer, api: ApiServer) -> dict[str, object]:
    return {
        "credentials": {"api": cc_credential(idp.token_url)},
        "routes": [route("api.example.test", api.port)],
    }


def _fp(proxy: Proxy, api: ApiServer) -> tuple[int, str | None]:
    with proxy.session() as s:
        r = s.get(f"https://api.example.test:{api.port}/x", timeout=30)
    return r.status_code, (r.json().get("token_fp") if r.ok else r.text)


def _past_store_look(since: float) -> None:
    # The proxy looks at the store at most every STORE_LOOK seconds: let that interval pass.
    time.sleep(max(0.0, since + STORE_LOOK + 0.1 - time.monotonic()))


def test_a_running_proxy_follows_rotate_key(
    start_proxy: Callable[..., Proxy], idp: AuthServer, api: ApiServer
) -> None:
    proxy = start_proxy(_config(idp, api))
    assert _fp(proxy, api)[0] == 200
    r = run_cli("--config", str(proxy.config_path), "rotate-key", env={"AUTHPROXY_KEY": ""})
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("new key "), r.stdout  # not "added a new key to new key ..."
    assert "added a new key to" not in r.stdout
    assert "running proxies read the new key" in r.stdout
    # The token expires: the proxy must read the (re-encrypted) row to refresh it.
    idp.expire_access_tokens()
    status, answer = _fp(proxy, api)
    assert status == 200, answer
    out = proxy.output()
    assert "the token store key changed" in out
    assert "logout" not in out


def test_authproxy_refresh_reaches_the_running_proxy(
    start_proxy: Callable[..., Proxy], idp: AuthServer, api: ApiServer
) -> None:
    proxy = start_proxy(_config(idp, api))
    status, first = _fp(proxy, api)
    looked = time.monotonic()  # at the latest: the proxy looked at the store then
    assert status == 200
    r = run_cli("--config", str(proxy.config_path), "refresh", "api", env={"AUTHPROXY_KEY": ""})
    assert r.returncode == 0, r.stderr
    assert idp.token_requests == 2
    _past_store_look(looked)
    status, second = _fp(proxy, api)  # the very next request
    assert status == 200 and second != first
    assert idp.token_requests == 2  # the proxy took the stored token, it did not fetch one
