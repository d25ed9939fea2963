"""mitmproxy's own HTTP/1 state machine in-process: the client's bytes go in, each hook is run
by a callback (an addon's method), and out come the bytes the client gets and any upstream
connection mitmproxy asks for. For what only mitmproxy's layers show (when a body streams,
what an answer set in a hook does to it) without sockets or a process. Nothing here is faked:
the layers are mitmproxy's, only the event loop around them is this small driver."""

from __future__ import annotations

import inspect
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from mitmproxy import connection, http, options
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.proxy import commands, context, events
from mitmproxy.proxy.layers import http as http_layers

Hook = Callable[..., Awaitable[None] | None]


class Http1Rig:
    """One client connection inside a CONNECT tunnel to `host:port` (mitmproxy runs such a
    tunnel's HTTP in transparent mode), with mitmproxy's proxy options set as given. `opts`:
    the options to use (a test master's, so that addons and layers read the same ones)."""

    def __init__(
        self,
        hooks: dict[str, Hook],
        host: str,
        port: int = 443,
        *,
        opts: options.Options | None = None,
        **settings: Any,
    ) -> None:
        self.hooks = hooks
        self.options = opts if opts is not None else options.Options()
        if "stream_large_bodies" not in self.options:
            Proxyserver().load(self.options)  # the proxy options the layers read
        self.options.update(**settings)
        self.client = connection.Client(
            peername=("127.0.0.1", 40000), sockname=("127.0.0.1", 8080), timestamp_start=1.0,
            state=connection.ConnectionState.OPEN, tls=True, sni=host,
        )  # fmt: skip
        ctx = context.Context(self.client, self.options)
        ctx.server.address = (host, port)
        ctx.server.tls = True
        self.layer = http_layers.HttpLayer(ctx, http_layers.HTTPMode.transparent)
        self.to_client = bytearray()
        self.client_closed = False
        self.upstream: list[commands.Command] = []  # every connection asked for, upstream
        self.flows: list[http.HTTPFlow] = []

    async def start(self) -> Http1Rig:
        await self._run(events.Start())
        return self

    async def send(self, data: bytes) -> None:
        await self._run(events.DataReceived(self.client, data))

    async def _run(self, first: events.Event) -> None:
        queue: deque[events.Event] = deque([first])
        while queue:
            for cmd in self.layer.handle_event(queue.popleft()):
                if isinstance(cmd, commands.SendData) and cmd.connection is self.client:
                    self.to_client += cmd.data
                elif isinstance(cmd, commands.CloseConnection) and cmd.connection is self.client:
                    self.client_closed = True
                elif isinstance(cmd, commands.StartHook):
                    args = cmd.args()
                    flow = args[0] if args else None
                    if isinstance(flow, http.HTTPFlow) and flow not in self.flows:
                        self.flows.append(flow)
                    hook = self.hooks.get(cmd.name)
                    if hook is not None:
                        result = hook(*args)
                        if inspect.isawaitable(result):
                            await result
                    if cmd.blocking:
                        queue.append(events.HookCompleted(cmd))
                elif isinstance(cmd, (commands.OpenConnection, http_layers.GetHttpConnection)):
                    self.upstream.append(cmd)  # left unanswered: the flow goes no further
                elif not isinstance(cmd, commands.Log):
                    raise AssertionError(f"the rig does not handle {cmd!r}")


def addon_hooks(addon: object) -> dict[str, Hook]:
    """The HTTP hooks of `addon`, by name, as mitmproxy would call them."""
    names = ("requestheaders", "request", "responseheaders", "response", "error")
    return {n: getattr(addon, n) for n in names if callable(getattr(addon, n, None))}


def post_head(host: str, path: str = "/upload", **headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def chunked(body: bytes, size: int = 16_384) -> list[bytes]:
    """`body` in HTTP/1.1 chunked framing, one piece of wire data per chunk, and the last one."""
    parts = [b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size])
             for i in range(0, len(body), size)]  # fmt: skip
    return [*parts, b"0\r\n\r\n"]
