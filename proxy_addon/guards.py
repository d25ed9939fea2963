"""Rules that keep a token where its route says, checked before one is injected, and the
mitmproxy options that would undo them. Pure: they read a flow or the options, nothing else."""

from __future__ import annotations

from typing import Any

from mitmproxy import http
from mitmproxy.proxy.mode_specs import ProxyMode

from .config import is_loopback
from .replies import refusal
from .routes import Route, normalize_host

__all__ = ["request_refusal", "unsafe_options"]

# Methods that make a server echo the request, Authorization included, back to the client.
ECHO_METHODS = frozenset({"TRACE", "TRACK"})


def request_refusal(flow: http.HTTPFlow, route: Route) -> http.Response | None:
    """Why this routed request must not get a token, as the answer to give; None if it may."""
    req = flow.request
    target = _host(req.host)
    # The CONNECT target decides where the connection goes, but a shared front end (a CDN, a
    # virtual host) routes by Host/:authority and SNI: all three must name the routed host.
    named = {"Host": _host(req.host_header or req.host)}
    if req.scheme == "https" and flow.client_conn.sni:
        named["TLS server name"] = _host(flow.client_conn.sni)
    for what, host in named.items():
        if host != target:
            return refusal(
                421, "misdirected_request", route,
                f"the {what} ({host or 'invalid'}) is not the host this request goes to "
                f"({target}); a token is only sent when they agree",
            )  # fmt: skip
    if req.method.upper() in ECHO_METHODS:
        return refusal(
            405, "method_refused", route,
            f"{req.method} makes servers echo the request, token included",
        )  # fmt: skip
    site = req.headers.get("sec-fetch-site", "").lower()
    if site in ("cross-site", "same-site") and not route.allow_cross_site:
        return refusal(
            403, "cross_site_refused", route,
            "a web page of another site sent this request through the proxy; set "
            "allow_cross_site: true on the route if browsers should use its credentials",
        )  # fmt: skip
    return None


def _host(value: str) -> str:
    host = value.strip()
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.rsplit(":", 1)[0]
    try:
        return normalize_host(host)
    except ValueError:
        return ""


def unsafe_options(opts: Any) -> str | None:
    """The first mitmproxy option that would leak or misroute a token, said as a refusal."""
    if opts.proxy_debug:
        return (
            "proxy_debug logs raw wire bytes, tokens included; it is refused while authproxy "
            "has credentials configured"
        )
    if opts.ssl_insecure:
        return (
            "ssl_insecure turns off certificate checks, so a token could go to an impostor; "
            "trust a private CA with ca_certs in the authproxy config instead"
        )
    if opts.map_remote:
        return "map_remote changes where a request goes after its route was chosen; it is refused"
    if opts.stickyauth:
        return "stickyauth copies Authorization headers to other requests; it is refused"
    authed = bool(opts.proxyauth) and opts.proxyauth != "any"  # "any" accepts anyone
    listen = [ProxyMode.parse(m).listen_host(opts.listen_host) for m in opts.mode]
    web_host = getattr(opts, "web_host", None)
    if web_host is not None:
        listen.append(web_host)
    for host in listen:
        if not is_loopback(host) and not authed:
            return (
                f"listening on {host or 'all interfaces'} would let other machines use these "
                "credentials; listen on 127.0.0.1 (--set listen_host=127.0.0.1) or require "
                "proxy authentication (proxy_auth in the config)"
            )
    if web_host is not None and not is_loopback(web_host):
        return (
            f"the web UI can replay authenticated calls; it must listen on loopback, not {web_host}"
        )
    return None
