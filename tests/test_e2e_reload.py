"""A running proxy follows changes: SIGHUP and `authproxy reload` re-read the config and the key."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from harness import Proxy, cc_credential, route, run_cli

from proxy_addon.demo.api import ApiServer
from proxy_addon.demo.idp import AuthServer


def _wait_for_log(proxy: Proxy, text: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while text not in proxy.output():
        assert time.monotonic() < deadline, f"{text!r} not logged:\n{proxy.output()}"
        time.sleep(0.05)  # polling the proxy's log file


def _rewrite(proxy: Proxy, **changes: object) -> None:
    config = yaml.safe_load(proxy.config_path.read_text())
    config.update(changes)
    proxy.config_path.write_text(yaml.safe_dump(config, sort_keys=False))


def _api_get(proxy: Proxy, api: ApiServer, path: str = "/x") -> dict[str, object]:
    with proxy.session() as s:
        # An unrouted host is passed through untouched: its own certificate (the test PKI's).
        both = proxy.workdir / "both-cas.pem"
        if not both.exists():
            pki_ca = yaml.safe_load(proxy.config_path.read_text())["ca_certs"][0]
            both.write_text(proxy.ca.read_text() + Path(pki_ca).read_text())
        s.verify = str(both)
        r = s.get(f"https://api.example.test:{api.port}{path}", timeout=30)
    return {"status": r.status_code, "token_fp": r.json().get("token_fp") if r.ok else None}


def test_sighup_applies_a_changed_config(
    start_proxy: Callable[..., Proxy], idp: AuthServer, api: ApiServer
) -> None:
    proxy = start_proxy({"credentials": {"api": cc_credential(idp.token_url)}, "routes": []})
    assert _api_get(proxy, api)["status"] == 401  # no route: the API sees no token
    _rewrite(proxy, routes=[route("api.example.test", api.port)])
    assert proxy.proc is not None
    proxy.proc.send_signal(signal.SIGHUP)
    _wait_for_log(proxy, f"reloaded {proxy.config_path}")
    got = _api_get(proxy, api)
    assert got["status"] == 200 and got["token_fp"]
    assert proxy.proc.poll() is None
    assert "Traceback" not in proxy.output()


def test_a_config_that_fails_validation_keeps_the_old_one(
    start_proxy: Callable[..., Proxy], idp: AuthServer, api: ApiServer
) -> None:
    proxy = start_proxy(
        {"credentials": {"api": cc_credential(idp.token_url)},
         "routes": [route("api.example.test", api.port)]}
    )  # fmt: skip
    assert _api_get(proxy, api)["status"] == 200
    _rewrite(proxy, routes=[route("api.example.test", api.port, credential="nosuch")])
    assert proxy.proc is not None
    proxy.proc.send_signal(signal.SIGHUP)
    _wait_for_log(proxy, "reload refused, still serving the previous config")
    assert "nosuch" in proxy.output()  # the log says why
    assert _api_get(proxy, api)["status"] == 200
    assert proxy.proc.poll() is None


def test_requests_keep_flowing_during_a_reload_with_a_refresh_in_flight(
    start_proxy: Callable[..., Proxy], idp: AuthServer, api: ApiServer
) -> None:
    """The replaced config drains its refresh in flight off the event loop: the status page
    answers at once meanwhile, and the waiting request gets the token the IdP issued (which the
    new config then serves, without asking the IdP again)."""
    proxy = start_proxy(
        {"credentials": {"api": cc_credential(idp.token_url)},
         "routes": [route("api.example.test", api.port)]}
    )  # fmt: skip
    idp.slow_seconds, idp.fault = 4, "slow"
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(_api_get, proxy, api, "/waiting")
        assert idp.wait_for_requests(1, 30, arrived=True)  # the token request is at the IdP
        assert proxy.proc is not None
        proxy.proc.send_signal(signal.SIGHUP)
        _wait_for_log(proxy, f"reloaded {proxy.config_path}")
        started = time.monotonic()
        with proxy.session() as s:
            assert s.get("http://authproxy.local/status.json", timeout=30).ok
        assert time.monotonic() - started < 1.5  # not held up by the draining refresh
        assert not waiting.done()
        first = waiting.result(timeout=30)
    idp.fault = None
    assert first["status"] == 200 and first["token_fp"]
    again = _api_get(proxy, api)
    assert again == first  # the new config serves the token the old one committed
    assert idp.token_requests == 1
    assert "its result is lost" not in proxy.output()


def test_authproxy_reload_signals_the_running_proxy(
    start_proxy: Callable[..., Proxy], idp: AuthServer, api: ApiServer
) -> None:
    proxy = start_proxy({"credentials": {"api": cc_credential(idp.token_url)}, "routes": []})
    _rewrite(proxy, routes=[route("api.example.test", api.port)])
    done = run_cli("--config", str(proxy.config_path), "reload", env={"AUTHPROXY_KEY": ""})
    assert done.returncode == 0, done.stderr
    assert f"(pid {proxy.proc.pid if proxy.proc else 0})" in done.stdout
    _wait_for_log(proxy, f"reloaded {proxy.config_path}")
    assert _api_get(proxy, api)["status"] == 200
