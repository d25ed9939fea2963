"""The operator's console the proxy answers itself at http://authproxy.local/.

Never forwarded anywhere. `/` is a page for people (Jinja2, autoescaped, inline CSS and script,
no external assets), `/status.json` the same facts for programs, `/metrics` Prometheus text.
No secrets: the views hold none, and last errors and events come scrubbed.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import time
from collections.abc import Sequence
from importlib import resources
from typing import Any

import jinja2
from markupsafe import Markup
from mitmproxy import http

from .console import ConsoleInfo, human_span
from .status import CredentialView

__all__ = ["STATUS_HOST", "render_console", "status_response"]

STATUS_HOST = "authproxy.local"

COUNTER_LABELS = {
    "injected": "injected",
    "refreshed": "refreshed",
    "retried": "retried",
    "token_failures": "no token",
    "refused": "refused",
}
EVENT_LABELS = {
    "refresh": "refreshed",
    "idp_error": "IdP error",
    "needs_login": "sign-in needed",
    "retry": "retried",
    "token_failure": "no token",
    "refused": "refused",
}


def status_response(
    path: str,
    views: list[CredentialView],
    counters: dict[str, dict[str, int]],
    metrics: str,
    *,
    info: ConsoleInfo | None = None,
) -> http.Response:
    route = path.split("?", 1)[0]
    if route == "/metrics":
        return http.Response.make(
            200, metrics, {"Content-Type": "text/plain; version=0.0.4; charset=utf-8", **_NO_STORE}
        )
    if route == "/status.json":
        body: dict[str, Any] = {"credentials": [v.as_dict() for v in views], "counters": counters}
        if info is not None:
            body.update(info.as_dict())
        return http.Response.make(
            200, json.dumps(body, indent=1), {"Content-Type": "application/json", **_NO_STORE}
        )
    if route == "/":
        page = render_console(views, counters, info)
        return http.Response.make(
            200,
            page,
            {
                "Content-Type": "text/html; charset=utf-8",
                "Content-Security-Policy": _csp(),
                "X-Frame-Options": "DENY",
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
                **_NO_STORE,
            },
        )
    return http.Response.make(404, "not found: try /, /status.json or /metrics\n", _NO_STORE)


_NO_STORE = {"Cache-Control": "no-store"}


def render_console(
    views: Sequence[CredentialView],
    counters: dict[str, dict[str, int]],
    info: ConsoleInfo | None = None,
    *,
    now: float | None = None,
) -> str:
    """The console's HTML. Pure: the same inputs (and `now`) give the same page."""
    now = (info.now if info else time.time()) if now is None else now
    return _template().render(
        **page_model(views, counters, info, now=now), script=Markup(_script())  # noqa: S704
    )


def page_model(
    views: Sequence[CredentialView],
    counters: dict[str, dict[str, int]],
    info: ConsoleInfo | None,
    *,
    now: float,
) -> dict[str, Any]:
    """Everything the template shows, as display strings: the template makes no decisions."""
    cards = []
    for v in views:
        if v.expires_in is None:
            expires, expires_title = "unknown (no token yet)", None
        elif v.expires_in == float("inf"):
            expires, expires_title = "never", None
        elif v.expires_in <= 0:
            expires, expires_title = f"{human_span(-v.expires_in)} ago", _stamp(now + v.expires_in)
        else:
            expires, expires_title = f"in {human_span(v.expires_in)}", _stamp(now + v.expires_in)
        if v.last_refresh:
            refreshed, refreshed_title = _ago(v.last_refresh, now), _stamp(v.last_refresh)
        else:
            # A token that never expires and was never stored (static): nothing to refresh.
            refreshed = "not applicable" if v.expires_in == float("inf") else "never"
            refreshed_title = None
        cards.append({
            "name": v.name, "grant": v.grant.replace("_", " "), "state": v.state,
            "state_id": v.state.id, "expires": expires, "expires_title": expires_title,
            "refreshed": refreshed, "refreshed_title": refreshed_title,
            "refresh_token": v.refresh_token, "scopes": list(v.scopes),
            "last_error": v.last_error or None,
            "counts": [
                {"label": COUNTER_LABELS.get(k, k), "value": counters[k].get(v.name, 0)}
                for k in COUNTER_LABELS if k in counters
            ],
        })  # fmt: skip
    totals = [
        {"label": COUNTER_LABELS.get(k, k), "value": sum(counters[k].values())}
        for k in COUNTER_LABELS
        if k in counters
    ]
    events = [
        {
            "clock": time.strftime("%H:%M:%S", time.localtime(e.at)),
            "title": f"{_stamp(e.at)} ({_ago(e.at, now)})",
            "kind": e.kind,
            "label": EVENT_LABELS.get(e.kind, e.kind),
            "credential": e.credential,
            "message": e.message,
            "count": e.count,
        }
        for e in (info.events if info else ())
    ]
    healthy = sum(v.state.healthy for v in views)
    problems = len(views) - healthy
    title = "authproxy" + (f" ({problems} need attention)" if problems else "")
    return {
        "title": title,
        "info": info,
        "uptime": human_span(info.uptime) if info else "",
        "started_title": _stamp(info.started_at) if info else "",
        "now_clock": time.strftime("%H:%M:%S", time.localtime(now)),
        "cards": cards,
        "healthy": healthy,
        "totals": totals,
        "routes": list(info.routes) if info else [],
        "events": events,
    }


def _ago(at: float, now: float) -> str:
    delta = now - at
    return "just now" if delta < 1 else f"{human_span(delta)} ago"


def _stamp(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(at))


@functools.cache
def _template() -> jinja2.Template:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("proxy_addon", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        # Belt and braces: a None that slips through shows as a dash, never as "None".
        finalize=lambda value: "—" if value is None else value,
    )
    return env.get_template("console.html.j2")


@functools.cache
def _script() -> str:
    return (resources.files("proxy_addon") / "templates" / "refresh.js").read_text("utf-8")


@functools.cache
def _csp() -> str:
    # Only our own inline script (by hash) and inline style; fetches only to this origin.
    digest = base64.b64encode(hashlib.sha256(_script().encode()).digest()).decode()
    return (
        "default-src 'none'; style-src 'unsafe-inline'; "
        f"script-src 'sha256-{digest}'; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
