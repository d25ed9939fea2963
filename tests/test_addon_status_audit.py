"""The status page and the audit log as the proxy's own small addons, in-process (issue 12.7)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from addon_rig import in_process, rig_context, routed_flow, unavailable
from mitmproxy import http
from mitmproxy.net.http import http1
from mitmproxy.test import taddons, tflow

from proxy_addon import compat
from proxy_addon.audit import Audit
from proxy_addon.statusaddon import StatusPage


def _status_flow(path: str) -> http.HTTPFlow:
    compat.mark_request_forms()
    req = http1.read_request_head([f"GET http://authproxy.local{path} HTTP/1.1".encode(),
                                   b"Host: authproxy.local"])  # fmt: skip
    req.scheme, req.authority = "http", ""  # as mitmproxy's regular mode hands it over
    flow = tflow.tflow()
    flow.request = req
    return flow


@in_process
async def test_the_status_page_and_audit_are_addons_the_proxy_runs() -> None:
    async with rig_context() as rig:
        kinds = [type(a) for a in rig.addon.parts]
        assert StatusPage in kinds and Audit in kinds
        # Their hooks run through ours, not mitmproxy's walk of every request's hooks.
        assert not hasattr(rig.addon, "addons")
        from mitmproxy import ctx

        assert "authproxy_audit_log" in ctx.options  # the audit log's load hook ran


@in_process
async def test_status_json_answers_without_going_upstream() -> None:
    async with rig_context() as rig:
        flow = await rig.send(_status_flow("/status.json"))
        assert flow.response is not None and flow.response.status_code == 200
        body = json.loads(flow.response.content or b"{}")
        assert [c["name"] for c in body["credentials"]] == ["api"]
        assert rig.sent == []


@in_process
async def test_metrics_page_counts_injections_and_has_no_token() -> None:
    async with rig_context() as rig:
        await rig.send(routed_flow())
        flow = await rig.send(_status_flow("/metrics"))
        assert flow.response is not None
        text = (flow.response.content or b"").decode()
        assert 'authproxy_injected_total{credential="api"} 1' in text
        assert "live-token-" not in text


@in_process
async def test_audit_option_writes_one_line_per_call_and_no_query_values(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    rc = rig_context()
    async with rc as rig:
        rc.tctx.options.update(authproxy_audit_log=str(log))
        rig.addon.audit.configure({"authproxy_audit_log"})  # (taddons lacks options ours read)
        await rig.send(routed_flow("/v1/x?user=alice"))
        rig.cache.fail = unavailable()
        await rig.send(routed_flow("/v1/y"))
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert [(x["path"], x["status"]) for x in lines] == [("/v1/x?user=", 200), ("/v1/y", 502)]
    assert lines[1]["error"] == "token_unavailable"
    assert "alice" not in log.read_text()


def test_audit_log_from_the_config_then_the_option_then_closed_at_done(tmp_path: Path) -> None:
    configured: list[Path | None] = [tmp_path / "from-config.jsonl"]
    audit = Audit(lambda: configured[0])
    with taddons.context(audit) as tctx:
        tctx.configure(audit, authproxy_audit_log=None)
        assert audit.log is not None and audit.log.path == configured[0]
        tctx.configure(audit, authproxy_audit_log=str(tmp_path / "option.jsonl"))
        assert audit.log is not None and audit.log.path == tmp_path / "option.jsonl"
        audit.done()
        assert audit.log is None


@in_process
async def test_status_page_reads_the_metrics_the_proxy_has_now() -> None:
    """`run --workers` swaps the proxy's Metrics for cluster-wide ones after start-up."""
    from proxy_addon.metrics import Metrics

    async with rig_context() as rig:
        swapped = Metrics()
        swapped.inc("injected", "api")
        swapped.inc("injected", "api")
        rig.addon.metrics = swapped
        flow = await rig.send(_status_flow("/metrics"))
        assert flow.response is not None
        assert 'authproxy_injected_total{credential="api"} 2' in (flow.response.text or "")


def test_each_part_hook_runs_though_one_before_it_fails(caplog: pytest.LogCaptureFixture) -> None:
    """As mitmproxy runs each addon's hook: a failing part neither stops the others nor is
    silent, an option error comes out once all have run, and an async hook (which would be
    dropped unawaited) is an error, never a skipped peer check."""
    from mitmproxy import exceptions

    from proxy_addon.addon import AuthProxy

    seen: list[str] = []

    class Broken:
        def configure(self, updated: set[str]) -> None:
            seen.append("broken")
            raise RuntimeError("boom")

    class Refusing:
        def configure(self, updated: set[str]) -> None:
            seen.append("refusing")
            raise exceptions.OptionsError("no such thing")

    class Async:
        async def configure(self, updated: set[str]) -> None:
            seen.append("async ran")  # never: not awaited, and closed unstarted

    class Last:
        def configure(self, updated: set[str]) -> None:
            seen.append("last")

    addon = AuthProxy()
    addon.parts = (Broken(), Refusing(), Async(), Last())
    with pytest.raises(exceptions.OptionsError, match="no such thing"):
        addon._parts_hook("configure", {"x"})
    assert seen == ["broken", "refusing", "last"]
    assert "configure of Broken failed" in caplog.text
    assert "Async.configure must be synchronous" in caplog.text
