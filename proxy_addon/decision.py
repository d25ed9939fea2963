"""What the proxy does with a request: answer its status page, refuse it, pass it on untouched,
or inject a token. Pure: it reads the flow and the route table, and changes nothing."""

from __future__ import annotations

from typing import Literal, NamedTuple

from mitmproxy import http

from . import present, replies
from .compat import absolute_form
from .guards import request_refusal
from .headerscan import names
from .health import is_direct_probe
from .routes import Route, RouteTable
from .statuspage import STATUS_HOST

__all__ = ["Decision", "decide", "plain_route"]


class Decision(NamedTuple):
    action: Literal["status", "refuse", "pass", "inject"]
    route: Route | None = None
    answer: http.Response | None = None  # for "refuse"


PASS = Decision("pass")


def decide(flow: http.HTTPFlow, routes: RouteTable, *, resent: bool = False) -> Decision:
    """`resent`: the flow is the proxy's own copy (a 401 retry, a web UI replay), whose
    Authorization header is the proxy's business, not the client's."""
    req = flow.request
    if is_direct_probe(flow):  # an orchestrator's GET /healthz or /readyz (see health.py)
        return Decision("status")
    if req.host == STATUS_HOST and req.scheme == "http":
        # Only a request to the proxy *as a proxy*; a `Host: authproxy.local` sent straight to
        # the listen port (a DNS-rebound page, say) is not one.
        if absolute_form(req):
            return Decision("status")
        return Decision("refuse", None, replies.not_addressed_to_proxy())
    route = routes.match(req.scheme, req.host, req.port, req.path)
    if route is None:
        if req.scheme == "http" and (refused := routes.https_only_match(req.host, req.path)):
            return Decision("refuse", refused, replies.plain_http_refused(refused))
        return PASS
    if refusal := request_refusal(flow, route):
        return Decision("refuse", route, refusal)
    if not resent and present.carried(req, route.present):
        if route.existing_authorization == "keep":
            return Decision("pass", route)
        if route.existing_authorization == "reject":
            return Decision("refuse", route, replies.authorization_present(route))
    return Decision("inject", route)


# Methods a plain request may have (as sent, upper case); anything else goes through decide().
_PLAIN_METHODS = frozenset({b"GET", b"HEAD", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS"})
# Header names (as headerscan.names has them) that send a request through decide(): browsers'
# (the cross-site check), and what the token work must handle with care.
_NOT_PLAIN = (b"\0sec-fetch-site\0", b"\0origin\0", b"\0referer\0", b"\0upgrade\0",
              b"\0proxy-authorization\0", b"\0dpop\0")  # fmt: skip
_HOST = b"\0host\0"


def plain_route(flow: http.HTTPFlow, routes: RouteTable) -> Route | None:
    """The route of a plain request, the one nearly every API call is: HTTPS in origin form, a
    usual method, one Host header naming the CONNECT target byte for byte (as does the TLS
    server name), no browser headers, no credential where the route puts the token. For such
    a request `decide()` says inject with this route; None means "not plain": ask `decide()`.

    It exists for speed (issue 11): it reads raw bytes, and most of decide()'s checks cannot
    apply to a request it accepts. It must never accept a request decide() would not inject,
    which tests/test_unit_decision_plain.py checks on many request shapes."""
    req = flow.request
    data = req.data
    if data.scheme != b"https" or data.authority or data.method not in _PLAIN_METHODS:
        return None
    host = data.host
    if ":" in host:  # IPv6: its Host header is bracketed; decide() reads it
        return None
    sni = flow.client_conn.sni
    if sni is not None and sni != host:
        return None
    found = names(req.headers)
    for name in _NOT_PLAIN:
        if name in found:
            return None
    at = found.find(_HOST)
    if at == -1 or found.find(_HOST, at + 1) != -1:
        return None
    fields = req.headers.fields
    i = found.count(b"\0", 0, at)
    if i >= len(fields) or fields[i][0].lower() != b"host":
        return None
    named, port, target = fields[i][1], data.port, host.encode()
    if not (named == target and port == 443) and named != b"%s:%d" % (target, port):
        return None
    route = routes.match("https", host, port, req.path)
    if route is None or route.present.kind == "query":
        return None
    if b"\0" + route.present.name.encode() + b"\0" in found:  # carried: keep, reject or replace
        return None
    return route
