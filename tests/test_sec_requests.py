"""The addon's request path in-process (issue 8: 1, 4, 5, 6, 8, 11 and the status page; issue 14:
6, 9; issue 12: 2, 3): each test is an attack or fault that got a token to the wrong place, or
left a client without an answer, before."""

from __future__ import annotations

import gzip

import pytest
from addon_rig import (
    HOST,
    config,
    hook,
    in_process,
    make_token,
    rig_context,
    routed_flow,
    routed_websocket_flow,
    unavailable,
)
from layer_rig import Http1Rig, addon_hooks, chunked, post_head
from mitmproxy import ctx, http
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.net.http import http1
from mitmproxy.test import tflow

from proxy_addon import compat
from proxy_addon.decision import decide
from proxy_addon.redact import StreamScrubber, decoded_body

LIVE = "live-token-"


def _error(flow: http.HTTPFlow) -> str | None:
    return flow.response.headers.get("X-Authproxy-Error") if flow.response else None


# --- 8.1: every name the request carries must name the real destination ----------------------


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"authority": "other.example.net"}, "misdirected_request"),  # curl --request-target
        ({"authority": f"{HOST}:8443"}, "misdirected_request"),
        ({"authority": f"{HOST}:443"}, None),
        ({"authority": HOST}, None),
        ({"host_header": f"{HOST}:8443"}, "misdirected_request"),  # the port counts too
        ({"host_header": f"{HOST}:443"}, None),
        ({"host_header": "other.example.net"}, "misdirected_request"),
        ({"sni": "other.example.net"}, "misdirected_request"),
        ({"host_header": "bad host"}, "misdirected_request"),
    ],
)
@in_process
async def test_every_name_must_match_the_connect_target(change: dict, code: str | None) -> None:
    async with rig_context() as rig:
        authority = change.pop("authority", "")
        flow = routed_flow(**change)
        flow.request.authority = authority
        await rig.send(flow)
        assert _error(flow) == code
        if code:
            assert rig.sent == []
        else:
            (sent,) = rig.sent
            assert sent.authorization and LIVE in sent.authorization
            assert sent.authority == ""  # origin form upstream, whatever the client sent


@in_process
async def test_two_host_headers_are_refused() -> None:
    async with rig_context() as rig:
        flow = routed_flow()
        flow.request.headers.add("Host", "other.example.net")
        await rig.send(flow)
        assert _error(flow) == "misdirected_request"
        assert "2 Host headers" in flow.response.text
        assert rig.sent == []


@pytest.mark.parametrize(
    ("authority", "host_header", "code"),
    [
        (HOST, None, None),
        ("other.example.net", None, "misdirected_request"),
        (HOST, "other.example.net", "misdirected_request"),  # validate_inbound_headers=false
    ],
)
@in_process
async def test_http2_authority_and_host_must_agree(authority, host_header, code) -> None:
    async with rig_context() as rig:
        flow = routed_flow(host_header=host_header)
        flow.request.http_version = "HTTP/2.0"
        flow.request.authority = authority
        await rig.send(flow)
        assert _error(flow) == code
        if code is None:
            assert rig.sent[0].authority == HOST  # h2 keeps :authority, and it was checked


@in_process
async def test_the_401_retry_also_goes_in_origin_form_with_the_new_token() -> None:
    async with rig_context() as rig:
        answers = iter([http.Response.make(401), http.Response.make(200, b"ok")])
        rig.upstream = lambda _req: next(answers)
        flow = routed_flow()
        flow.request.authority = f"{HOST}:443"
        await rig.send(flow)
        assert flow.response.status_code == 200
        assert [s.authority for s in rig.sent] == ["", ""]
        assert [s.authorization for s in rig.sent] == [
            f"Bearer {make_token(1).access_token}", f"Bearer {make_token(2).access_token}",
        ]  # fmt: skip


