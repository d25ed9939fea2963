"""Health for orchestrators (issue 9): /healthz and /readyz in both request forms, a bounded
store check, and the store's latency and errors in /metrics. In-process, no network."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
from addon_rig import config, in_process, rig_context
from mitmproxy import http
from mitmproxy.test import tflow

from proxy_addon.decision import decide
from proxy_addon.health import HealthProbe, TimedStore, health_path, readiness
from proxy_addon.metrics import Metrics
from proxy_addon.store import MemoryStore, StoreError, StoreUnavailableError
from proxy_addon.tokens import Token


def _flow(
    path: str, *, method: str = "GET", host: str = "10.0.0.5", port: int = 8080,
    scheme: str = "http", absolute: bool = False, tunnelled: bool = False,
) -> http.HTTPFlow:  # fmt: skip
    """A request as the addon sees it: origin form straight to the listen port (mitmproxy took
    the destination from the Host header, no upstream yet), absolute form to the proxy, or
    origin form inside a CONNECT tunnel (the server is the tunnel's target)."""
    f = tflow.tflow()
    req = f.request
    req.method, req.scheme, req.host, req.port, req.path = method, scheme, host, port, path
    req.headers["Host"] = f"{host}:{port}"
    req.authority = f"{host}:{port}" if absolute else ""
    f.server_conn.address = (host, port) if tunnelled else None
    return f


@pytest.mark.parametrize(
    ("kwargs", "action"),
    [
        ({"path": "/healthz"}, "status"),
        ({"path": "/readyz"}, "status"),
        ({"path": "/readyz?verbose=1"}, "status"),
        ({"path": "/healthz", "method": "HEAD"}, "status"),
        ({"path": "/healthz", "host": "authproxy.local", "port": 80}, "status"),
        # Nothing else in origin form: the console and metrics stay proxy-only.
        ({"path": "/status.json", "host": "authproxy.local", "port": 80}, "refuse"),
        ({"path": "/metrics", "host": "authproxy.local", "port": 80}, "refuse"),
        ({"path": "/metrics"}, "pass"),
        ({"path": "/healthz/"}, "pass"),
        ({"path": "/healthz", "method": "POST"}, "pass"),
        # Inside a tunnel, /healthz belongs to the server at its end.
        ({"path": "/healthz", "tunnelled": True}, "pass"),
        ({"path": "/healthz", "scheme": "https", "tunnelled": True}, "pass"),
        # Absolute form to another host is that host's /healthz.
        ({"path": "/healthz", "host": "other.example.test", "absolute": True}, "pass"),
        ({"path": "/healthz", "host": "authproxy.local", "port": 80, "absolute": True},
         "status"),
    ],
)
def test_which_requests_get_the_health_answer(kwargs: dict, action: str) -> None:
    assert decide(_flow(**kwargs), config().routes).action == action


def test_readiness_is_pure() -> None:
    from proxy_addon.health import StoreCheck

    assert readiness(loaded=True, store=StoreCheck(True, 0.001)) == (
        200, {"status": "ready", "checks": {"config": "ok",
                                            "store": {"status": "ok", "seconds": 0.001}}},
    )  # fmt: skip
    code, body = readiness(loaded=True, store=StoreCheck(False, 2.0, "store_timeout"))
    assert code == 503 and body["checks"]["store"]["status"] == "store_timeout"
    assert readiness(loaded=False, store=None)[0] == 503
    assert health_path("/readyz?x") == "/readyz" and health_path("/ready") is None


@pytest.mark.parametrize("absolute", [True, False])
@in_process
async def test_both_forms_answer_json_through_the_addon(absolute: bool) -> None:
    async with rig_context() as rig:
        host, port = ("authproxy.local", 80) if absolute else ("127.0.0.1", 8080)
        for path, code, status in [("/healthz", 200, "ok"), ("/readyz", 200, "ready")]:
            f = await rig.send(_flow(path, host=host, port=port, absolute=absolute))
            assert f.response is not None and f.response.status_code == code
            assert f.response.headers["content-type"] == "application/json"
            assert json.loads(f.response.content or b"")["status"] == status
        assert rig.sent == []  # answered by the proxy, nothing went upstream
        f = await rig.send(_flow("/readyz", method="HEAD", host=host, port=port,
                                 absolute=absolute))  # fmt: skip
        assert f.response is not None and f.response.content == b""


class _Broken(MemoryStore):
    def __init__(self, error: Exception | None = None, hang: threading.Event | None = None):
        super().__init__()
        self.error, self.hang, self.pings = error, hang, 0

    def ping(self) -> None:
        self.pings += 1
        if self.hang is not None:
            self.hang.wait(10)
        if self.error is not None:
            raise self.error


@pytest.mark.parametrize(
    ("error", "reason"),
    [(StoreUnavailableError("redis at 10.1.2.3:6379 is down"), "store_unavailable"),
     (StoreError("wrong key for /secret/path"), "store_error"),
     (RuntimeError("bug"), "store_error")],
)
@in_process
async def test_readyz_is_503_with_a_reason_code_and_never_the_store_message(
    error: Exception, reason: str
) -> None:
    metrics = Metrics()
    answer = await HealthProbe().answer("/readyz", _Broken(error), metrics)
    assert answer.status_code == 503
    body = json.loads(answer.content or b"")
    assert body["status"] == "not_ready" and body["checks"]["store"]["status"] == reason
    assert b"10.1.2.3" not in (answer.content or b"") and b"secret" not in (answer.content or b"")
    assert (await HealthProbe().answer("/healthz", _Broken(error))).status_code == 200
    kind = "unavailable" if reason == "store_unavailable" else "error"
    assert f'authproxy_store_errors_total{{op="ping",kind="{kind}"}} 1' in metrics.prometheus(
        {}, []
    )


@in_process
async def test_a_hanging_store_gives_503_in_bounded_time_and_probes_share_one_check() -> None:
    release = threading.Event()
    store = _Broken(hang=release)
    probe = HealthProbe(timeout=0.3)
    beat = 0

    async def heartbeat() -> None:  # the event loop keeps running meanwhile
        nonlocal beat
        while True:
            beat += 1
            await asyncio.sleep(0.01)

    ticker = asyncio.ensure_future(heartbeat())
    start = time.monotonic()
    answers = await asyncio.gather(*(probe.answer("/readyz", store) for _ in range(5)))
    took = time.monotonic() - start
    ticker.cancel()
    assert [a.status_code for a in answers] == [503] * 5
    assert json.loads(answers[0].content or b"")["checks"]["store"]["status"] == "store_timeout"
    assert 0.3 <= took < 1.5 and beat >= 10
    assert store.pings == 1
    # The ping still hangs: the next probe answers at once, without a second stuck thread.
    start = time.monotonic()
    assert (await probe.answer("/readyz", store)).status_code == 503
    assert time.monotonic() - start < 0.1 and store.pings == 1
    release.set()
    store.hang = None
    deadline = time.monotonic() + 5
    while (await probe.answer("/readyz", store)).status_code != 200:  # back once it returns
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)


