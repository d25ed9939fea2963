"""The operator's console, status.json and /metrics, rendered in-process: pure functions, and the
addon answering http://authproxy.local/ under mitmproxy's test context."""

from __future__ import annotations

import asyncio
import json
import math
import re
from pathlib import Path

import pytest
import yaml
from addon_rig import hook
from mitmproxy.addons import default_addons
from mitmproxy.test import taddons, tflow, tutils

from proxy_addon.addon import AuthProxy
from proxy_addon.config import load_config
from proxy_addon.console import ConsoleInfo, RouteRow, human_span
from proxy_addon.errors import GrantError
from proxy_addon.events import Event, EventLog
from proxy_addon.instrument import TimedGrant, instrument
from proxy_addon.metrics import Metrics
from proxy_addon.runtime import Runtime
from proxy_addon.state import CredentialState
from proxy_addon.state import CredentialState as S
from proxy_addon.status import STATES, CredentialView
from proxy_addon.statuspage import render_console, status_response
from proxy_addon.tokens import Token

NOW = 1_800_000_000.0
HOSTILE = '<script>alert("x")</script> & <img src=x onerror=alert(1)>'


def _views() -> list[CredentialView]:
    return [
        CredentialView("billing", "client_credentials", S.VALID, 1800.0, ("read", "write"),
                       NOW - 120, False),
        CredentialView("reports", "refresh_token", S.FAILING, -30.0, (), NOW - 4000, True,
                       f"idp_unavailable: IdP said {HOSTILE}"),
        CredentialView("github", "authorization_code", S.NEEDS_LOGIN, None, ("repo",), None,
                       False),
        CredentialView("legacy", "static", S.VALID, math.inf, (), None, False),
        CredentialView("fresh", "client_credentials", S.NOT_FETCHED, None, (), None, False),
    ]  # fmt: skip


def _counters() -> dict[str, dict[str, int]]:
    return {"injected": {"billing": 7}, "refreshed": {"billing": 2}, "retried": {"billing": 1},
            "token_failures": {"reports": 3}, "refused": {}}  # fmt: skip


def _info(events: tuple[Event, ...] = ()) -> ConsoleInfo:
    return ConsoleInfo(
        version="0.1.0", mitmproxy="12.9.9", python="3.12.0", started_at=NOW - 7300, now=NOW,
        listen="127.0.0.1:8080", store="sqlite: /var/lib/authproxy/tokens.db",
        config="/etc/authproxy/config.yaml",
        routes=(RouteRow(0, "https://api.example.com:443/billing", "billing", "replace"),
                RouteRow(1, "https://*.reports.example.com:443/", "reports", "reject")),
        events=events,
    )  # fmt: skip


def test_page_shows_each_credential_readably_and_never_none() -> None:
    events = (
        Event(NOW - 5, "idp_error", "reports", f"idp_unavailable: {HOSTILE}"),
        Event(NOW - 60, "retry", "billing", "the API answered 401: re-sent once"),
        Event(NOW - 90, "refresh", "billing", "new token from the IdP in 0.12 s"),
    )
    page = render_console(_views(), _counters(), _info(events))
    assert "None" not in page and "inf" not in page.replace("info", "")
    assert "<!doctype html>" in page and '<html lang="en">' in page
    for name in ("billing", "reports", "github", "legacy", "fresh"):
        assert f'id="credential-{name}"' in page
    # One class per state, without spaces, so each gets its colour.
    assert 'class="card needs_login"' in page and 'class="card failing"' in page
    assert 'class="card not_fetched"' in page
    assert "in 30 min" in page  # time to expiry
    assert "30 s ago" in page  # expired
    assert "2 min ago" in page  # last refresh
    assert "never" in page and "not applicable" in page  # static: no expiry, no refresh
    # Route table, proxy facts, events with times.
    assert "https://api.example.com:443/billing" in page and "reject the client" in page
    assert "127.0.0.1:8080" in page and "2 h 1 min" in page and "0.1.0" in page
    assert "sqlite: /var/lib/authproxy/tokens.db" in page
    assert "IdP error" in page and "retried" in page and "new token from the IdP" in page
    # Works offline: no external stylesheet, font, image or script.
    assert not re.search(r"<(link|img|iframe|object)\b|<script [^>]*src|url\(", page)


