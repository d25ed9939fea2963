"""`authproxy run --workers N` as real processes: one port, several workers, one status page,
a supervisor that restarts a worker that dies, and a graceful stop of all of them."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import signal
import stat
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import yaml
from harness import CLIENT_SECRET, Proxy, cc_credential, route, run_cli, secrets_in
from test_e2e_localguard import NOBODY, as_root, curl_as
from test_e2e_wrap import api_url, listening

from proxy_addon.demo.api import ApiServer
from proxy_addon.demo.idp import AuthServer

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="SO_REUSEPORT and /proc: Linux"
)

API_HOST = "api.example.test"


@pytest.fixture
def two_workers(
    start_proxy: Callable[..., Proxy], idp: AuthServer, api: ApiServer, tmp_path: Path
) -> Callable[..., Proxy]:
    """`--workers 2`, whose runtime directory is under tmp_path/run, temporary files under
    tmp_path/tmp."""

    def start(*args: str) -> Proxy:
        config = {
            "credentials": {"api": cc_credential(idp.token_url)},
            "routes": [route(API_HOST, api.port)],
        }
        (tmp_path / "run").mkdir(exist_ok=True)
        (tmp_path / "tmp").mkdir(exist_ok=True)
        env = {"XDG_RUNTIME_DIR": str(tmp_path / "run"), "TMPDIR": str(tmp_path / "tmp")}
        proxy = start_proxy(config, "-q", "--workers", "2", *args, env=env)
        wait_for(lambda: len(workers_of(proxy)) == 2 and metric(proxy, "authproxy_workers") == 2,
                 "both workers listen")  # fmt: skip
        return proxy

    return start


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.05)  # polling other processes' state; nothing to wait on


def runtime_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "run").glob("authproxy-workers-*/*.json"))


def published(tmp_path: Path, counter: str) -> int:
    """The sum of `counter` in the workers' published files (retired ones included)."""
    total = 0
    for path in runtime_files(tmp_path):
        with contextlib.suppress(OSError, ValueError, KeyError):  # being replaced
            total += sum(json.loads(path.read_text())["counters"][counter].values())
    return total


def workers_of(proxy: Proxy) -> list[int]:
    assert proxy.proc is not None
    pid = proxy.proc.pid
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def status(proxy: Proxy, path: str) -> requests.Response:
    """Each call on a new connection: the kernel picks the worker that answers."""
    with proxy.session() as s:
        return s.get(f"http://authproxy.local{path}", timeout=10)


def metric(proxy: Proxy, name: str, labels: str = "") -> float:
    text = status(proxy, "/metrics").text
    m = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else -1.0


def per_worker(proxy: Proxy, name: str) -> dict[str, float]:
    text = status(proxy, "/metrics").text
    return {w: float(v) for w, v in re.findall(rf'^{name}{{worker="(\d+)"}} (\S+)$', text, re.M)}


def call(proxy: Proxy, api: ApiServer, path: str) -> int:
    with proxy.session() as s:  # a new connection each time
        return s.get(api_url(api, path), timeout=30).status_code


