"""Rules that keep a token where its route says, checked before one is injected, and the
mitmproxy options that would undo them. Pure: they read a flow or the options, nothing else."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from mitmproxy import http
from mitmproxy.net.http import url
from mitmproxy.proxy.mode_specs import ProxyMode

from .headerscan import names
from .netutil import MIN_PROXY_PASSWORD, is_loopback
from .replies import refusal
from .routes import Route, canonical_host

__all__ = ["misdirection", "request_refusal", "unsafe_options"]

# Methods that make a server echo the request, Authorization included, back to the client.
ECHO_METHODS = frozenset({"TRACE", "TRACK"})

# Proxy modes in which `flow.request.host/port` is the address the client asked for (the
# CONNECT or SOCKS5 target) and every name the request carries can be checked against it.
SAFE_MODES = frozenset({"regular", "socks5"})
_MODE_REASONS = {
    "reverse": "a reverse proxy answers any page whose name resolves to it (DNS rebinding) "
    "and rewrites the Host header",
    "upstream": "an upstream proxy sees plain-http requests and gets absolute-form request lines",
    "transparent": "the destination is an IP address from the OS, not a name a route can bind",
    "wireguard": "the destination is an IP address from the tunnel, not a name a route can bind",
    "local": "the destination is an IP address from the OS, not a name a route can bind",
    "tun": "the destination is an IP address from the tunnel, not a name a route can bind",
    "dns": "it serves DNS, which can point routed names anywhere",
}
# Header names modify_headers must not touch: they decide where a request goes, or carry the
# token the proxy injects.
# Framing headers too: a rewritten Content-Length or Transfer-Encoding makes the server read the
# body as the start of another request, and the next request (token included) as its body.
_GUARDED_HEADERS = frozenset({
    "host", ":authority", "authorization", "proxy-authorization",
    "content-length", "transfer-encoding", "te", "trailer", "connection", "upgrade",
})  # fmt: skip


def request_refusal(flow: http.HTTPFlow, route: Route) -> http.Response | None:
    """Why this routed request must not get a token, as the answer to give; None if it may."""
    req = flow.request
    if problem := misdirection(flow):
        return refusal(421, "misdirected_request", route,
                       f"{problem}; a token is only sent when every name agrees")  # fmt: skip
    if req.method.upper() in ECHO_METHODS:
        return refusal(
            405, "method_refused", route,
            f"{req.method} makes servers echo the request, token included",
        )  # fmt: skip
    if not route.allow_cross_site and (site := _foreign_site(req)):
        return refusal(
            403, "cross_site_refused", route,
            f"a web page of another site ({site}) sent this request through the proxy; set "
            "allow_cross_site: true on the route if browsers should use its credentials",
        )  # fmt: skip
    return None


def misdirection(flow: http.HTTPFlow) -> str | None:
    """Which name of the request (request-line authority, Host header, HTTP/2 `:authority`, TLS
    server name, or a port among them) differs from where the connection really goes
    (`request.host/port`: the CONNECT or SOCKS5 target), said as a sentence; None if all agree.

    A shared front end (a CDN, a virtual host, a server reading RFC 9112's absolute form)
    routes by these names, not by the address we connected to, so all of them must agree."""
    req = flow.request
    target, port = canonical_host(req.host), req.port
    hosts = req.headers.get_all("host")
    if len(hosts) > 1:
        return f"the request carries {len(hosts)} Host headers"
    named: list[tuple[str, str]] = [
        ("Host header", h) for h in hosts if not _names_target(h, req.host, port, req.scheme)
    ]
    if req.authority:
        what = ":authority" if req.is_http2 or req.is_http3 else "request line"
        named.append((f"{what} authority", req.authority))
    for what, value in named:
        try:
            host, named_port = url.parse_authority(value, check=True)
        except ValueError:
            return f"the {what} ({_shown(value)}) is not a valid host"
        if canonical_host(host) != target:
            return f"the {what} names {_shown(host)}, not {target}, where this request goes"
        if (named_port or url.default_port(req.scheme)) != port:
            return (f"the {what} names port {named_port or url.default_port(req.scheme)}, not "
                    f"{port}, where this request goes")  # fmt: skip
    sni = flow.client_conn.sni
    if req.scheme == "https" and sni and canonical_host(sni) != target:
        return f"the TLS server name names {_shown(sni)}, not {target}, where this request goes"
    return None


def _names_target(value: str, host: str, port: int, scheme: str) -> bool:
    """The common case, decided without parsing: the name is the destination itself, byte for
    byte (`host`, or `host:port`; an IPv6 address in brackets). `host` matched a route, so it
    is a valid host name or address."""
    if ":" in host:  # IPv6: unbracketed, `::1:443` is another address, not ::1 port 443
        host = f"[{host}]"
    if value == host:
        return port == url.default_port(scheme)
    return value.startswith(host) and value[len(host) :] == f":{port}"


# Header names (as headerscan.names has them) that tell the request came from a web page.
_BROWSER_HEADERS = (b"\0sec-fetch-site\0", b"\0origin\0", b"\0referer\0")


def _foreign_site(req: http.Request) -> str | None:
    """The other origin a browser page came from, if the request says it came from one.

    `Sec-Fetch-Site` where the browser sends it; for plain-http destinations browsers send
    none, so `Origin`, or lacking it `Referer`, is compared with the request's own origin."""
    # Most requests (API clients) carry none of these: one pass over the raw names says so.
    present = names(req.headers)
    if not any(name in present for name in _BROWSER_HEADERS):
        return None
    site = req.headers.get("sec-fetch-site", "").lower()
    if site in ("cross-site", "same-site"):
        return site
    origin = req.headers.get("origin")
    source = origin if origin is not None else req.headers.get("referer")
    if source is None:
        return None
    own = (req.scheme, canonical_host(req.host), req.port)
    try:
        parts = urlsplit(source.strip())
        theirs = (parts.scheme.lower(), canonical_host(parts.hostname or ""),
                  parts.port or url.default_port(parts.scheme.lower()))  # fmt: skip
    except ValueError:
        theirs = None
    if theirs != own:
        return _shown(source.split("?")[0]) if source.strip() != "null" else "an opaque origin"
    return None


def _shown(value: str) -> str:
    """A name from the request, safe to quote in an answer or a log line."""
    clean = "".join(c if c.isprintable() else "?" for c in value)
    return clean[:100] or "empty"


def unsafe_options(opts: Any) -> str | None:
    """The first mitmproxy option that would leak or misroute a token, said as a refusal.

    Each refused option can change a routed request's destination or names after the addon
    decided, expose a live token, or weaken the checks the decision relies on."""
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
    if getattr(opts, "map_remote", None):
        return "map_remote changes where a request goes after its route was chosen; it is refused"
    if getattr(opts, "stickyauth", None):
        return "stickyauth copies Authorization headers to other requests; it is refused"
    for spec in getattr(opts, "modify_headers", None) or []:
        name = _modified_header(spec)
        if name is None or name in _GUARDED_HEADERS:
            return (
                f"modify_headers {spec!r} rewrites {name or 'a header it names unclearly'} "
                "after the route was chosen; Host, :authority, Authorization and the headers "
                "that frame a request (Content-Length, Transfer-Encoding, Connection, Upgrade, "
                "TE, Trailer) are refused"
            )
    if getattr(opts, "validate_inbound_headers", True) is False:
        return (
            "validate_inbound_headers=false lets a request carry two different hosts "
            "(Host and :authority); it is refused"
        )
    if getattr(opts, "keep_host_header", False):
        return "keep_host_header forwards a Host header naming another host; it is refused"
    if getattr(opts, "intercept", None):
        return (
            "intercept pauses flows for editing after their token is in (and the UI never "
            "shows a flow holding a token, so it could not be resumed); it is refused"
        )
    modes = []
    for spec in opts.mode:
        try:
            modes.append(ProxyMode.parse(spec))
        except ValueError:
            continue  # mitmproxy reports a malformed mode itself
    for mode in modes:
        if mode.type_name not in SAFE_MODES:
            why = _MODE_REASONS.get(mode.type_name, "its destination is not a CONNECT target")
            return (
                f"mode {mode.type_name} is refused while authproxy has credentials: {why}; "
                "use regular (the default) or socks5"
            )
    proxyauth = getattr(opts, "proxyauth", None)
    authed = bool(proxyauth) and proxyauth != "any"  # "any" accepts anyone
    listen = [m.listen_host(opts.listen_host) for m in modes]
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
        if not is_loopback(host) and (weak := weak_proxyauth(proxyauth)):
            return f"listening on {host or 'all interfaces'}: {weak}"
    if web_host is not None and not is_loopback(web_host):
        return (
            f"the web UI can replay authenticated calls; it must listen on loopback, not {web_host}"
        )
    return None


def weak_proxyauth(spec: str | None) -> str | None:
    """Why a `user:password` proxyauth is too weak for other machines; None if it is not
    (htpasswd and LDAP specs are the administrator's own policy)."""
    if not spec or spec.startswith("@") or spec.lower().startswith("ldap"):
        return None
    _, _, password = spec.partition(":")
    if len(password) < MIN_PROXY_PASSWORD:
        return (
            f"the proxy password is shorter than {MIN_PROXY_PASSWORD} characters; "
            "use a longer one (e.g. from `openssl rand -base64 18`)"
        )
    return None


def _modified_header(spec: str) -> str | None:
    """The header name a modify_headers spec rewrites, lower-cased; None if unreadable."""
    from mitmproxy.utils.spec import parse_spec
    from mitmproxy.utils.strutils import escaped_str_to_bytes

    try:
        _, subject, _ = parse_spec(spec)
        return escaped_str_to_bytes(subject).decode("latin-1").strip().lower()
    except (ValueError, UnicodeError):
        return None
