"""The pure parts of `authproxy run --workers N`: the restart policy, the option, merging the
workers' numbers for one status page, and what a worker writes for the others."""

from __future__ import annotations

import gc
import json
import os
import stat
from pathlib import Path

import pytest
from mitmproxy.hooks import RunningHook
from mitmproxy.test import taddons

from proxy_addon.config import parse_config
from proxy_addon.metrics import REQUEST_BUCKETS, Histogram
from proxy_addon.runner import RunOptions, StartupError, _FreezeAfterStart
from proxy_addon.supervisor import (
    RestartPolicy,
    cores,
    parse_workers,
    supervise,
    workers_problem,
)
from proxy_addon.workerstate import (
    RETIRED,
    ClusterMetrics,
    WorkerSlot,
    merge_states,
    read_states,
    retire,
    state_file,
    write_state,
)

# --- restart policy ----------------------------------------------------------------------------


def test_backoff_doubles_per_death_in_a_row_up_to_the_cap() -> None:
    p = RestartPolicy(base=0.5, cap=30.0)
    assert [p.delay(n) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert p.delay(10_000) == 30.0  # no overflow however long it goes on


def test_a_worker_that_ran_long_enough_starts_the_count_again() -> None:
    p = RestartPolicy(stable_after=30.0)
    assert p.failures_after(0, lived=0.1) == 1
    assert p.failures_after(5, lived=2.0) == 6
    assert p.failures_after(5, lived=30.0) == 1


def test_a_worker_that_always_dies_at_once_is_never_a_restart_storm() -> None:
    """A worker crashing right after each start: restarts in the first 10 minutes."""
    p = RestartPolicy()
    now, failures, restarts = 0.0, 0, 0
    while now < 600:
        failures = p.failures_after(failures, lived=0.2)
        now += 0.2 + p.delay(failures)
        restarts += 1
    assert restarts <= 26  # 7 while backing off, then one per 30 s


# --- the option --------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "n"), [("1", 1), ("3", 3), ("auto", cores())])
def test_workers_option(value: str, n: int) -> None:
    assert parse_workers(value) == n


@pytest.mark.parametrize("value", ["0", "-1", "two", "", "1.5"])
def test_workers_option_refuses(value: str) -> None:
    with pytest.raises(ValueError, match="positive number or 'auto'"):
        parse_workers(value)


def _ro(tmp_path: Path, **extra: object) -> RunOptions:
    config = parse_config({"listen": "127.0.0.1:0"}, source="test")
    return RunOptions(tmp_path / "config.yaml", config, **extra)  # type: ignore[arg-type]


def test_options_one_process_cannot_share(tmp_path: Path) -> None:
    assert workers_problem(_ro(tmp_path, web=True), 1) is None
    assert "--web" in (workers_problem(_ro(tmp_path, web=True), 2) or "")
    assert "one flow file" in (workers_problem(_ro(tmp_path, save_flows="f.mitm"), 2) or "")
    assert workers_problem(_ro(tmp_path, audit_log="a.jsonl"), 2) is None


def test_one_worker_runs_in_this_process(tmp_path: Path) -> None:
    seen: list[RunOptions] = []
    ro = _ro(tmp_path)
    assert supervise("1", lambda r: seen.append(r) or 7, ro) == 7
    assert seen == [ro] and ro.worker is None
    with pytest.raises(StartupError, match="positive number"):
        supervise("none", lambda r: 0, ro)
    with pytest.raises(StartupError, match="--web"):
        supervise("2", lambda r: 0, _ro(tmp_path, web=True))


def test_the_runner_freezes_what_start_up_built_then_leaves_the_chain() -> None:
    with taddons.context() as tctx:
        freeze = _FreezeAfterStart(tctx.master)
        tctx.master.addons.add(freeze)
        try:
            tctx.master.addons.trigger(RunningHook())
            assert gc.get_freeze_count() > 0
            assert freeze not in tctx.master.addons.chain  # no cost per request afterwards
        finally:
            gc.unfreeze()


# --- merging -----------------------------------------------------------------------------------


def _state(worker: int | None, injected: int, events: list[list[object]] = ()) -> dict:  # type: ignore[assignment]
    h = Histogram(("credential",), REQUEST_BUCKETS)
    for _ in range(injected):
        h.observe(("api",), 0.02)
    state = {
        "pid": 100 + (worker or 0),
        "started_at": 1000.0,
        "connections": injected + 1,
        "counters": {"injected": {"api": injected}, "refreshed": {"api": 1}},
        "requests": h.export(),
        "idp": [],
        "store_ops": [(["get"], [1] + [0] * 12, 0.0001)],
        "store_errors": [["get", "unavailable", 2]],
        "events": list(events),
    }
    return state if worker is None else {"worker": worker, **state}


def test_merge_sums_counters_histograms_and_connections() -> None:
    m = merge_states([_state(1, 3), _state(0, 4)])
    assert m.counters == {"injected": {"api": 7}, "refreshed": {"api": 2}}
    assert m.connections == 9
    assert [w["worker"] for w in m.workers] == [0, 1]
    h = Histogram(("credential",), REQUEST_BUCKETS)
    h.absorb(m.requests)
    assert h.count(("api",)) == 7


def test_merge_keeps_the_newest_events_first() -> None:
    a = _state(0, 0, [[10.0, "refresh", "api", "old", 1], [30.0, "retry", "api", "new", 2]])
    b = _state(1, 0, [[20.0, "refused", "api", "middle", 1]])
    events = merge_states([a, b], events=2).events
    assert [(e.message, e.count) for e in events] == [("new", 2), ("middle", 1)]


def test_merge_skips_what_is_malformed() -> None:
    bad = {"worker": "x", "counters": {"injected": {"api": "7"}, "refused": []}, "requests": 3,
           "events": [[1, 2], "no"], "connections": None}  # fmt: skip
    m = merge_states([bad, _state(0, 2)])
    assert m.counters == {"injected": {"api": 2}, "refreshed": {"api": 1}}
    assert [w["worker"] for w in m.workers] == [0]
    h = Histogram(("credential",), REQUEST_BUCKETS)
    h.absorb([*m.requests, (["api"], [1, 2], 0.1), (["a", "b"], [0] * 13, 0.0)])
    assert h.count(("api",)) == 2  # wrong bucket counts, wrong label count: skipped


# --- files -------------------------------------------------------------------------------------


def test_state_files_are_private_and_replaced_whole(tmp_path: Path) -> None:
    path = state_file(tmp_path, 0)
    write_state(path, _state(0, 1))
    write_state(path, _state(0, 2))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["counters"]["injected"] == {"api": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["worker-0.json"]  # no temporary left


def test_a_dead_workers_numbers_are_kept(tmp_path: Path) -> None:
    write_state(state_file(tmp_path, 0), _state(0, 3))
    write_state(state_file(tmp_path, 1), _state(1, 4))
    retire(tmp_path, 1)
    write_state(state_file(tmp_path, 1), _state(1, 1))  # restarted, counting from 0
    retire(tmp_path, 1)
    retire(tmp_path, 1)  # nothing left to retire: harmless
    assert not state_file(tmp_path, 1).exists()
    m = merge_states(read_states(tmp_path))
    assert m.counters["injected"] == {"api": 8}
    assert [w["worker"] for w in m.workers] == [0]  # retired numbers count, but as no worker
    assert (tmp_path / RETIRED).exists()


def test_cluster_metrics_report_every_worker(tmp_path: Path) -> None:
    write_state(state_file(tmp_path, 1), _state(1, 5, [[5.0, "retry", "api", "peer event", 1]]))
    write_state(state_file(tmp_path, 7), {"not": "a state"})
    (tmp_path / "worker-9.json").write_text("{half a fi")
    metrics = ClusterMetrics(WorkerSlot(0, tmp_path))
    metrics.inc("injected", "api")
    metrics.inc("retried", "api")
    metrics.observe_request("api", 0.02)
    metrics.observe_store("get", 0.001, "unavailable")
    assert metrics.snapshot({"api": 2})["injected"] == {"api": 6}
    assert metrics.snapshot({"api": 2})["refreshed"] == {"api": 3}
    text = metrics.prometheus({"api": 2}, [])
    assert 'authproxy_injected_total{credential="api"} 6' in text
    assert 'authproxy_request_duration_seconds_count{credential="api"} 6' in text
    assert "authproxy_workers 2" in text
    assert 'authproxy_store_operation_seconds_count{op="get"} 2' in text
    assert 'authproxy_store_errors_total{op="get",kind="unavailable"} 3' in text
    assert 'authproxy_worker_injected_total{worker="0"} 1' in text
    assert 'authproxy_worker_injected_total{worker="1"} 5' in text
    assert [e.message for e in metrics.events.recent()][-1] == "peer event"
    assert len(metrics.events.own()) == 1  # its own log holds only its own events
    assert metrics.supervisor_pid == os.getppid()  # forked by the supervisor: its parent


def test_a_worker_publishes_no_secret(tmp_path: Path) -> None:
    metrics = ClusterMetrics(WorkerSlot(0, tmp_path))
    metrics.events.record("idp_error", "api", "the IdP said: bad secret s3cret-value-123")
    state = metrics.own_state({"api": 1}, ["s3cret-value-123"])
    assert "s3cret-value-123" not in json.dumps(state)
    assert state["worker"] == 0 and state["counters"]["refreshed"] == {"api": 1}
