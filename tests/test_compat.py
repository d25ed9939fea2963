"""What `proxy_addon/compat.py` relies on in mitmproxy's internals. A failure here after a
mitmproxy upgrade names the compat function to fix; nothing else in the code base may touch
these internals."""

from __future__ import annotations

import asyncio
import threading
import tracemalloc
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from layer_rig import Http1Rig, chunked, post_head
from mitmproxy import http
from mitmproxy.addons import view as view_addon
from mitmproxy.net.http import http1
from mitmproxy.test import taddons, tflow

from proxy_addon import compat
from proxy_addon.netutil import free_port

HOST = "api.example.test"


class _Echo(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        size = int(self.headers["content-length"])
        remaining = size
        while remaining:
            remaining -= len(self.rfile.read(min(remaining, 1 << 20)))
        body = str(size).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[int]:
    srv = ThreadingHTTPServer(("127.0.0.1", free_port()), _Echo)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def _post(port: int, body: bytes) -> http.HTTPFlow:
    f = tflow.tflow()
    f.response = None
    req = f.request
    req.scheme, req.host, req.port, req.method, req.path = "http", "127.0.0.1", port, "POST", "/"
    req.headers.clear()
    req.headers["host"] = f"127.0.0.1:{port}"
    req.content = body
    return f


def _mitmproxy() -> taddons.context:
    """A test master with mitmproxy's default addons (replay needs its DNS resolution)."""
    from mitmproxy import addons

    plain = [a for a in addons.default_addons() if type(a).__name__ != "TlsConfig"]
    return taddons.context(*plain, loadcore=False)


async def _replay_peak(port: int, body: bytes) -> tuple[http.HTTPFlow, int]:
    with _mitmproxy():
        flow = _post(port, body)
        tracemalloc.start()
        try:
            await compat.replay(flow)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        return flow, peak


def test_replay_sends_through_mitmproxy_without_copying_the_body(server: int) -> None:
    """compat.replay: mitmproxy's ReplayHandler still sends a flow and waits for its answer,
    and sends the body the flow holds without a copy of it (a 401 retry of a large upload
    keeps one body in memory, issue 14.9)."""
    body = b"z" * 8_000_000
    flow, peak = asyncio.run(_replay_peak(server, body))
    assert flow.response is not None and flow.response.content == str(len(body)).encode()
    assert flow.request.raw_content is body
    assert peak < 0.5 * len(body)


def test_replay_failure_becomes_an_error_not_an_exception() -> None:
    async def go() -> http.HTTPFlow:
        with _mitmproxy():
            flow = _post(free_port(), b"x")  # nothing listens there
            await asyncio.wait_for(compat.replay(flow), 30)
            return flow

    flow = asyncio.run(go())
    assert flow.response is None and flow.error is not None


def test_place_after_proxyauth_puts_the_addon_before_save_and_view() -> None:
    from mitmproxy import options
    from mitmproxy.tools.web.master import WebMaster

    async def go() -> list[str]:
        m = WebMaster(options.Options(), with_termlog=False)
        marker = type("Marker", (), {})()
        compat.place_after_proxyauth(m, marker)
        names = [type(a).__name__ for a in m.addons.chain]
        i = names.index("Marker")
        assert names[i - 1] == "ProxyAuth"
        assert i < names.index("Save") and i < names.index("View")
        return names

    asyncio.run(go())


def test_hide_in_flight_keeps_live_flows_out_of_the_view() -> None:
    live: set[str] = set()
    v = view_addon.View()
    show, visible = compat.hide_in_flight(v, lambda f: f.id in live)
    compat.hide_in_flight(v, lambda f: f.id in live)  # applying twice changes nothing
    with taddons.context(v):
        hidden, shown = tflow.tflow(), tflow.tflow()
        live.add(hidden.id)
        v.requestheaders(hidden)
        v.requestheaders(shown)
        assert not visible(hidden) and visible(shown)
        v.update([hidden])  # an update of a flow the view does not hold is ignored
        assert not visible(hidden)
        live.clear()
        show(hidden)
        assert visible(hidden)


def test_request_form_marker_wraps_mitmproxys_http1_parser() -> None:
    import inspect

    from mitmproxy.proxy.layers.http import _http1

    # The layer must call the parser through the module attribute the marker wraps.
    assert "http1.read_request_head(" in inspect.getsource(_http1)
    compat.mark_request_forms()
    compat.mark_request_forms()  # idempotent
    absolute = http1.read_request_head([b"GET http://authproxy.local/ HTTP/1.1", b"Host: x"])
    origin = http1.read_request_head([b"GET / HTTP/1.1", b"Host: authproxy.local"])
    absolute.authority = ""  # mitmproxy's regular mode forgets the form before any hook
    assert compat.absolute_form(absolute)
    assert not compat.absolute_form(origin)


def test_regular_mode_still_drops_the_authority_before_the_first_hook() -> None:
    """Why the marker is needed, and why origin form upstream is our job inside a tunnel:
    mitmproxy clears `authority` only for regular-mode requests, not in a tunnel."""
    import inspect

    from mitmproxy.proxy.layers import http as http_layer

    src = inspect.getsource(http_layer.HttpStream.state_wait_for_request_headers)
    assert "self.mode is HTTPMode.regular" in src and 'request.authority = ""' in src


# --- install_body_discard / discard_request_body ---------------------------------------------

BODY = b"z" * 200_000


def _framed(framing: str) -> tuple[bytes, list[bytes]]:
    """A request head naming a 200 KB body, and that body as the client's pieces of wire data."""
    if framing == "chunked":
        return post_head(HOST, Transfer_Encoding="chunked"), chunked(BODY)
    pieces = [BODY[i : i + 16_384] for i in range(0, len(BODY), 16_384)]
    return post_head(HOST, Content_Length=str(len(BODY))), pieces


def _answer_before_the_body(flow: http.HTTPFlow) -> None:
    flow.request.stream = False
    flow.response = http.Response.make(403, b"refused")
    compat.discard_request_body(flow)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_body_answered_in_requestheaders_is_read_and_dropped_then_answered(framing: str) -> None:
    """What the addon's refusals rely on: with stream_large_bodies, mitmproxy streams (or, with
    an answer set, crashes on) a body that grows past the limit; marked, it drops it instead."""
    compat.install_body_discard()
    compat.install_body_discard()  # idempotent

    async def run() -> None:
        hooks = {"requestheaders": _answer_before_the_body}
        rig = await Http1Rig(hooks, HOST, stream_large_bodies="1k").start()
        head, pieces = _framed(framing)
        await rig.send(head)
        for piece in pieces[:-1]:
            await rig.send(piece)
        assert rig.to_client == b""  # HTTP/1: the answer follows the whole request
        await rig.send(pieces[-1])
        assert rig.to_client.startswith(b"HTTP/1.1 403 ")
        assert rig.to_client.endswith(b"refused")
        assert rig.upstream == [] and not rig.client_closed  # nothing upstream, kept alive
        (flow,) = rig.flows
        assert flow.request.raw_content == b""  # dropped as it came, never held
        # The connection stays usable: the next request on it is read as one.
        await rig.send(post_head(HOST, Content_Length="0"))
        assert len(rig.flows) == 2

    asyncio.run(run())


def test_mitmproxy_still_checks_every_kept_request_chunk_in_check_body_size() -> None:
    import inspect

    from mitmproxy.proxy.layers import http as http_layer

    src = inspect.getsource(http_layer.HttpStream.state_consume_request_body)
    assert "self.request_body_buf += event.data" in src, "compat.install_body_discard: update"
    assert "self.check_body_size(True)" in src, "compat.install_body_discard: update"


def test_a_body_not_marked_still_streams_as_mitmproxy_decides() -> None:
    compat.install_body_discard()

    async def run() -> None:
        rig = await Http1Rig({}, HOST, stream_large_bodies="1k").start()
        head, _ = _framed("content-length")
        await rig.send(head)
        assert rig.flows[0].request.stream is True
        assert len(rig.upstream) == 1  # streaming: the upstream connection is asked for at once

    asyncio.run(run())
