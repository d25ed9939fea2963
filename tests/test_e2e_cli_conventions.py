"""Issue 13 §3: the command line behaves as people expect of one."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from harness import run_cli

from proxy_addon.cli import _parser, parse_listen
from proxy_addon.completion import script
from proxy_addon.config import ConfigError

CC = {"grant": "client_credentials", "token_url": "https://idp.example.com/token",
      "client_id": "c", "client_secret": "s"}  # fmt: skip
CODE = {"grant": "authorization_code", "token_url": "https://idp.example.com/token",
        "authorization_url": "https://idp.example.com/authorize", "client_id": "c"}  # fmt: skip


def _config(tmp_path: Path, credentials: dict[str, object], **extra: object) -> Path:
    path = tmp_path / "config.yaml"
    store = {"path": str(tmp_path / "state" / "tokens.db"),
             "key_file": str(tmp_path / "keys" / "store.key")}  # fmt: skip
    routes = [{"host": f"{n}.example.com", "credential": n} for n in credentials]
    path.write_text(yaml.safe_dump(
        {"store": store, "credentials": credentials, "routes": routes, **extra}
    ))  # fmt: skip
    return path


def test_config_before_or_after_the_command(tmp_path: Path) -> None:
    path = _config(tmp_path, {"a": CC})
    for argv in (("--config", str(path), "check"), ("check", "--config", str(path))):
        r = run_cli(*argv, env={"AUTHPROXY_KEY": ""})
        assert r.returncode == 0, r.stderr
        assert f"{path}: OK" in r.stdout


def test_version_and_one_line_descriptions() -> None:
    from proxy_addon import __version__

    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"authproxy {__version__}"
    parser = _parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    helps = {a.dest: a.help for a in sub._choices_actions}
    assert set(helps) == set(sub.choices)
    assert all(h and "\n" not in h for h in helps.values()), helps


@pytest.mark.parametrize(
    ("value", "expected"),
    [("8080", ("127.0.0.1", 8080)), ("0.0.0.0:1", ("0.0.0.0", 1)),
     ("[::1]:9", ("::1", 9)), ("localhost:80", ("localhost", 80))],
)  # fmt: skip
def test_listen(value: str, expected: tuple[str, int]) -> None:
    assert parse_listen(value) == expected


@pytest.mark.parametrize("value", ["::1:9", "host:", "70000", "a:b"])
def test_bad_listen(value: str) -> None:
    with pytest.raises(ConfigError):
        parse_listen(value)


def test_a_port_in_use_names_listen(tmp_path: Path) -> None:
    path = _config(tmp_path, {"a": CC})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        r = run_cli("--config", str(path), "run", "--listen", str(port))
    assert r.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in r.stderr and "--listen" in r.stderr
    assert "--mode" not in r.stderr


def test_bash_completion() -> None:
    text = script(_parser(), "bash")

    def complete(*words: str) -> list[str]:
        line = " ".join(f"'{w}'" for w in words)
        r = subprocess.run(
            ["bash", "-c", f'{text}\nCOMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; '
             '_authproxy; printf "%s\\n" "${COMPREPLY[@]}"'],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        return r.stdout.split()

    assert complete("authproxy", "rel") == ["reload"]
    assert complete("authproxy", "--config", "x.yaml", "to") == ["tokens"]
    assert "--listen" in complete("authproxy", "run", "--li")
    assert complete("authproxy", "completion", "--c") == ["--config"]


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_zsh_and_fish_completion_scripts(shell: str) -> None:
    text = script(_parser(), shell)
    assert "reload" in text and ("-l listen" if shell == "fish" else "--listen") in text
    if shell == "fish":
        assert "complete -c authproxy -n __fish_use_subcommand -a tokens" in text
    import shutil

    if shutil.which(shell):
        r = subprocess.run([shell, "-n"], input=text, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    r = run_cli("completion", shell)
    assert r.returncode == 0 and r.stdout == text


def test_tokens_on_a_fresh_machine_and_its_exit_status(tmp_path: Path) -> None:
    path = _config(tmp_path, {"a": CC})
    r = run_cli("--config", str(path), "tokens", env={"AUTHPROXY_KEY": ""})
    assert r.returncode == 0, r.stderr
    assert "no tokens stored yet" in r.stdout
    assert "key" not in r.stderr
    assert not (tmp_path / "state").exists() and not (tmp_path / "keys").exists()
    path = _config(tmp_path, {"a": CC, "b": CODE})
    r = run_cli("--config", str(path), "tokens", env={"AUTHPROXY_KEY": ""})
    assert r.returncode == 1  # b needs a sign-in, as `gh auth status` says
    assert "needs login" in r.stdout


def test_login_of_a_credential_without_sign_in(tmp_path: Path) -> None:
    path = _config(tmp_path, {"a": CC, "s": {"grant": "static", "token": "t" * 20}})
    for name, grant in (("a", "client_credentials"), ("s", "static")):
        r = run_cli("--config", str(path), "login", name, env={"AUTHPROXY_KEY": ""})
        assert r.returncode == 2
        assert f"{name} uses grant {grant}, which needs no sign-in" in r.stderr


def test_no_traceback_on_a_closed_pipe(tmp_path: Path) -> None:
    credentials = {f"c{i:04d}": CC for i in range(1500)}  # more output than a pipe holds
    path = _config(tmp_path, credentials)
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy_addon", "--config", str(path), "check"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "AUTHPROXY_KEY": ""},
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().endswith(b": OK\n")
    proc.stdout.close()  # as `| head -1` does
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert proc.returncode == 128 + signal.SIGPIPE


def test_sigterm_ends_a_waiting_command_quietly(tmp_path: Path) -> None:
    path = _config(tmp_path, {"b": {**CODE, "redirect_port": 0}})
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy_addon", "--config", str(path), "login", "b", "--no-browser"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "AUTHPROXY_KEY": ""},
    )  # fmt: skip
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while "http" not in proc.stdout.readline():  # it asks for the redirect URL now
        assert time.monotonic() < deadline and proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "Traceback" not in err, err


def test_the_web_ui_url_with_its_token_shows_even_when_quiet(tmp_path: Path) -> None:
    from harness import Proxy

    from proxy_addon.demo.run import free_port

    proxy = Proxy(tmp_path, {"store": {"backend": "memory"}})
    web_port = free_port()
    try:
        proxy.start("--web", "-q", "--set", f"web_port={web_port}")
        assert f"web UI: http://127.0.0.1:{web_port}/?token=" in proxy.output()
    finally:
        proxy.stop()
