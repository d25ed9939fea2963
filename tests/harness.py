"""End-to-end plumbing: the proxy as a real process, its config, and real clients through it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import requests
import yaml

from proxy_addon.demo.run import wait_for_proxy
from proxy_addon.netutil import free_port

ROOT = Path(__file__).resolve().parent.parent
HOSTS = ROOT / "tests" / "support" / "hosts"
CLIENT_ID, CLIENT_SECRET = "client-a", "secret-a-" + "x" * 16


class Proxy:
    """`authproxy run` in a subprocess, with its output kept in a log file."""

    def __init__(self, workdir: Path, config: dict[str, Any], *, name: str = "proxy") -> None:
        self.workdir = workdir
        self.name = name
        self.port = free_port()
        self.confdir = workdir / "mitmproxy"  # one CA for every proxy of a test
        config = {
            "listen": f"127.0.0.1:{self.port}",
            "confdir": str(self.confdir),
            **config,
        }
        self.config_path = workdir / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ca(self) -> Path:
        return self.confdir / "mitmproxy-ca-cert.pem"

    def start(self, *args: str, env: dict[str, str] | None = None) -> Proxy:
        full_env = {
            **os.environ,
            "PYTHONPATH": str(HOSTS),
            "AUTHPROXY_KEY": "",
            **(env or {}),
        }
        full_env.pop("HTTPS_PROXY", None)
        full_env.pop("HTTP_PROXY", None)
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proxy_addon", "--config", str(self.config_path), "run", *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=self.workdir,
        )
        try:
            wait_for_proxy(self.proc, self.port, self.ca)
        except Exception:
            self.stop()
            raise AssertionError(f"proxy did not start:\n{self.output()}") from None
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        code, self.proc = self.proc.returncode, None
        return code

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def session(self) -> requests.Session:
        s = requests.Session()
        s.trust_env = False
        s.proxies = {"http": self.url, "https": self.url}
        s.verify = str(self.ca)
        return s

    def curl(self, *args: str, ca: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["curl", "-sS", "--max-time", "30", "--proxy", self.url,
             "--cacert", str(ca or self.ca), *args],
            capture_output=True, text=True, timeout=60,
            env={k: v for k, v in os.environ.items() if "proxy" not in k.lower()},
        )  # fmt: skip


def cc_credential(token_url: str, **extra: Any) -> dict[str, Any]:
    return {
        "grant": "client_credentials",
        "token_url": token_url,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        **extra,
    }


def route(host: str, port: int, credential: str = "api", **extra: Any) -> dict[str, Any]:
    return {"host": host, "port": port, "credential": credential, **extra}


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy_addon", *args],
        capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})},
    )  # fmt: skip


def secrets_in(texts: Sequence[str | bytes], secrets: Sequence[str]) -> list[str]:
    """Which of `secrets` appear in any of `texts` (never print the secret itself)."""
    found = []
    for secret in secrets:
        needle = secret.encode()
        for t in texts:
            if needle in (t.encode() if isinstance(t, str) else t):
                found.append(f"secret #{list(secrets).index(secret)} ({len(secret)} chars)")
                break
    return found