def test_hostile_error_text_is_escaped() -> None:
    views = [*_views(), CredentialView(HOSTILE, "client_credentials", S.FAILING, None, (HOSTILE,),
                                       None, False, HOSTILE)]  # fmt: skip
    events = (Event(NOW, "idp_error", HOSTILE, HOSTILE),)
    page = render_console(views, _counters(), _info(events))
    assert "<img" not in page
    assert page.count("<script>") == 1  # our own, at the end
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page


def test_page_without_console_info_still_renders() -> None:
    # status_response's old signature keeps working (a caller that passes no info).
    r = status_response("/", _views(), _counters(), "")
    assert r.status_code == 200 and "None" not in r.text and "billing" in r.text


def test_page_headers_allow_only_its_own_inline_script() -> None:
    r = status_response("/", _views(), _counters(), "", info=_info())
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'sha256-" in csp
    assert "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
    assert r.headers["cache-control"] == "no-store" and r.headers["x-frame-options"] == "DENY"


def test_status_json_keeps_its_keys_and_adds_the_proxy() -> None:
    events = (Event(NOW, "refresh", "billing", "new token"),)
    body = json.loads(status_response("/status.json", _views(), _counters(), "",
                                      info=_info(events)).text)  # fmt: skip
    assert [c["name"] for c in body["credentials"]][:2] == ["billing", "reports"]
    assert body["counters"]["injected"] == {"billing": 7}
    assert body["proxy"]["listen"] == "127.0.0.1:8080" and body["proxy"]["uptime"] == 7300
    assert body["routes"][1] == {"index": 1, "match": "https://*.reports.example.com:443/",
                                 "credential": "reports", "client_authorization": "reject"}
    assert body["events"] == [{"at": NOW, "kind": "refresh", "credential": "billing",
                               "message": "new token", "count": 1}]  # fmt: skip


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0 s"), (59.6, "60 s"), (600, "10 min"), (7300, "2 h 1 min"), (3 * 86400, "3 days"),
     (math.inf, "never")],
)  # fmt: skip
def test_human_span(seconds: float, text: str) -> None:
    assert human_span(seconds) == text


# --- metrics ------------------------------------------------------------------------------------

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\.)*)"(,|$)')


def parse_prometheus(text: str) -> dict[str, dict]:
    """A strict reader of the text exposition format: families with their type and samples."""
    families: dict[str, dict] = {}
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split()[2]
            families.setdefault(name, {"samples": []})["help"] = line
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped")
            families.setdefault(name, {"samples": []})["type"] = kind
        else:
            m = SAMPLE.match(line)
            assert m, f"not a sample line: {line!r}"
            name, labels_text, value = m.groups()
            labels: dict[str, str] = {}
            rest = labels_text or ""
            while rest:
                lm = LABEL.match(rest)
                assert lm, f"bad labels in {line!r}"
                labels[lm.group(1)] = lm.group(2)
                rest = rest[lm.end():]
            float(value)  # +Inf, NaN and numbers parse
            family = re.sub(r"_(bucket|sum|count)$", "", name)
            if family not in families:
                family = name
            assert "type" in families.get(family, {}), f"{name} has no # TYPE before it"
            families[family]["samples"].append((name, labels, float(value)))
    return families


def _filled_metrics() -> Metrics:
    m = Metrics()
    m.static = frozenset({"legacy"})
    for _ in range(3):
        m.inc("injected", "billing")
    m.inc("retried", "billing")
    m.inc("token_failures", "reports")
    for seconds in (0.003, 0.04, 0.2, 12.0):
        m.observe_request("billing", seconds)
    m.observe_idp("billing", 0.08, "ok")
    m.observe_idp("reports", 0.3, "idp_unavailable")
    return m


