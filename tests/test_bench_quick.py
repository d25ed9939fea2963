"""scripts/bench --quick, with tiny numbers: it runs, passes its own checks, and reports every
figure issue 11 asks for (ratios, route count, workers, memory, storm)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_quick_reports_every_section(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "scripts/bench.py", "--quick", "--requests", "40", "--concurrency", "4",
         "--storm", "5", "--memory-requests", "300", "--routes", "200"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for expected in (
        "ratio authproxy/bare (1 client): throughput ",
        "ratio authproxy/bare (4 clients): throughput ",
        "RouteTable.match in-process (CPU time): 10 routes ",
        "ratio 200/10 routes (4 clients): throughput ",
        "workers 1..",
        "memory (RSS of each proxy process, after 150 and after 300 requests served",
        "storm: 5 concurrent requests at an expired token -> 1 token request(s) at the IdP, 5/5 OK",
    ):
        assert expected in out, f"{expected!r} not in:\n{out}"
    assert "mitmdump (bare)" in out and "growth" in out
    assert not list(tmp_path.glob("authproxy-bench-*")), "the bench left its work directory"
