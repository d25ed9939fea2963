"""The encrypted store through real proxies: restarts, and several processes sharing it. The
store's key at start and `rotate-key`: test_unit_store_keys.py."""

from __future__ import annotations

import concurrent.futures
import itertools
import threading
import time
from pathlib import Path

import pytest
from harness import CLIENT_ID, CLIENT_SECRET, cc_credential, route, secrets_in

from proxy_addon.demo.api import ApiServer
from proxy_addon.demo.idp import AuthServer


def _rt_config(idp: AuthServer, api: ApiServer) -> dict:
    return {
        "credentials": {
            "api": {"grant": "refresh_token", "token_url": idp.token_url,
                    "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                    "refresh_token": "${SEED_RT}", "refresh_leeway": 60},
        },
        "routes": [route("api.example.test", api.port)],
    }  # fmt: skip


def test_restart_needs_no_new_token_and_store_holds_no_plaintext(
    start_proxy, idp, api, tmp_path: Path
) -> None:
    config = {"credentials": {"api": cc_credential(idp.token_url)},
              "routes": [route("api.example.test", api.port)]}  # fmt: skip
    url = f"https://api.example.test:{api.port}/"
    first = start_proxy(config)
    assert first.session().get(url, timeout=30).status_code == 200
    first.stop()
    second = start_proxy(config, name="second")
    assert second.session().get(url, timeout=30).status_code == 200
    assert idp.token_requests == 1
    assert api.requests_log[0]["token_fp"] == api.requests_log[1]["token_fp"]
    second.stop()

    state = list((tmp_path / "state").iterdir())
    assert any(p.name == "tokens.db" for p in state)
    with idp._lock:
        issued = list(idp._access)
    assert secrets_in([p.read_bytes() for p in state], [*issued, CLIENT_SECRET]) == []
    assert oct((tmp_path / "state" / "tokens.db").stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "keys" / "store.key").stat().st_mode & 0o777) == "0o600"


def _drive(proxies: list, api: ApiServer, seconds: float, threads_per_proxy: int) -> list[int]:
    """Requests from several threads into every proxy for `seconds`; returns the statuses."""
    url = f"https://api.example.test:{api.port}/"
    deadline = time.monotonic() + seconds
    statuses: list[int] = []
    lock = threading.Lock()

    def worker(proxy) -> None:  # type: ignore[no-untyped-def]
        with proxy.session() as s:
            while time.monotonic() < deadline:
                code = s.get(url, timeout=30).status_code
                with lock:
                    statuses.append(code)

    workers = [p for p in proxies for _ in range(threads_per_proxy)]
    with concurrent.futures.ThreadPoolExecutor(len(workers)) as pool:
        list(pool.map(worker, workers))
    return statuses


def _shared_store_run(n: int, start_proxy, idp: AuthServer, api: ApiServer) -> None:
    seed = idp.issue_refresh_token(CLIENT_ID, "read")
    idp.access_token_ttl = 2  # refresh due every ~1 s (leeway capped at half the lifetime)
    proxies = [
        start_proxy(_rt_config(idp, api), name=f"p{i}", env={"SEED_RT": seed}) for i in range(n)
    ]
    statuses = _drive(proxies, api, seconds=5.0, threads_per_proxy=3)

    log = idp.requests_log
    assert [e["status"] for e in log if e["status"] != 200] == []  # zero invalid_grant
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    times = [e["time"] for e in log]
    # One token request per expiry: consecutive refreshes are a token's half-life apart, never
    # a burst of several processes refreshing the same token.
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(log) >= 4, len(log)
    assert min(gaps) > 0.6, gaps
    print(f"{n} processes: {len(statuses)} requests, {len(log)} token requests, gaps {gaps}")


@pytest.mark.parametrize("processes", [1, 2, 4])
def test_processes_share_one_store(start_proxy, idp, api, processes: int) -> None:
    _shared_store_run(processes, start_proxy, idp, api)


def test_401_storm_across_processes_makes_one_refresh(start_proxy, idp, api) -> None:
    seed = idp.issue_refresh_token(CLIENT_ID, "read")
    proxies = [
        start_proxy(_rt_config(idp, api), name=f"p{i}", env={"SEED_RT": seed}) for i in range(3)
    ]
    url = f"https://api.example.test:{api.port}/"
    for p in proxies:
        assert p.session().get(url, timeout=30).status_code == 200
    assert idp.token_requests == 1  # the second and third process adopted the stored token
    idp.expire_access_tokens()
    barrier = threading.Barrier(30)

    def call(i: int) -> int:
        with proxies[i % 3].session() as s:
            barrier.wait()
            return s.get(url, timeout=60).status_code

    with concurrent.futures.ThreadPoolExecutor(30) as pool:
        statuses = list(pool.map(call, range(30)))
    assert statuses == [200] * 30
    assert idp.token_requests == 2
    assert all(e["status"] == 200 for e in idp.requests_log)
