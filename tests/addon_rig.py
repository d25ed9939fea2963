"""An in-process stand-in for mitmproxy around the addon: its hooks in mitmproxy's order, a fake
token cache, a fake upstream, and a replay seam that runs the copy's hooks as mitmproxy would.
Runs in milliseconds; nothing listens on a port."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from mitmproxy import http
from mitmproxy.test import taddons, tflow

from proxy_addon.addon import AuthProxy
from proxy_addon.config import parse_config
from proxy_addon.errors import TokenUnavailable
from proxy_addon.runtime import Runtime
from proxy_addon.store import MemoryStore
from proxy_addon.tokens import Token

HOST = "api.example.test"


def make_token(n: int) -> Token:
    now = time.time()
    return Token(f"live-token-{n}-" + "t" * 30, expires_at=now + 3600, obtained_at=now)


class FakeCache:
    """The token cache's interface as the addon uses it; another module tests the real one."""

    def __init__(self, *, refreshable: bool = True) -> None:
        self.n = 1
        self.refreshes = 0
        self.rejected: list[Token] = []
        self.fail: Exception | None = None
        self.fail_refresh: Exception | None = None
        self.store = None
        self.grant = type("Grant", (), {"refreshable": refreshable})()

    @property
    def current(self) -> Token:
        return make_token(self.n)

    def ready(self) -> Token | None:
        return None if self.fail is not None else self.current

    async def token(self) -> Token:
        if self.fail is not None:
            raise self.fail
        return self.current

    async def replace_rejected(self, token: Token) -> Token:
        self.rejected.append(token)
        if self.fail_refresh is not None:
            raise self.fail_refresh
        self.n += 1
        self.refreshes += 1
        return self.current

    def status(self) -> Any:
        return None


async def hook(fn: Callable[..., Any], *args: Any) -> None:
    """Call an addon's hook as mitmproxy does: it finishes at once (None) or hands back an
    awaitable."""
    pending = fn(*args)
    if pending is not None:
        await pending


@dataclass
class Sent:
    """What went upstream: the request as it left, the token it carried."""

    method: str
    authority: str
    host_header: str | None
    authorization: str | None
    body_is_original: bool
    streamed: bool


Upstream = Callable[[http.Request], http.Response]


def ok(_: http.Request) -> http.Response:
    return http.Response.make(200, b"fine")


@dataclass
class Rig:
    addon: AuthProxy
    cache: FakeCache
    upstream: Upstream = ok
    sent: list[Sent] = field(default_factory=list)
    replays: int = 0

    async def send(self, flow: http.HTTPFlow) -> http.HTTPFlow:
        """mitmproxy's order for one flow: requestheaders, request, (upstream), responseheaders,
        response; or error when the connection fails."""
        original_body = flow.request.raw_content
        await hook(self.addon.requestheaders, flow)
        if flow.error or (flow.response is None and not flow.live):
            return flow
        if flow.response is None:
            req = flow.request
            self.sent.append(Sent(
                req.method, req.authority, req.headers.get("host"),
                req.headers.get("authorization"),
                body_is_original=req.raw_content is original_body, streamed=bool(req.stream),
            ))  # fmt: skip
            flow.response = self.upstream(req)
            await hook(self.addon.responseheaders, flow)
        await hook(self.addon.response, flow)
        return flow

    async def replay(self, copy: http.HTTPFlow) -> None:
        self.replays += 1
        copy.live = True  # as mitmproxy's HttpStream makes a replayed flow
        await self.send(copy)


def routed_flow(
    path: str = "/v1/x",
    *,
    host: str = HOST,
    port: int = 443,
    scheme: str = "https",
    sni: str | None = HOST,
    host_header: str | None = HOST,
    method: str = "GET",
    body: bytes = b"",
    **headers: str,
) -> http.HTTPFlow:
    f = tflow.tflow()
    req = f.request
    req.scheme, req.host, req.port, req.path, req.method = scheme, host, port, path, method
    req.headers.clear()
    if host_header is not None:
        req.headers["Host"] = host_header
    for k, v in headers.items():
        req.headers[k.replace("_", "-")] = v
    req.content = body
    f.client_conn.sni = sni
    return f


def routed_websocket_flow() -> http.HTTPFlow:
    """A WebSocket handshake to the routed host, before its answer (as requestheaders sees it)."""
    f = tflow.twebsocketflow()
    f.request.scheme, f.request.host, f.request.port = "https", HOST, 443
    f.request.headers["Host"] = HOST
    f.client_conn.sni = HOST
    f.response = None
    return f


def config(*routes: dict[str, Any], **top: Any) -> Any:
    data = {
        "credentials": {"api": {"grant": "static", "token": "configured-" + "s" * 20}},
        "routes": list(routes) or [{"host": HOST, "port": 443, "credential": "api"}],
        "store": {"backend": "memory"},
        **top,
    }
    return parse_config(data, "test.yaml", env={})


def in_process(
    test: Callable[..., Coroutine[Any, Any, None]],
) -> Callable[..., None]:
    """Run an async test body inside mitmproxy's test master (taddons), on a fresh loop."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


class rig_context:
    """`async with rig_context(cfg) as rig:` an addon loaded in taddons, with a FakeCache."""

    def __init__(self, cfg: Any = None, *extra_addons: Any, refreshable: bool = True) -> None:
        self.cfg = cfg if cfg is not None else config()
        self.extra = extra_addons
        self.refreshable = refreshable

    async def __aenter__(self) -> Rig:
        cache = FakeCache(refreshable=self.refreshable)
        self.rig = Rig(AuthProxy(), cache)
        self.rig.addon.replay = self.rig.replay
        self.ctx = taddons.context(self.rig.addon, *self.extra)
        self.tctx = self.ctx.__enter__()
        self.rig.addon.runtime = Runtime(self.cfg, MemoryStore(), {"api": cache}, None)  # type: ignore[dict-item]
        return self.rig

    async def __aexit__(self, *exc: object) -> None:
        self.ctx.__exit__(None, None, None)


def unavailable(code: str = "idp_unreachable") -> TokenUnavailable:
    return TokenUnavailable("api", code, "the IdP did not answer")
