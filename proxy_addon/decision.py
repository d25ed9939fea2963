"""What the proxy does with a request: answer its status page, refuse it, pass it on untouched,
or inject a token. Pure: it reads the flow and the route table, and changes nothing."""

from __future__ import annotations

from typing import Literal, NamedTuple

from mitmproxy import http

from . import present, replies
from .compat import absolute_form
from .guards import request_refusal
from .health import is_direct_probe
from .routes import Route, RouteTable
from .statuspage import STATUS_HOST

__all__ = ["Decision", "decide"]


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
