"""Stopping: `authproxy run` on SIGTERM with requests in flight, and `authproxy demo`."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from harness import Proxy, cc_credential, route
from test_e2e_wrap import listening, proxy_processes

from proxy_addon.demo.api import ApiServer
from proxy_addon.demo.idp import AuthServer

IN_FLIGHT = 10


@pytest.fixture
def slow_proxy(
    start_proxy: Callable[..., Proxy], idp: AuthServer, api: ApiServer
) -> Callable[..., Proxy]:
    def start(*args: str, **extra: object) -> Proxy:
        config = {
            "credentials": {"api": cc_credential(idp.token_url)},
            "routes": [route("api.example.test", api.port)],
            **extra,
        }
        return start_proxy(config, *args)

    return start


def send_in_flight(
    pool: ThreadPoolExecutor, proxy: Proxy, api: ApiServer
) -> list[Future[requests.Response]]:
    def call(i: int) -> requests.Response:
        with proxy.session() as s:
            return s.get(f"https://api.example.test:{api.port}/slow/{i}", timeout=30)

    before = api.arrived
    futures = [pool.submit(call, i) for i in range(IN_FLIGHT)]
    assert api.wait_for_arrivals(before + IN_FLIGHT, 30)  # all of them are at the API now
    return futures


def stopped_within(proxy: Proxy, seconds: float) -> float:
    assert proxy.proc is not None
    start = time.monotonic()
    proxy.proc.wait(timeout=seconds)
    return time.monotonic() - start


def test_sigterm_lets_requests_in_flight_finish(
    slow_proxy: Callable[..., Proxy], api: ApiServer
) -> None:
    proxy = slow_proxy("--grace", "20")
    with proxy.session() as s:  # the token, before the API becomes slow
        assert s.get(f"https://api.example.test:{api.port}/first", timeout=30).ok
    api.delay = 1.5
    with ThreadPoolExecutor(IN_FLIGHT) as pool:
        futures = send_in_flight(pool, proxy, api)
        assert proxy.proc is not None
        proxy.proc.send_signal(signal.SIGTERM)
        took = stopped_within(proxy, 30)
        answers = [f.result() for f in futures]
    assert [r.status_code for r in answers] == [200] * IN_FLIGHT
    assert all(r.json()["token_fp"] for r in answers)
    assert took < 10  # it left once they were done, not at the end of the grace period
    assert proxy.proc.returncode == 0
    assert not listening(proxy.port)
    out = proxy.output()
    assert f"SIGTERM: no new connections; waiting up to 20s for {IN_FLIGHT} request(s)" in out
    assert "Traceback" not in out


def test_listener_closes_at_once_while_requests_finish(
    slow_proxy: Callable[..., Proxy], api: ApiServer
) -> None:
    proxy = slow_proxy("--grace", "10")
    api.delay = 3
    with ThreadPoolExecutor(IN_FLIGHT) as pool:
        futures = send_in_flight(pool, proxy, api)
        assert proxy.proc is not None
        proxy.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 2.5
        while listening(proxy.port):  # new connections are refused long before the answers
            assert time.monotonic() < deadline, "still accepting connections"
            time.sleep(0.05)
        assert not any(f.done() for f in futures)
        assert [f.result().status_code for f in futures] == [200] * IN_FLIGHT
    stopped_within(proxy, 20)


@pytest.mark.parametrize("how", ["grace", "second signal"])
def test_the_wait_is_bounded(
    how: str, slow_proxy: Callable[..., Proxy], api: ApiServer, idp: AuthServer
) -> None:
    proxy = slow_proxy("--grace", "1" if how == "grace" else "60")
    api.delay = 20
    with ThreadPoolExecutor(IN_FLIGHT) as pool:
        futures = send_in_flight(pool, proxy, api)
        assert proxy.proc is not None
        proxy.proc.send_signal(signal.SIGTERM)
        if how == "second signal":
            time.sleep(0.3)  # deliberately: a second signal a moment after the first
            proxy.proc.send_signal(signal.SIGINT)
        took = stopped_within(proxy, 15)
        for f in futures:
            with pytest.raises(requests.ConnectionError):
                f.result()
    assert took < 8  # the API would answer after 20s, the IdP after 30s
    out = proxy.output()
    expected = "still in flight after 1s" if how == "grace" else "SIGINT again: stopping now"
    assert expected in out
    assert "Traceback" not in out


@pytest.mark.parametrize("how", ["drain_timeout", "second signal"])
def test_a_hung_token_request_does_not_hold_the_exit(
    how: str, slow_proxy: Callable[..., Proxy], api: ApiServer, idp: AuthServer
) -> None:
    """The token cache gives a refresh in flight `drain_timeout` (default idp_timeout + 2 s)
    to commit its token once the requests are given up; a second signal cuts that short."""
    tokens = {"tokens": {"drain_timeout": 1}} if how == "drain_timeout" else {}
    proxy = slow_proxy("--grace", "1", **tokens)
    idp.slow_seconds, idp.fault = 30, "slow"
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(
            lambda: proxy.session().get(f"https://api.example.test:{api.port}/x", timeout=60)
        )
        assert idp.wait_for_requests(1, 30, arrived=True)  # the token request hangs at the IdP
        assert proxy.proc is not None
        proxy.proc.send_signal(signal.SIGTERM)
        if how == "second signal":
            deadline = time.monotonic() + 10
            while "still in flight after 1s" not in proxy.output():
                assert time.monotonic() < deadline
                time.sleep(0.05)  # polling the proxy's log
            proxy.proc.send_signal(signal.SIGINT)
        took = stopped_within(proxy, 20)
        with pytest.raises(requests.ConnectionError):
            future.result()
    assert took < 8  # the IdP would answer after 30s
    out = proxy.output()
    if how == "second signal":
        assert "SIGINT again: stopping now" in out
    else:
        assert "a token request is still running after the grace period" in out
    assert "Traceback" not in out


# --- the demo -----------------------------------------------------------------------------------


def test_demo_stopped_with_sigterm_stops_its_proxy_and_removes_its_files(tmp_path: Path) -> None:
    out = tmp_path / "demo.out"
    with out.open("w") as sink:
        demo = subprocess.Popen(
            [sys.executable, "-m", "proxy_addon", "demo"],
            stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT, cwd=tmp_path,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while "The proxy keeps running" not in (text := out.read_text()):
            assert demo.poll() is None and time.monotonic() < deadline, text
            time.sleep(0.05)  # polling the demo's output file
        config = Path(re.search(r"config (\S+config\.yaml)", text)[1])  # type: ignore[index]
        port = int(re.search(r"via http://127\.0\.0\.1:(\d+)", text)[1])  # type: ignore[index]
        assert config.exists() and listening(port)
        demo.send_signal(signal.SIGTERM)
        demo.wait(timeout=30)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert demo.returncode == 128 + signal.SIGTERM
    assert not config.parent.exists()  # the work directory, with the demo's token store
    assert not listening(port)
    assert proxy_processes(str(config)) == []
