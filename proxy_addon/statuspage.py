"""The read-only status page the proxy answers itself at http://authproxy.local/.

Never forwarded anywhere; shows what `authproxy tokens` shows, plus counters. No secrets: the
views it renders hold none.
"""

from __future__ import annotations

import html
import json
import time

from mitmproxy import http

from .status import CredentialView

__all__ = ["STATUS_HOST", "status_response"]

STATUS_HOST = "authproxy.local"


def status_response(
    path: str, views: list[CredentialView], counters: dict[str, dict[str, int]], metrics: str
) -> http.Response:
    route = path.split("?", 1)[0]
    if route == "/metrics":
        return http.Response.make(
            200, metrics, {"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
        )
    if route == "/status.json":
        body = {"credentials": [v.as_dict() for v in views], "counters": counters}
        return http.Response.make(
            200, json.dumps(body, indent=1), {"Content-Type": "application/json"}
        )
    if route == "/":
        return http.Response.make(
            200, _html(views, counters), {"Content-Type": "text/html; charset=utf-8"}
        )
    return http.Response.make(404, "not found: try /, /status.json or /metrics\n")


def _html(views: list[CredentialView], counters: dict[str, dict[str, int]]) -> str:
    rows = []
    for v in views:
        d = v.as_dict()
        expires = "never" if d["never_expires"] else d["expires_in"]
        last = (
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(v.last_refresh))
            if v.last_refresh
            else "-"
        )
        cells = [v.name, v.grant, v.state, expires, "yes" if v.refresh_token else "no", last,
                 " ".join(v.scopes), v.last_error or ""]  # fmt: skip
        counts = [str(counters[c].get(v.name, 0)) for c in sorted(counters)]
        rows.append("".join(f"<td>{html.escape(str(c))}</td>" for c in [*cells, *counts]))
    head = ["credential", "grant", "state", "expires in (s)", "refresh token", "last refresh",
            "scopes", "last error", *sorted(counters)]  # fmt: skip
    return (
        "<!doctype html><meta charset=utf-8><title>authproxy status</title>"
        "<h1>authproxy</h1><table border=1 cellpadding=4><tr>"
        + "".join(f"<th>{html.escape(h)}</th>" for h in head)
        + "</tr>"
        + "".join(f"<tr>{r}</tr>" for r in rows)
        + "</table><p><a href=/status.json>status.json</a> · <a href=/metrics>metrics</a></p>"
    )
