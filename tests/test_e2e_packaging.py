"""Packaging: the wheel holds what the program needs (templates, the example config, presets, the
licence) and runs from a clean virtualenv outside the repository; scripts/demo installs the
package alone, without the test tools."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from harness import ROOT

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("pip") is None, reason="needs pip in the test environment"
)


def _clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "VIRTUAL_ENV", "AUTHPROXY_"))}  # fmt: skip
    env.update(HOME=str(tmp_path / "home"), XDG_CONFIG_HOME=str(tmp_path / "xdg"),
               XDG_STATE_HOME=str(tmp_path / "state"), PIP_NO_INDEX="1",
               PIP_DISABLE_PIP_VERSION_CHECK="1")  # fmt: skip
    return env


def _build_wheel(tmp_path: Path, env: dict[str, str]) -> Path:
    # Build from a copy: setuptools writes build/ and *.egg-info beside the sources.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("proxy_addon", "config"):
        shutil.copytree(ROOT / name, src / name, symlinks=True, ignore=ignore)
    dist = tmp_path / "dist"
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
         "-w", str(dist), str(src)],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    (wheel,) = dist.glob("authproxy-*.whl")
    return wheel


def test_wheel_installs_and_runs_outside_the_repository(tmp_path: Path) -> None:
    env = _clean_env(tmp_path)
    wheel = _build_wheel(tmp_path, env)
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        packaged = {n: z.read(n) for n in names if n.startswith("proxy_addon/data/")}
        metadata = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    for needed in ("proxy_addon/templates/console.html.j2", "proxy_addon/templates/refresh.js",
                   "proxy_addon/node_proxy.cjs", "proxy_addon/demo/idp.py"):  # fmt: skip
        assert needed in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "License-Expression: MIT" in metadata
    config = ROOT / "config"
    expected = {f"proxy_addon/data/{p.relative_to(config)}": p.read_bytes()
                for p in [config / "example.yaml", *config.glob("providers/*.yaml")]}  # fmt: skip
    assert packaged == expected

    # A fresh venv with only the wheel; its dependencies come from the test environment's
    # site-packages through a .pth line (which adds the directory, but runs none of its .pth
    # files, so the editable install of the repository stays out).
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=60)  # fmt: skip
    py = venv / "bin" / "python"
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    (Path(site) / "deps-from-tests.pth").write_text(sysconfig.get_path("purelib") + "\n")
    r = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--quiet",
         str(wheel)],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([venv / "bin" / "authproxy", *args], capture_output=True, text=True,
                              timeout=60, env=env, cwd=tmp_path)  # fmt: skip

    where = subprocess.run(
        [py, "-c", "import proxy_addon; print(proxy_addon.__file__)"],
        capture_output=True, text=True, env=env, cwd=tmp_path, check=True,
    ).stdout  # fmt: skip
    assert where.startswith(str(venv)), where

    helped = run("--help")
    assert helped.returncode == 0, helped.stderr
    assert "init" in helped.stdout and "run" in helped.stdout

    init = run("init", "--preset", "github")
    assert init.returncode == 0, init.stderr
    written = tmp_path / "xdg" / "authproxy" / "config.yaml"
    assert written.read_text() == (config / "providers" / "github.yaml").read_text()
    assert oct(written.stat().st_mode & 0o777) == "0o600"
    env.update(GITHUB_CLIENT_ID="Iv1.abc", GITHUB_CLIENT_SECRET="s" * 40)
    checked = run("check")
    assert checked.returncode == 0, checked.stderr
    assert "api.github.com" in checked.stdout

    # The console's templates come from the installed package.
    page = subprocess.run(
        [py, "-c", "from proxy_addon.statuspage import render_console; "
                   "print(render_console([], {}))"],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert page.returncode == 0, page.stderr
    assert "No credentials configured" in page.stdout


# --- scripts/demo and scripts/test -------------------------------------------------------------

FAKE_PYTHON = """#!/usr/bin/env bash
# Records what the scripts ask of the venv's Python; anything else goes to the real one.
if [ "$1" = "-m" ]; then echo "$*" >> "$CALLS"; exit 0; fi
exec {real} "$@"
"""
FAKE_TOOL = """#!/usr/bin/env bash
echo "$(basename "$0") $*" >> "$CALLS"
"""


def test_demo_installs_the_package_alone_and_test_adds_its_tools(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    for name in ("_venv.sh", "demo", "test"):
        shutil.copy(ROOT / "scripts" / name, repo / "scripts" / name)
    shutil.copy(ROOT / "pyproject.toml", repo / "pyproject.toml")
    bin_dir = repo / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name, text in (("python", FAKE_PYTHON.format(real=sys.executable)),
                       ("authproxy", FAKE_TOOL), ("ruff", FAKE_TOOL),
                       ("mypy", FAKE_TOOL)):  # fmt: skip
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    calls = tmp_path / "calls.log"
    env = {**_clean_env(tmp_path), "CALLS": str(calls)}

    def script(name: str) -> list[str]:
        calls.write_text("")
        r = subprocess.run(["bash", str(repo / "scripts" / name), "--once"], capture_output=True,
                           text=True, timeout=60, env=env)  # fmt: skip
        assert r.returncode == 0, r.stderr
        return calls.read_text().splitlines()

    pip = "-m pip install --quiet --disable-pip-version-check -e"
    assert script("demo") == [f"{pip} {repo}", "authproxy demo --once"]
    assert script("demo") == ["authproxy demo --once"]  # installed already
    assert script("test") == [f"{pip} {repo}[test]", "ruff check proxy_addon tests scripts",
                              "mypy proxy_addon", "-m pytest --once"]  # fmt: skip
    assert script("demo") == ["authproxy demo --once"]  # the test install covers the demo