@in_process
async def test_socks5_and_plain_http_check_the_same_names() -> None:
    cfg = config({"host": HOST, "port": 80, "scheme": "http", "allow_http": True,
                  "credential": "api"})  # fmt: skip
    async with rig_context(cfg) as rig:
        flow = routed_flow(scheme="http", port=80, sni=None, host_header="other.example.net")
        await rig.send(flow)
        assert _error(flow) == "misdirected_request"
        assert rig.sent == []


# --- 8.4: proxy credentials never stay in a flow ---------------------------------------------


@in_process
async def test_proxyauth_credentials_are_dropped_from_every_flow() -> None:
    async with rig_context() as rig:
        routed, other = routed_flow(), routed_flow(host="elsewhere.test", host_header=None)
        for f in (routed, other):
            f.metadata["proxyauth"] = ("ops", "proxy-password-123")
            await rig.send(f)
            assert "proxyauth" not in f.metadata
        connect = tflow.tflow()
        connect.request.method = "CONNECT"
        connect.metadata["proxyauth"] = ("ops", "proxy-password-123")
        rig.addon.http_connect(connect)
        assert "proxyauth" not in connect.metadata


# --- 8.5: cross-site pages on plain-http routes ----------------------------------------------


HTTP_ROUTE = {"host": HOST, "port": 80, "scheme": "http", "allow_http": True, "credential": "api"}


@pytest.mark.parametrize(
    ("headers", "allow", "code"),
    [
        ({"Origin": "http://evil.test"}, False, "cross_site_refused"),
        ({"Origin": "null"}, False, "cross_site_refused"),
        ({"Referer": "http://evil.test/page"}, False, "cross_site_refused"),
        ({"Origin": f"http://{HOST}:8080"}, False, "cross_site_refused"),
        ({"Origin": f"https://{HOST}"}, False, "cross_site_refused"),
        ({"Origin": f"http://{HOST}"}, False, None),
        ({"Referer": f"http://{HOST}/app"}, False, None),
        ({"Sec-Fetch-Site": "cross-site"}, False, "cross_site_refused"),
        ({"Origin": "http://evil.test"}, True, None),
        ({}, False, None),
    ],
)
@in_process
async def test_cross_site_pages_are_refused_on_http_routes(headers, allow, code) -> None:
    async with rig_context(config({**HTTP_ROUTE, "allow_cross_site": allow})) as rig:
        flow = routed_flow(scheme="http", port=80, sni=None)
        flow.request.headers.update(headers)
        await rig.send(flow)
        assert _error(flow) == code
        assert bool(rig.sent) is (code is None)


# --- 8.11: echoed tokens ----------------------------------------------------------------------


def _echo(where: str, encoding: str = "") -> object:
    def upstream(req: http.Request) -> http.Response:
        secret = (req.headers.get("authorization") or "").removeprefix("Bearer ")
        resp = http.Response.make(200, b"")
        if where == "reason":
            resp.reason = f"OK {secret}"
        elif where == "trailers":
            resp.trailers = http.Headers(x_echo=secret)
        elif where == "header":
            resp.headers.add("X-Echo", "a")
            resp.headers.add("X-Echo", secret)
        else:
            body = f'{{"seen": "{secret}"}}'.encode()
            for name in reversed([e.strip() for e in encoding.split(",") if e.strip()]):
                if name in ("gzip", "x-gzip"):
                    body = gzip.compress(body)
            if encoding:
                resp.headers["content-encoding"] = encoding
            resp.raw_content = body
        return resp

    return upstream


@pytest.mark.parametrize(
    ("where", "encoding"),
    [("reason", ""), ("trailers", ""), ("header", ""), ("body", ""), ("body", "gzip"),
     ("body", "x-gzip"), ("body", "gzip, gzip"), ("body", "identity, gzip"),
     ("body", "gzip,identity")],
)  # fmt: skip
@in_process
async def test_echoed_token_is_scrubbed_everywhere(where: str, encoding: str) -> None:
    async with rig_context() as rig:
        rig.upstream = _echo(where, encoding)  # type: ignore[assignment]
        flow = await rig.send(routed_flow())
        resp = flow.response
        everything = [resp.reason, str(resp.headers), str(resp.trailers),
                      resp.get_content(strict=False) or b""]  # fmt: skip
        secret = make_token(1).access_token
        assert not any(secret in (t if isinstance(t, str) else t.decode("latin-1"))
                       for t in everything)  # fmt: skip
        assert "<redacted:api:" in "".join(map(str, everything))


