"""Issue 13 §3: the command line behaves as people expect of one, where only a process shows it
(a closed pipe, SIGTERM, the web UI). The rest in-process: test_unit_cli.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

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