def test_metrics_parse_and_carry_what_an_operator_alerts_on() -> None:
    m = _filled_metrics()
    text = m.prometheus({"billing": 2, "legacy": 1}, _views())
    fams = parse_prometheus(text)
    (build,) = fams["authproxy_build_info"]["samples"]
    assert build[1]["version"] and build[1]["mitmproxy"] and build[2] == 1
    assert fams["authproxy_build_info"]["type"] == "gauge"
    assert fams["authproxy_injected_total"]["samples"] == [
        ("authproxy_injected_total", {"credential": "billing"}, 3.0)
    ]
    # A static credential's token comes from the config: it is never counted as refreshed.
    assert fams["authproxy_refreshed_total"]["samples"] == [
        ("authproxy_refreshed_total", {"credential": "billing"}, 2.0)
    ]
    states = {s[1]["credential"]: s[1]["state"]
              for s in fams["authproxy_credential_usable"]["samples"]}  # fmt: skip
    assert states["github"] == "needs_login" and states["fresh"] == "not_fetched"
    assert all(" " not in s for s in states.values())
    expiry = {s[1]["credential"]: s[2]
              for s in fams["authproxy_token_expires_in_seconds"]["samples"]}  # fmt: skip
    assert expiry == {"billing": 1800.0, "reports": -30.0, "legacy": math.inf}

    hist = fams["authproxy_request_duration_seconds"]
    assert hist["type"] == "histogram"
    buckets = [(s[1]["le"], s[2]) for s in hist["samples"] if s[0].endswith("_bucket")]
    counts = [n for _, n in buckets]
    assert counts == sorted(counts), "buckets must be cumulative"
    assert buckets[0] == ("0.005", 1) and buckets[-1] == ("+Inf", 4)
    assert dict(buckets)["10.0"] == 3
    count = [s for s in hist["samples"] if s[0].endswith("_count")]
    assert count == [("authproxy_request_duration_seconds_count", {"credential": "billing"}, 4)]
    idp = fams["authproxy_idp_request_duration_seconds"]["samples"]
    assert ("authproxy_idp_request_duration_seconds_count",
            {"credential": "reports", "outcome": "idp_unavailable"}, 1) in idp  # fmt: skip


def test_state_ids_have_no_spaces() -> None:
    assert [s.id for s in STATES] == [
        "valid", "expiring", "expired", "needs_login", "not_fetched", "failing"
    ]
    assert [str(s) for s in STATES][3:5] == ["needs login", "not fetched"]  # what people read
    assert CredentialState.parse("needs_login") is CredentialState.parse("needs login")
    assert CredentialState.parse("bogus") is None


def test_counters_that_move_leave_events() -> None:
    m = _filled_metrics()
    kinds = [(e.kind, e.credential) for e in m.events.recent()]
    assert kinds == [("token_failure", "reports"), ("retry", "billing")]  # newest first


def test_a_repeated_event_is_counted_not_listed_again() -> None:
    clock = iter(range(1000))
    log = EventLog(size=3, clock=lambda: float(next(clock)))
    log.record("refresh", "billing", "new token")
    for _ in range(500):  # a client looping on a refused route
        log.record("refused", "billing", "refused by a route rule")
    log.record("retry", "billing", "re-sent")
    assert [(e.kind, e.count, e.at) for e in log.recent()] == [
        ("retry", 1, 501.0), ("refused", 500, 500.0), ("refresh", 1, 0.0),
    ]  # fmt: skip
    log.record("retry", "other", "re-sent")
    assert [e.kind for e in log.recent()] == ["retry", "retry", "refused"]  # oldest dropped
    page = render_console([], {}, _info(tuple(log.recent())))
    assert "\u00d7 500" in page  # times 500


def test_idp_error_codes_outside_the_known_set_become_other() -> None:
    m, grant = Metrics(), _Grant()
    grant.fail = GrantError('x"}\n' + "a" * 50, "made-up code", terminal=True)
    with pytest.raises(GrantError):
        TimedGrant(grant, "billing", m).obtain(None)
    grant.fail = GrantError("invalid_scope", "nope", terminal=True)
    with pytest.raises(GrantError):
        TimedGrant(grant, "billing", m).obtain(None)
    fams = parse_prometheus(m.prometheus({}, []))
    outcomes = {s[1]["outcome"] for s in fams["authproxy_idp_request_duration_seconds"]["samples"]}
    assert outcomes == {"other", "invalid_scope"}


# --- instrumented grants --------------------------------------------------------------------------


class _Grant:
    refreshable, seed_id = True, None

    def __init__(self) -> None:
        self.fail: GrantError | None = None

    def obtain(self, previous: Token | None) -> Token:
        if self.fail:
            raise self.fail
        return Token(access_token="at-secret-1", expires_at=NOW * 2, obtained_at=NOW)