def _raw(body: bytes, encoding: str) -> http.Response:
    resp = http.Response.make(200)
    resp.headers["content-encoding"] = encoding
    resp.raw_content = body  # as it came off the wire, not encoded once more
    return resp


@in_process
async def test_undecodable_answer_is_withheld() -> None:
    async with rig_context() as rig:
        rig.upstream = lambda _r: _raw(b"\x1f\x8bnot gzip at all", "gzip")
        flow = await rig.send(routed_flow())
        assert flow.response.status_code == 502
        assert _error(flow) == "unscannable_response"
        rig.upstream = lambda _r: _raw(b"data", "compress")
        flow = await rig.send(routed_flow())
        assert _error(flow) == "unscannable_response"


@in_process
async def test_plain_answer_without_the_token_is_left_alone() -> None:
    async with rig_context() as rig:
        body = gzip.compress(b"nothing secret")
        rig.upstream = lambda _r: _raw(body, "gzip")
        flow = await rig.send(routed_flow())
        assert flow.response.raw_content == body  # not re-encoded, not touched
        assert flow.response.headers["content-encoding"] == "gzip"


def test_decoded_body_undoes_stacked_encodings() -> None:
    assert decoded_body(gzip.compress(gzip.compress(b"x")), "gzip, gzip") == b"x"
    assert decoded_body(gzip.compress(b"x"), "identity, x-gzip") == b"x"
    assert decoded_body(b"x", "compress") is None


@pytest.mark.parametrize("cut", [1, 5, 20, 39])
def test_stream_scrubber_catches_a_token_split_across_chunks(cut: int) -> None:
    secret = "s" * 10 + "e" * 30
    data = b"head " + secret.encode() + b" tail " + secret.encode()
    scrub = StreamScrubber(secret, "<redacted:api:ab12>")
    out = b"".join(scrub(c) for c in (data[: 5 + cut], data[5 + cut :], b""))
    assert secret.encode() not in out
    assert len(out) == len(data)  # a Content-Length stays true
    assert out.startswith(b"head <redacted:api:ab12>*")


@in_process
async def test_streamed_answer_gets_the_scrubber_and_encoded_stream_is_withheld() -> None:
    async with rig_context() as rig:

        def streamed(encoding: str):  # type: ignore[no-untyped-def]
            def upstream(_r: http.Request) -> http.Response:
                resp = http.Response.make(200, b"", {"Content-Encoding": encoding} if encoding
                                          else {})  # fmt: skip
                resp.stream = True
                return resp

            return upstream

        rig.upstream = streamed("")
        flow = await rig.send(routed_flow())
        assert isinstance(flow.response.stream, StreamScrubber)
        secret = make_token(1).access_token.encode()
        assert secret not in flow.response.stream(b"x" + secret) + flow.response.stream(b"")

        rig.upstream = streamed("gzip")
        flow = await rig.send(routed_flow())
        assert flow.response.status_code == 502 and _error(flow) == "unscannable_response"
        first = flow.response.stream(gzip.compress(secret))
        assert b"unscannable_response" in first and secret not in first
        assert flow.response.stream(b"more") == b""
        assert int(flow.response.headers["content-length"]) == len(first)


@in_process
async def test_websocket_messages_from_the_server_are_scrubbed() -> None:
    async with rig_context() as rig:
        flow = routed_websocket_flow()
        await hook(rig.addon.requestheaders, flow)
        secret = make_token(1).access_token
        assert secret in flow.request.headers["authorization"]
        flow.response = http.Response.make(101)
        await hook(rig.addon.response, flow)
        from mitmproxy.websocket import WebSocketMessage
        from wsproto.frame_protocol import Opcode

        flow.websocket.messages.append(
            WebSocketMessage(Opcode.TEXT, False, f"you sent {secret}".encode())
        )
        await hook(rig.addon.websocket_message, flow)
        assert secret.encode() not in flow.websocket.messages[-1].content
        assert b"<redacted:api:" in flow.websocket.messages[-1].content