def test_two_workers_share_the_port_and_one_status_page(
    two_workers: Callable[..., Proxy], api: ApiServer, idp: AuthServer, tmp_path: Path
) -> None:
    proxy = two_workers()
    # The first requests arrive together at both workers while the IdP is slow: the store's
    # lock spans processes, so one token request serves them all.
    idp.slow_seconds, idp.fault = 0.5, "slow"
    with ThreadPoolExecutor(8) as pool:
        first = list(pool.map(lambda i: call(proxy, api, f"/first/{i}"), range(8)))
    idp.fault = None
    assert first == [200] * 8
    assert idp.token_requests == 1
    n = 24
    assert [call(proxy, api, f"/w/{i}") for i in range(n - 8)] == [200] * (n - 8)
    # The kernel spread the connections: both workers served some (24 connections all to one
    # of two listeners: about one chance in eight million).
    # A worker publishes its numbers about once a second: once they are all out, whichever
    # worker answers, the status page counts every worker's requests.
    wait_for(lambda: published(tmp_path, "injected") == n, "every request is published")
    injected = per_worker(proxy, "authproxy_worker_injected_total")
    assert set(injected) == {"0", "1"} and all(v > 0 for v in injected.values()), injected
    assert sum(injected.values()) == n
    for _ in range(6):
        assert status(proxy, "/status.json").json()["counters"]["injected"] == {"api": n}
    page = status(proxy, "/")
    assert page.status_code == 200 and "credential-api" in page.text
    assert metric(proxy, "authproxy_injected_total", '{credential="api"}') == n
    assert sum(per_worker(proxy, "authproxy_worker_connections_total").values()) >= n
    # One store, one lock: one token for both workers.
    assert idp.token_requests == 1
    # The workers' files: private, and without a secret.
    files = runtime_files(tmp_path)
    assert len(files) == 2
    assert stat.S_IMODE(files[0].parent.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    with idp._lock:
        tokens = list(idp._access)
    assert tokens
    assert secrets_in([f.read_text() for f in files], [CLIENT_SECRET, *tokens]) == []
    assert "Traceback" not in proxy.output()


def test_a_killed_worker_is_restarted_and_the_port_keeps_serving(
    two_workers: Callable[..., Proxy], api: ApiServer, tmp_path: Path
) -> None:
    proxy = two_workers()
    assert [call(proxy, api, f"/before/{i}") for i in range(4)] == [200] * 4
    # Published (a worker killed at once would lose up to its last second of numbers).
    wait_for(lambda: published(tmp_path, "injected") == 4, "the requests are published")
    victim, survivor = workers_of(proxy)
    os.kill(victim, signal.SIGKILL)
    # The survivor serves meanwhile (the kernel no longer hashes to a closed listener).
    wait_for(lambda: victim not in workers_of(proxy), "the supervisor reaped the worker")
    assert [call(proxy, api, f"/during/{i}") for i in range(6)] == [200] * 6
    wait_for(lambda: len(workers_of(proxy)) == 2, "the worker is restarted")
    assert survivor in workers_of(proxy)
    wait_for(lambda: metric(proxy, "authproxy_workers") == 2, "the new worker publishes")
    assert [call(proxy, api, f"/after/{i}") for i in range(6)] == [200] * 6
    # The dead worker's requests still count.
    wait_for(lambda: status(proxy, "/status.json").json()["counters"]["injected"]["api"] == 16,
             "the totals keep the dead worker's requests")  # fmt: skip
    assert proxy.stop() == 0
    out = proxy.output()
    assert re.search(r"worker \d \(pid \d+\) died \(signal 9\) after [\d.]+s; restarting it in "
                     r"0.5s", out), out  # fmt: skip


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_stops_every_worker_gracefully(
    two_workers: Callable[..., Proxy], api: ApiServer, tmp_path: Path, sig: signal.Signals
) -> None:
    proxy = two_workers("--grace", "20")
    assert call(proxy, api, "/first") == 200  # the token, before the API turns slow
    pids = workers_of(proxy)
    api.delay = 1.5
    with ThreadPoolExecutor(8) as pool:
        before = api.arrived
        futures = [pool.submit(call, proxy, api, f"/slow/{i}") for i in range(8)]
        assert api.wait_for_arrivals(before + 8, 30)
        assert proxy.proc is not None
        proxy.proc.send_signal(sig)
        proxy.proc.wait(timeout=30)
        assert [f.result() for f in futures] == [200] * 8
    assert proxy.proc.returncode == 0
    assert not any(Path(f"/proc/{p}").exists() for p in pids)
    assert not listening(proxy.port)
    # Every worker cleaned up as a process that exits does (its CA bundle), and the
    # supervisor removed the runtime directory.
    assert list((tmp_path / "tmp").iterdir()) == []
    assert list((tmp_path / "run").iterdir()) == []
    out = proxy.output()
    assert f"{sig.name}: stopping 2 worker(s)" in out
    assert out.count(f"{sig.name}: no new connections") == 2  # each worker's graceful stop
    assert "Traceback" not in out


def test_a_worker_that_cannot_start_ends_the_start(
    start_proxy: Callable[..., Proxy], tmp_path: Path
) -> None:
    """A bad option fails in the first worker; the supervisor says so and exits, no restarts."""
    with pytest.raises(AssertionError, match="proxy did not start"):
        start_proxy({}, "--workers", "2", "--set", "no_such_option=1")
    out = (tmp_path / "proxy.log").read_text()
    assert "worker 0 exited with status 2 while starting" in out
    assert "restarting" not in out


@as_root
def test_every_worker_refuses_another_user(
    two_workers: Callable[..., Proxy], api: ApiServer
) -> None:
    proxy = two_workers()
    for i in range(8):  # spread over both workers
        theirs = curl_as(NOBODY, proxy.url, api_url(api, f"/theirs/{i}"), proxy.ca)
        assert theirs.returncode in (52, 56), theirs
    wait_for(lambda: min(per_worker(proxy, "authproxy_worker_connections_total").values()) > 0,
             "both workers saw connections")  # fmt: skip
    assert call(proxy, api, "/mine") == 200
    assert [e["path"] for e in api.requests_log] == ["/mine"]


@pytest.mark.skipif(
    importlib.util.find_spec("proxy_addon.reload") is None,
    reason="reload on SIGHUP inside one proxy (proxy_addon/reload.py) is not merged yet",
)
@pytest.mark.parametrize("how", ["SIGHUP", "authproxy reload"])
def test_a_reload_reaches_every_worker(
    two_workers: Callable[..., Proxy], api: ApiServer, tmp_path: Path, how: str
) -> None:
    proxy = two_workers()
    assert call(proxy, api, "/routed") == 200
    config = yaml.safe_load(proxy.config_path.read_text())
    # The route now names a static token the API does not know: it answers 401.
    config["credentials"]["fixed"] = {"grant": "static", "token": "not-a-token-the-api-knows"}
    config["routes"][0]["credential"] = "fixed"
    proxy.config_path.write_text(yaml.safe_dump(config))
    assert proxy.proc is not None
    pids = workers_of(proxy)
    if how == "SIGHUP":
        proxy.proc.send_signal(signal.SIGHUP)
    else:  # it signals the pid the status page names: the supervisor's, not one worker's
        done = run_cli("--config", str(proxy.config_path), "reload")
        assert done.returncode == 0, done.stderr
        assert f"(pid {proxy.proc.pid})" in done.stdout
    # Every worker took the new config: a run of new connections (spread by the kernel over
    # both) all carry the new credential.
    wait_for(lambda: [call(proxy, api, "/fixed") for _ in range(12)] == [401] * 12,
             "both workers reloaded")  # fmt: skip
    assert workers_of(proxy) == pids  # reloaded, not restarted
    assert "SIGHUP: reloading every worker" in proxy.output()