def test_timed_store_records_latency_and_errors_but_not_contention() -> None:
    metrics = Metrics()
    store = TimedStore(MemoryStore(), metrics)
    token = Token("t" * 20, expires_at=time.time() + 60, obtained_at=time.time())
    with store.lock("api#x", timeout=1):
        record = store.put("api#x", token, None)
    assert store.get("api#x") == record
    from proxy_addon.store import VersionConflict

    with pytest.raises(VersionConflict):
        store.put("api#x", token, None)

    class Down(MemoryStore):
        def get(self, credential: str):  # type: ignore[no-untyped-def]
            raise StoreUnavailableError("down")

    with pytest.raises(StoreUnavailableError):
        TimedStore(Down(), metrics).get("api#x")
    text = metrics.prometheus({}, [])
    assert 'authproxy_store_operation_seconds_count{op="get"} 2' in text
    assert 'authproxy_store_operation_seconds_count{op="put"} 2' in text
    assert 'authproxy_store_operation_seconds_count{op="lock"} 1' in text
    errors = [line for line in text.splitlines() if line.startswith("authproxy_store_errors")]
    assert errors == ['authproxy_store_errors_total{op="get",kind="unavailable"} 1']


def test_instrument_times_the_caches_store() -> None:
    from proxy_addon.instrument import instrument
    from proxy_addon.runtime import Runtime

    cfg = config(credentials={"api": {"grant": "client_credentials", "token_url":
                                      "https://idp.example.test/token", "client_id": "c",
                                      "client_secret": "s"}})  # fmt: skip
    rt = Runtime.build(cfg, env={})
    metrics = Metrics()
    instrument(rt, metrics)
    assert isinstance(rt.caches["api"].store, TimedStore)
    rt.caches["api"].store.get("nothing")  # type: ignore[union-attr]
    assert 'authproxy_store_operation_seconds_count{op="get"} 1' in metrics.prometheus({}, [])
    rt.close()
