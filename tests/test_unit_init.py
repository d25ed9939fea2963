"""`authproxy init`: a starter config in the XDG config directory, private, never overwritten by
accident; and the example config and presets it copies are the repository's own files."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest
from harness import ROOT, run_cli

from proxy_addon.cli import main
from proxy_addon.config import load_config
from proxy_addon.init_command import InitError, preset_names, starter_text, write_private


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("AUTHPROXY_CONFIG", raising=False)
    return tmp_path / "xdg" / "authproxy" / "config.yaml"


def test_packaged_starters_are_the_repository_files() -> None:
    assert preset_names() == [
        "github", "github-app", "google", "google-service-account", "microsoft",
    ]  # fmt: skip
    assert starter_text(None) == (ROOT / "config" / "example.yaml").read_text()
    for name in preset_names():
        assert starter_text(name) == (ROOT / "config" / "providers" / f"{name}.yaml").read_text()


def test_init_writes_a_private_starter_where_run_looks(xdg: Path, capsys) -> None:
    assert main(["init"]) == 0
    assert xdg.read_text() == (ROOT / "config" / "example.yaml").read_text()
    assert _mode(xdg) == 0o600 and _mode(xdg.parent) == 0o700
    out = capsys.readouterr().out
    assert str(xdg) in out and "BILLING_CLIENT_SECRET" in out and "authproxy check" in out
    assert [p.name for p in xdg.parent.iterdir()] == ["config.yaml"]  # no temporary file left


def test_init_refuses_to_overwrite_without_force(xdg: Path, capsys) -> None:
    xdg.parent.mkdir(parents=True)
    xdg.write_text("mine: true\n")
    assert main(["init", "--preset", "github"]) == 1
    err = capsys.readouterr().err
    assert "already exists" in err and "--force" in err
    assert xdg.read_text() == "mine: true\n"
    assert main(["init", "--preset", "github", "--force"]) == 0
    assert xdg.read_text() == (ROOT / "config" / "providers" / "github.yaml").read_text()
    assert _mode(xdg) == 0o600
    assert "GITHUB_CLIENT_ID, GITHUB_CLIENT_SECRET" in capsys.readouterr().out


@pytest.mark.parametrize("preset", ["github", "google", "microsoft"])
def test_preset_config_loads_once_its_variables_are_set(xdg: Path, preset: str) -> None:
    assert main(["init", "--preset", preset]) == 0
    variables = re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", xdg.read_text())
    assert variables
    cfg = load_config(xdg, dict.fromkeys(variables, "value-" + "v" * 20))
    assert cfg.credentials and cfg.routes


def test_unknown_preset_is_refused(xdg: Path) -> None:
    with pytest.raises(SystemExit) as e:
        main(["init", "--preset", "okta"])
    assert e.value.code == 2
    choices = "github, github-app, google, google-service-account, microsoft"
    with pytest.raises(InitError, match=f"choose one of {choices}"):
        starter_text("okta")


def test_config_option_picks_the_file(tmp_path: Path, xdg: Path) -> None:
    target = tmp_path / "elsewhere" / "proxy.yaml"
    assert main(["--config", str(target), "init"]) == 0
    assert target.exists() and not xdg.exists()


def test_write_private_keeps_an_existing_file_and_reports_why(tmp_path: Path) -> None:
    path = tmp_path / "d" / "c.yaml"
    write_private(path, "one\n", force=False)
    with pytest.raises(InitError, match="already exists"):
        write_private(path, "two\n", force=False)
    assert path.read_text() == "one\n"
    blocked = tmp_path / "file" / "c.yaml"  # its directory would have to be a regular file
    blocked.parent.write_text("")
    with pytest.raises(InitError, match="cannot create"):
        write_private(blocked, "three\n", force=True)


def test_init_subprocess_uses_xdg_config_home(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path / "cfg"), "HOME": str(tmp_path / "home")}
    r = run_cli("init", "--preset", "google", env=env)
    assert r.returncode == 0, r.stderr
    written = tmp_path / "cfg" / "authproxy" / "config.yaml"
    assert written.read_text() == (ROOT / "config" / "providers" / "google.yaml").read_text()
    assert not (tmp_path / "home").exists()