# --- status page: only for requests to the proxy as a proxy -----------------------------------


def _parsed(*lines: bytes) -> http.Request:
    compat.mark_request_forms()
    req = http1.read_request_head([*lines, b""][:-1])
    return req


@pytest.mark.parametrize(
    ("line", "action"),
    [
        (b"GET http://authproxy.local/status.json HTTP/1.1", "status"),
        (b"GET /status.json HTTP/1.1", "refuse"),  # Host: authproxy.local straight to the port
    ],
)
def test_status_page_only_for_absolute_form(line: bytes, action: str) -> None:
    req = _parsed(line, b"Host: authproxy.local")
    if not req.host:  # origin form: mitmproxy takes the destination from the Host header
        req.data.host, req.data.port = "authproxy.local", 80
    req.scheme = "http"
    req.authority = ""  # what mitmproxy's regular mode does before the first hook
    flow = tflow.tflow()
    flow.request = req
    assert decide(flow, config().routes).action == action


# --- 14.6: upgrades and streamed bodies never hang ---------------------------------------------


@in_process
async def test_websocket_upgrade_answered_401_is_not_resent_but_gets_a_new_token() -> None:
    async with rig_context() as rig:
        rig.upstream = lambda _r: http.Response.make(401)
        flow = routed_flow(Connection="Upgrade", Upgrade="websocket")
        await rig.send(flow)
        assert flow.response.status_code == 401  # the client's own answer
        assert rig.replays == 0 and len(rig.sent) == 1
        rejected = rig.addon.runtime.caches["api"].rejected
        assert [t.access_token for t in rejected] == [make_token(1).access_token]
        flow2 = await rig.send(routed_flow(Connection="Upgrade", Upgrade="websocket"))
        assert make_token(2).access_token in (rig.sent[-1].authorization or "")
        assert flow2.response.status_code == 401


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@in_process
async def test_streamed_upload_refused_at_once_is_answered_with_the_error(framing: str) -> None:
    """The credential backing off: `token()` fails without waiting, while the body is still to
    come. The client gets the 502 with its error code once it has sent its body (which is
    dropped), not a killed connection (which mitmproxy 12 may leave open: curl hung)."""
    async with rig_context(config(), Proxyserver()) as rig:  # mitmproxy's proxy options
        rig.cache.fail = unavailable()
        body = b"z" * 200_000
        if framing == "chunked":
            head, pieces = post_head(HOST, Transfer_Encoding="chunked"), chunked(body)
        else:
            head, pieces = post_head(HOST, Content_Length=str(len(body))), [body]
        client = Http1Rig(addon_hooks(rig.addon), HOST, opts=ctx.options,
                          listen_host="127.0.0.1", stream_large_bodies="1k")  # fmt: skip
        await client.start()
        for piece in [head, *pieces]:
            await client.send(piece)
        head_out, _, body_out = bytes(client.to_client).partition(b"\r\n\r\n")
        answer = http1.read_response_head(head_out.split(b"\r\n"))
        assert answer.status_code == 502
        assert answer.headers.get("X-Authproxy-Error") == "token_unavailable"
        assert b'"token_unavailable"' in body_out
        (flow,) = client.flows
        assert flow.error is None and not client.client_closed  # answered, not killed
        assert client.upstream == []  # nothing went upstream, not even the head


# --- 14.9: a retried body is kept once -------------------------------------------------------


