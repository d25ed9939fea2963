"""Every use of mitmproxy internals, in one place.

mitmproxy has no public API for these; each is pinned by a test in `tests/test_compat.py` (and
`server_tls` in `tests/test_creds_compat.py`, `share_listen_port` in
`tests/test_compat_reuse_port.py`) that fails loudly (naming the function here) when an upgrade
changes what it relies on:

- `replay`: send a flow upstream and wait for its answer (`ReplayHandler`, as ClientPlayback).
- `place_after_proxyauth`: put an addon right after proxy authentication in the hook chain.
- `hide_in_flight`: keep flows that carry a live token out of a flow view (mitmweb, console).
- `mark_request_forms`/`absolute_form`: remember which HTTP/1 requests named their target in
  absolute form, which mitmproxy forgets before the first hook.
- `server_tls`: the upstream TLS connection mitmproxy's TlsConfig builds, made early so that
  one connection can get a client certificate (its `client_certs` option is proxy-wide).
- `share_listen_port`: open mitmproxy's TCP listeners with SO_REUSEPORT, so that the worker
  processes of `authproxy run --workers N` all accept on one address (the kernel spreads the
  connections; no extra hop).
- `install_body_discard`/`discard_request_body`: answer a request in `requestheaders` while its
  body (one mitmproxy would stream) is still to come: read the body and drop it, then answer.

Nothing here runs at import time; the addon applies what it needs when it is loaded.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from mitmproxy import flow as mflow
from mitmproxy import http

__all__ = [
    "Replayer",
    "absolute_form",
    "discard_request_body",
    "hide_in_flight",
    "install_body_discard",
    "mark_request_forms",
    "place_after_proxyauth",
    "replay",
    "sent_to_listen_port",
    "server_tls",
    "share_listen_port",
]

logger = logging.getLogger("authproxy")


# --- replay ----------------------------------------------------------------------------------


class Replayer(Protocol):
    """Sends `flow.request` upstream and returns once `flow.response` or `flow.error` is set.
    Never raises: a failure becomes `flow.error`."""

    async def __call__(self, flow: http.HTTPFlow) -> None: ...


async def replay(flow: http.HTTPFlow) -> None:
    """mitmproxy's own upstream machinery (connection, TLS, certificate checks), as its
    ClientPlayback uses it, with the same guard: an exception is logged and becomes an error."""
    from mitmproxy import ctx
    from mitmproxy.addons.clientplayback import ReplayHandler

    try:
        await ReplayHandler(flow, ctx.options).replay()
    except Exception as e:  # mitmproxy's ClientPlayback guards the same call the same way
        logger.exception("re-sending %s %s failed", flow.request.method, flow.request.host)
        if flow.error is None:
            flow.error = mflow.Error(f"re-sending failed: {type(e).__name__}")
    if flow.response is None and flow.error is None:
        flow.error = mflow.Error("re-sending gave no answer")


# --- addon chain -----------------------------------------------------------------------------


def place_after_proxyauth(master: Any, addon: object) -> None:
    """Right after proxy authentication (no token work for clients that fail it), and before
    everything that saves, shows or rewrites flows (save, savehar, dumper, map_remote, view)."""
    master.addons.add(addon)
    chain = master.addons.chain
    chain.remove(addon)
    proxyauth = master.addons.get("proxyauth")
    if proxyauth is None or proxyauth not in chain:
        raise RuntimeError("mitmproxy has no proxyauth addon in its chain: compat.place_after_"
                           "proxyauth needs updating for this mitmproxy version")  # fmt: skip
    chain.insert(chain.index(proxyauth) + 1, addon)


# --- upstream TLS ----------------------------------------------------------------------------


def server_tls(data: Any) -> Any:
    """The pyOpenSSL connection of `data` (a `tls.TlsData` of tls_start_server), built now by
    mitmproxy's TlsConfig as it would be right after our hook (it skips a `data` whose
    `ssl_conn` is set), so that a setting of this connection alone can be added."""
    if data.ssl_conn is None:
        from mitmproxy import ctx

        tlsconfig = ctx.master.addons.get("tlsconfig")
        if tlsconfig is None:
            raise RuntimeError("mitmproxy has no tlsconfig addon: compat.server_tls needs updating")
        tlsconfig.tls_start_server(data)
    return data.ssl_conn


# --- flow views ------------------------------------------------------------------------------

_HIDDEN = "_authproxy_hides_in_flight"


def hide_in_flight(
    view: Any,
    carries_token: Callable[[http.HTTPFlow], bool],
) -> tuple[Callable[[http.HTTPFlow], None], Callable[[http.HTTPFlow], bool]]:
    """Keep flows that carry a live token out of `view` (mitmproxy's View addon, which mitmweb
    and the console push to their UI on every change of a flow it holds).

    Returns (show, visible): `show(flow)` adds a flow once its token is redacted; `visible(flow)`
    says whether the view holds the flow already (then a token must go into an unseen copy).
    Applying it twice is harmless."""
    for name in ("requestheaders", "add", "get_by_id"):
        if not callable(getattr(view, name, None)):
            raise RuntimeError(f"mitmproxy's View has no {name}(): compat.hide_in_flight "
                               "needs updating for this mitmproxy version")  # fmt: skip
    if not getattr(view, _HIDDEN, False):
        add_to_view = view.requestheaders

        def requestheaders(flow: http.HTTPFlow) -> None:
            if not carries_token(flow):
                add_to_view(flow)

        view.requestheaders = requestheaders
        setattr(view, _HIDDEN, True)

    def show(flow: http.HTTPFlow) -> None:
        view.add([flow])

    def visible(flow: http.HTTPFlow) -> bool:
        return view.get_by_id(flow.id) is not None

    return show, visible


# --- request-line form -----------------------------------------------------------------------

# Requests whose HTTP/1 request line was in absolute form (`GET http://host/ HTTP/1.1`). In
# regular mode mitmproxy turns such a target into origin form before any hook runs, so an addon
# cannot tell it from `GET /` with a Host header sent straight to the listen port.
_absolute: weakref.WeakSet[http.Request] = weakref.WeakSet()


def mark_request_forms() -> None:
    """Wrap mitmproxy's HTTP/1 request-head parser to note absolute-form targets. Idempotent."""
    from mitmproxy.net.http import http1

    parse = http1.read_request_head
    if getattr(parse, "_authproxy", False):
        return

    def read_request_head(lines: list[bytes]) -> http.Request:
        request = parse(lines)
        if request.authority and request.method != "CONNECT":
            _absolute.add(request)
        return request

    read_request_head._authproxy = True  # type: ignore[attr-defined]
    http1.read_request_head = read_request_head  # type: ignore[assignment]


