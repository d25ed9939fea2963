"""`authproxy demo` as a user runs it. Config errors and `check`: test_unit_cli.py."""

from __future__ import annotations

from harness import run_cli


def test_demo_runs_end_to_end() -> None:
    r = run_cli("demo", "--once")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "-> HTTP 200" in r.stdout
    assert '"token_fp"' in r.stdout
    assert "curl --proxy" in r.stdout