@in_process
async def test_retried_body_is_not_copied() -> None:
    async with rig_context() as rig:
        answers = iter([http.Response.make(401), http.Response.make(200, b"ok")])
        rig.upstream = lambda _r: next(answers)
        flow = routed_flow(method="POST", body=b"z" * 1_000_000)
        await rig.send(flow)
        assert flow.response.status_code == 200
        first, retry = rig.sent
        assert first.body_is_original and retry.body_is_original  # one bytes object throughout
        # and mitmproxy's replay sends it without a copy: tests/test_compat.py


# --- 12.2/12.3: hooks never raise, replay is a seam, retry-once in one place -----------------


@in_process
async def test_a_replay_that_raises_gives_502_not_an_exception() -> None:
    async with rig_context() as rig:
        rig.upstream = lambda _r: http.Response.make(401)

        async def broken(_copy: http.HTTPFlow) -> None:
            raise RuntimeError("mitmproxy internals changed")

        rig.addon.replay = broken
        flow = await rig.send(routed_flow())
        assert flow.response.status_code == 502 and _error(flow) == "retry_failed"
        assert "authorization" not in flow.request.headers or LIVE not in str(flow.request.headers)


@in_process
async def test_a_failing_hook_answers_502_and_redacts() -> None:
    async with rig_context() as rig:

        class Exploding:
            refreshable = property(lambda self: 1 / 0)

        rig.cache.grant = Exploding()
        rig.upstream = lambda _r: http.Response.make(401)
        flow = await rig.send(routed_flow())  # raises nothing
        assert flow.response.status_code == 502 and _error(flow) == "internal_error"
        assert LIVE not in str(flow.request.headers)


@in_process
async def test_an_unexpected_token_error_fails_closed() -> None:
    async with rig_context() as rig:
        rig.cache.fail = KeyError("boom")
        flow = await rig.send(routed_flow())
        assert flow.response.status_code == 502 and rig.sent == []


@in_process
async def test_retry_happens_once_and_the_copy_knows_it_is_a_copy() -> None:
    async with rig_context() as rig:
        rig.upstream = lambda _r: http.Response.make(401)
        flow = await rig.send(routed_flow())
        assert flow.response.status_code == 401
        assert rig.replays == 1 and len(rig.sent) == 2  # one re-send, never two
        assert flow.metadata["authproxy"]["retried"] is True
        assert "retry_of" not in flow.metadata["authproxy"]


@in_process
async def test_a_refused_retry_token_gives_502() -> None:
    async with rig_context() as rig:
        rig.upstream = lambda _r: http.Response.make(401)
        rig.cache.fail_refresh = unavailable("invalid_grant")
        flow = await rig.send(routed_flow())
        assert _error(flow) == "token_unavailable" and rig.replays == 0


@in_process
async def test_client_authorization_on_a_copy_is_the_proxys_business() -> None:
    cfg = config({"host": HOST, "port": 443, "credential": "api",
                  "existing_authorization": "reject"})  # fmt: skip
    async with rig_context(cfg) as rig:
        rig.upstream = lambda _r: http.Response.make(401)
        flow = await rig.send(routed_flow())
        assert rig.replays == 1 and len(rig.sent) == 2  # the copy is not refused
        flow = await rig.send(routed_flow(Authorization="Basic dTpw"))
        assert _error(flow) == "authorization_present"


# --- 8.6: any master with a flow view gets the in-flight hiding --------------------------------


@in_process
async def test_a_master_with_a_view_never_holds_a_live_token() -> None:
    from mitmproxy.addons.view import View

    view = View()
    async with rig_context(None, view) as rig:
        rig.addon.running()  # mitmweb -s / the console: the view exists once running
        assert rig.addon.on_redacted is not None
        flow = routed_flow()
        await hook(rig.addon.requestheaders, flow)
        view.requestheaders(flow)  # the view runs after the addon, as in mitmproxy's chain
        assert LIVE in flow.request.headers["authorization"]
        assert view.get_by_id(flow.id) is None
        flow.response = http.Response.make(200)
        await hook(rig.addon.response, flow)
        assert view.get_by_id(flow.id) is flow  # shown once redacted
        assert LIVE not in flow.request.headers["authorization"]