def test_timed_grant_records_duration_outcome_and_event_but_no_token() -> None:
    m, grant = Metrics(), _Grant()
    timed = TimedGrant(grant, "billing", m)
    assert timed.refreshable is True and timed.seed_id is None  # the grant's own attributes
    assert timed.obtain(None).access_token == "at-secret-1"
    grant.fail = GrantError("invalid_client", "client authentication failed", terminal=True)
    with pytest.raises(GrantError):
        timed.obtain(None)
    assert m.idp.count(("billing", "ok")) == 1 and m.idp.count(("billing", "invalid_client")) == 1
    failed, ok = m.events.recent()
    assert (failed.kind, ok.kind) == ("idp_error", "refresh")
    assert failed.message == "invalid_client: client authentication failed"
    assert "at-secret-1" not in repr(m.events.recent()) + m.prometheus({}, [])
    # No refresh token yet: decided without the IdP, so an event but no IdP timing.
    grant.fail = GrantError("needs_login", "run `authproxy login billing`", terminal=True)
    with pytest.raises(GrantError):
        timed.obtain(None)
    assert m.events.recent()[0].kind == "needs_login"
    assert m.idp.count(("billing", "needs_login")) == 0


def _config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "listen": "127.0.0.1:18080",
        "store": {"backend": "memory"},
        "credentials": {
            "legacy": {"grant": "static", "token": "static-secret-" + "s" * 20},
            "api": {"grant": "client_credentials", "token_url": "https://idp.example.test/token",
                    "client_id": "c", "client_secret": "client-secret-" + "c" * 20},
        },
        "routes": [{"host": "legacy.example.test", "credential": "legacy"},
                   {"host": "api.example.test", "path": "/v1", "credential": "api"}],
    }))  # fmt: skip
    return path


def test_instrument_wraps_refreshing_grants_only(tmp_path: Path) -> None:
    runtime = Runtime.build(load_config(_config_file(tmp_path)))
    m = Metrics()
    instrument(runtime, m)
    instrument(runtime, m)  # idempotent
    assert m.static == {"legacy"}
    assert isinstance(runtime.caches["api"].grant, TimedGrant)
    assert not isinstance(runtime.caches["api"].grant.wrapped, TimedGrant)
    assert not isinstance(runtime.caches["legacy"].grant, TimedGrant)
    asyncio.run(runtime.caches["legacy"].token())
    assert m.snapshot({"legacy": runtime.caches["legacy"].refreshes})["refreshed"] == {}


def test_addon_answers_the_console_with_its_routes_and_no_secret(tmp_path: Path) -> None:
    async def main() -> list[str]:
        addon = AuthProxy()
        # mitmdump's addons declare the options the addon's guards read (proxy_debug, ...).
        with taddons.context(*default_addons(), addon, loadcore=False) as tctx:
            tctx.configure(addon, authproxy_config=str(_config_file(tmp_path)),
                           listen_host="127.0.0.1", listen_port=18080)  # fmt: skip
            # Use the static credential once, so its cache holds the secret token.
            used = tflow.tflow(req=tutils.treq(host="legacy.example.test", port=443,
                                               scheme=b"https", path=b"/x"))  # fmt: skip
            used.client_conn.sni = "legacy.example.test"
            used.request.headers["host"] = "legacy.example.test"
            await hook(addon.requestheaders, used)
            assert used.response is None, used.response.text
            assert used.request.headers["authorization"].startswith("Bearer static-secret-")
            used.response = tutils.tresp()
            await hook(addon.response, used)  # answered: redacted, and its duration observed
            texts = []
            for path in ("/", "/status.json", "/metrics"):
                f = tflow.tflow(req=tutils.treq(host="authproxy.local", port=80, scheme=b"http",
                                                path=path.encode()))  # fmt: skip
                f.request.authority = "authproxy.local"  # asked of the proxy, in absolute form
                await hook(addon.requestheaders, f)
                assert f.response is not None and f.response.status_code == 200
                texts.append(f.response.text)
            return texts

    page, status, metrics = asyncio.run(main())
    assert "https://api.example.test:443/v1" in page and "127.0.0.1:18080" in page
    assert "memory (nothing survives a restart)" in page and "None" not in page
    assert json.loads(status)["proxy"]["config"].endswith("config.yaml")
    assert 'authproxy_injected_total{credential="legacy"} 1' in metrics
    assert 'authproxy_refreshed_total{credential="legacy"}' not in metrics  # static: no refresh
    assert 'authproxy_request_duration_seconds_count{credential="legacy"} 1' in metrics
    for text in (page, status, metrics):
        assert "static-secret-" not in text and "client-secret-" not in text