def absolute_form(request: http.Request) -> bool:
    """Whether the client named the target in its request line (a request *to a proxy*)."""
    return request in _absolute or bool(request.authority)


def sent_to_listen_port(flow: http.HTTPFlow) -> bool:
    """Whether the request came on a connection made to the proxy for itself, not through a
    CONNECT tunnel: until mitmproxy opens an upstream connection for it (after the request
    hooks), such a flow's server has no address; a tunnelled flow's has the tunnel's target."""
    return flow.server_conn.address is None


# --- answering a request before its body ----------------------------------------------------

# Flows answered in `requestheaders` whose request body is still to come: mitmproxy reads that
# body and drops it (HttpStream.check_body_size, wrapped below), then sends the answer.
_discarding: weakref.WeakSet[http.HTTPFlow] = weakref.WeakSet()


def discard_request_body(flow: http.HTTPFlow) -> None:
    """Read the rest of `flow`'s request body and drop it, instead of keeping it or streaming
    it upstream. For a flow answered in `requestheaders` (with `request.stream` unset): without
    this, mitmproxy starts streaming a body that grows past `stream_large_bodies` while it is
    read, and crashes on the answer already set (start_request_stream: "Can't set a response
    and enable streaming at the same time"). Needs `install_body_discard()`."""
    _discarding.add(flow)


def install_body_discard() -> None:
    """Wrap mitmproxy's HttpStream.check_body_size, which it calls for every chunk of a request
    body it keeps, so that it drops the chunks of flows given to `discard_request_body` (no
    memory held, no streaming started, no body_size_limit error for a body nobody reads).
    Idempotent. Raises RuntimeError when this mitmproxy has no such method."""
    from mitmproxy.proxy.layers.http import HttpStream

    check = getattr(HttpStream, "check_body_size", None)
    if getattr(check, "_authproxy", False):
        return
    if check is None or not inspect.isgeneratorfunction(check):
        raise RuntimeError("mitmproxy's HttpStream has no check_body_size generator: "
                           "compat.install_body_discard needs updating for this mitmproxy "
                           "version")  # fmt: skip

    def check_body_size(self: Any, request: bool) -> Any:
        if request and self.flow in _discarding:
            self.request_body_buf.clear()
            return False
        return (yield from check(self, request))

    check_body_size._authproxy = True  # type: ignore[attr-defined]
    HttpStream.check_body_size = check_body_size  # type: ignore[method-assign]


# --- a listen port shared by worker processes ------------------------------------------------


class _ReusePortAsyncio:
    """`asyncio` as mitmproxy's mode_servers sees it, with `start_server` adding reuse_port.

    Only that module's name is rebound (never the real asyncio): other listeners of the
    process (the web UI, a test's server) keep the exclusive bind."""

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    async def start_server(self, *args: Any, **kwargs: Any) -> asyncio.Server:
        kwargs.setdefault("reuse_port", True)
        return await asyncio.start_server(*args, **kwargs)


def share_listen_port() -> None:
    """Make mitmproxy's TCP listeners (`AsyncioServerInstance.listen`, which calls
    `asyncio.start_server` through its module's `asyncio` name) set SO_REUSEPORT. Linux lets
    only sockets of the same effective uid share the port, so another local user cannot join.
    Call before the servers start; idempotent. Raises RuntimeError when this mitmproxy binds
    differently (the hook would silently do nothing) or the platform has no SO_REUSEPORT."""
    from mitmproxy.proxy import mode_servers

    if isinstance(mode_servers.asyncio, _ReusePortAsyncio):
        return
    if not hasattr(socket, "SO_REUSEPORT"):
        raise RuntimeError("this platform has no SO_REUSEPORT: run a single worker")
    listen = getattr(getattr(mode_servers, "AsyncioServerInstance", None), "listen", None)
    if (
        mode_servers.asyncio is not asyncio
        or listen is None
        or "asyncio.start_server(" not in inspect.getsource(listen)
    ):
        raise RuntimeError("mitmproxy's AsyncioServerInstance.listen no longer binds with "
                           "asyncio.start_server: compat.share_listen_port needs updating for "
                           "this mitmproxy version")  # fmt: skip
    mode_servers.asyncio = _ReusePortAsyncio()  # type: ignore[assignment]
