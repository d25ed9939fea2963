"""A fleet of proxies on one real redis-server (password, AOF): one refresh per expiry, only
ciphertext in Redis, a killed lease holder, Redis down and back, refused credentials."""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from cryptography.fernet import Fernet
from harness import CLIENT_ID, CLIENT_SECRET, Proxy, cc_credential, route, run_cli, secrets_in
from support import redis_server

from proxy_addon.demo.api import ApiServer
from proxy_addon.demo.idp import AuthServer

pytestmark = pytest.mark.skipif(
    not redis_server.available(), reason="redis-server is not installed (.ci/run installs it)"
)

KEY = Fernet.generate_key().decode()  # the fleet's AUTHPROXY_KEY


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[redis_server.RedisServer]:
    server = redis_server.RedisServer(tmp_path).start()
    yield server
    server.stop()


def _store(server: redis_server.RedisServer, **extra: object) -> dict:
    # The password comes from the environment, as an operator would keep it out of the file.
    return {"backend": "redis", "url": f"redis://:${{REDIS_PW}}@127.0.0.1:{server.port}/0",
            **extra}  # fmt: skip


def _rt(idp: AuthServer) -> dict:
    return {"grant": "refresh_token", "token_url": idp.token_url, "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET, "refresh_token": "${SEED_RT}"}  # fmt: skip


def _member(start_proxy, tmp_path: Path, i: int, config: dict, server, **env: str) -> Proxy:
    """A member of the fleet: its own HOME, the shared Redis, key and mitmproxy CA."""
    home = tmp_path / f"home{i}"
    home.mkdir(exist_ok=True)
    return start_proxy(config, name=f"m{i}", env={
        "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_STATE_HOME": str(home / ".state"), "AUTHPROXY_KEY": KEY,
        "REDIS_PW": server.password, **env,
    })  # fmt: skip


def _get(proxy: Proxy, url: str) -> requests.Response:
    with proxy.session() as s:
        return s.get(url, timeout=30)


def _get_quietly(proxy: Proxy, url: str) -> None:
    with contextlib.suppress(requests.RequestException):  # the proxy is killed meanwhile
        _get(proxy, url)


def _until(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_fleet_refreshes_once_per_expiry_and_redis_holds_only_ciphertext(
    start_proxy, idp: AuthServer, api: ApiServer, redis, tmp_path: Path
) -> None:
    seed = idp.issue_refresh_token(CLIENT_ID, "read")
    idp.access_token_ttl = 4  # rotates on every refresh; reuse would revoke the family
    config = {"store": _store(redis), "credentials": {"api": _rt(idp)},
              "routes": [route("api.example.test", api.port)]}  # fmt: skip
    members = [_member(start_proxy, tmp_path, i, config, redis, SEED_RT=seed) for i in range(3)]
    url = f"https://api.example.test:{api.port}/"
    deadline = time.monotonic() + 5.0
    statuses: list[int] = []
    lock = threading.Lock()

    def drive(member: Proxy) -> None:
        with member.session() as s:
            while time.monotonic() < deadline:
                code = s.get(url, timeout=30).status_code
                with lock:
                    statuses.append(code)

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        list(pool.map(drive, [m for m in members for _ in range(4)]))

    log = idp.requests_log
    assert [e["status"] for e in log if e["status"] != 200] == []  # no reuse, no invalid_grant
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    # One refresh per token half-life (2 s) for the whole fleet, never a burst.
    times = [e["time"] for e in log]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert 2 <= len(log) <= 5, len(log)
    assert min(gaps) > 1.0, gaps

    # Redis, and its AOF on disk, hold no token, refresh token or secret.
    with idp._lock:
        issued = [*idp._access, *idp._grants.refresh]
    raw = [redis.dump(), *(p.read_bytes() for p in redis.dir.rglob("*") if p.is_file())]
    assert len(issued) >= 4
    assert secrets_in(raw, [*issued, seed, CLIENT_SECRET, KEY]) == []
    assert b"authproxy:row:api#" in raw[0]  # the row is there, as ciphertext


def test_redis_down_and_back_mid_traffic(
    start_proxy, idp: AuthServer, api: ApiServer, redis, tmp_path: Path
) -> None:
    seed = idp.issue_refresh_token(CLIENT_ID, "read")
    idp.access_token_ttl = 3
    config = {
        "store": _store(redis, connect_timeout=0.5, timeout=0.5),
        "tokens": {"backoff_initial": 0.2, "backoff_max": 1},
        "credentials": {"rt": _rt(idp), "cc": cc_credential(idp.token_url)},
        "routes": [route("rt.example.test", api.port, "rt"),
                   route("cc.example.test", api.port, "cc")],
    }  # fmt: skip
    members = [_member(start_proxy, tmp_path, i, config, redis, SEED_RT=seed) for i in range(2)]
    rt_url, cc_url = (f"https://{h}.example.test:{api.port}/" for h in ("rt", "cc"))
    for m in members:
        assert _get(m, rt_url).status_code == 200 and _get(m, cc_url).status_code == 200

    redis.kill()
    down_at = time.time()
    # The rt token still valid serves from memory; once it expires: 502 store_unavailable,
    # fast, and no refresh goes to the IdP. client_credentials keeps working meanwhile.
    assert _get(members[0], rt_url).status_code == 200
    failed: dict[int, requests.Response] = {}

    def rt_failing() -> bool:
        for i, m in enumerate(members):
            assert _get(m, cc_url).status_code == 200
            start = time.monotonic()
            r = _get(m, rt_url)
            if r.status_code == 502:
                assert time.monotonic() - start < 2.0
                failed[i] = r
        return len(failed) == 2

    _until(rt_failing, 10, "the rt token to expire on both members")
    for r in failed.values():
        assert r.headers["X-Authproxy-Error"] == "token_unavailable"
        assert r.json()["reason"] == "store_unavailable", r.json()
    during = [e for e in idp.requests_log if e["time"] > down_at]
    assert [e["grant_type"] for e in during if e["grant_type"] == "refresh_token"] == []
    assert any(e["grant_type"] == "client_credentials" for e in during)  # fetched locally

    redis.start()  # same port, same AOF: the rotated refresh token survived
    _until(lambda: all(_get(m, rt_url).status_code == 200 for m in members), 15,
           "the fleet to recover by itself")  # fmt: skip
    assert [e["status"] for e in idp.requests_log if e["status"] != 200] == []


def test_a_member_killed_while_holding_the_lease_is_taken_over_at_once(
    start_proxy, idp: AuthServer, api: ApiServer, redis, tmp_path: Path
) -> None:
    config = {"store": _store(redis), "credentials": {"api": cc_credential(idp.token_url)},
              "routes": [route("api.example.test", api.port)]}  # fmt: skip
    a, b = (_member(start_proxy, tmp_path, i, config, redis) for i in range(2))
    url = f"https://api.example.test:{api.port}/"
    assert _get(a, url).status_code == 200 and _get(b, url).status_code == 200
    client = redis.client()
    answered = idp.token_requests  # none in flight: every request so far was answered
    idp.slow_seconds = 30
    idp.set_fault("slow", 1)
    idp.expire_access_tokens()
    threading.Thread(target=_get_quietly, args=(a, url), daemon=True).start()  # a: stuck
    _until(lambda: bool(list(client.scan_iter("authproxy:lock:*"))), 10, "a to take the lease")
    assert idp.wait_for_requests(answered + 1, 10, arrived=True)  # its IdP call hangs
    a.stop(signal.SIGKILL)

    start = time.monotonic()
    assert _get(b, url).status_code == 200
    assert time.monotonic() - start < 8.0  # not the 15 s lease: a dead holder here is seen
    assert "taking over the refresh lock" in b.output()


def test_refused_or_unreachable_redis_stops_the_start_with_one_line(
    idp: AuthServer, redis, tmp_path: Path
) -> None:
    import yaml

    from proxy_addon.config import parse_config
    from proxy_addon.runtime import open_store
    from proxy_addon.store import StoreUnavailableError

    # Unreachable: the same one-line error, from the same place (in-process: faster).
    closed = redis_server._free_port()
    store = {"backend": "redis", "url": f"redis://:wrong-password-123@127.0.0.1:{closed}/0"}
    with pytest.raises(StoreUnavailableError, match="unreachable while connecting") as info:
        open_store(parse_config({"store": store}, "c.yaml", env={}).store, {"AUTHPROXY_KEY": KEY})
    assert "wrong-password-123" not in str(info.value) and "\n" not in str(info.value)
    # Refused credentials, through `authproxy run`.
    for url, expected in (
        (f"redis://:wrong-password-123@127.0.0.1:{redis.port}/0", "refused the credentials"),
    ):
        config = tmp_path / "c.yaml"
        config.write_text(yaml.safe_dump({
            "listen": f"127.0.0.1:{redis_server._free_port()}",
            "store": {"backend": "redis", "url": url, "connect_timeout": 1},
            "credentials": {"api": cc_credential(idp.token_url)},
        }))  # fmt: skip
        r = run_cli("--config", str(config), "run", env={"AUTHPROXY_KEY": KEY,
                    "HOME": str(tmp_path)})  # fmt: skip
        assert r.returncode == 2, (r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], r.stderr
        assert "Traceback" not in r.stderr + r.stdout
        assert "wrong-password-123" not in r.stderr + r.stdout


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ({"cluster": True}, "Cluster mode is not enabled"),
        ({"sentinels": "SELF", "service": "m"}, "unknown command 'SENTINEL"),
        ({"sentinels": "CLOSED", "service": "m"}, "no sentinel answered with a primary for"),
    ],
)
def test_sentinel_and_cluster_pointed_at_a_plain_redis_say_so_in_one_line(
    redis, mode: dict, expected: str
) -> None:
    """Sentinel and Cluster are not tested against real ones here; a wrong setup is named."""
    from proxy_addon.store import StoreError
    from proxy_addon.store.keys import Keyring
    from proxy_addon.store.redis_config import RedisSettings
    from proxy_addon.store.redis_store import RedisStore
    from proxy_addon.store.sealer import Sealer

    ports = {"SELF": redis.port, "CLOSED": redis_server._free_port()}
    if "sentinels" in mode:
        mode = {**mode, "sentinels": (("127.0.0.1", ports[mode["sentinels"]]),)}
    settings = RedisSettings("127.0.0.1", redis.port, 0, False, None, redis.password,
                             connect_timeout=0.5, **mode)  # fmt: skip
    with pytest.raises(StoreError) as info:
        RedisStore(settings, Sealer(Keyring.from_keys([KEY], "k"))).check()
    assert expected in str(info.value) and "\n" not in str(info.value)
    assert redis.password not in str(info.value)
