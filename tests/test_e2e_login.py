"""Interactive sign-in end to end: `authproxy login` as a real process, a scripted person in a
"browser" (tests/support/user_agent.py) against the test authorization server, then the proxy.
The failures a person can meet, and login CSRF, in-process: test_unit_login.py."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from harness import CLIENT_ID, CLIENT_SECRET, route, run_cli, secrets_in
from support.user_agent import approve_device, sign_in

from proxy_addon.demo.idp import AuthServer

USER, PASSWORD = "alice", "alice-password-" + "w" * 8
PUBLIC_CLIENT = "cli-public"


@pytest.fixture
def people(idp: AuthServer) -> AuthServer:
    idp.add_user(USER, PASSWORD)
    idp.add_client(PUBLIC_CLIENT, None, redirect_uris=["http://127.0.0.1/callback"])
    return idp


def _config(tmp_path: Path, pki, idp: AuthServer, api_port: int, **cred: object) -> dict:
    return {
        "ca_certs": [str(pki.ca_cert)],
        "confdir": str(tmp_path / "mitmproxy"),
        "store": {"path": str(tmp_path / "state" / "tokens.db"),
                  "key_file": str(tmp_path / "keys" / "store.key")},
        "credentials": {"api": {"issuer": idp.url, "client_id": PUBLIC_CLIENT,
                                "scopes": ["read"], **cred}},
        "routes": [route("api.example.test", api_port)],
    }  # fmt: skip


def _write(tmp_path: Path, config: dict) -> Path:
    path = tmp_path / "login.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class Cli:
    """`authproxy ... login` in the background, its output readable line by line."""

    def __init__(self, config: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proxy_addon", "--config", str(config), *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "BROWSER": "true"},  # "opening" the URL does nothing
        )  # fmt: skip
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put("")

    def wait_for(self, needle: str, timeout: float = 30) -> str:
        while True:
            line = self.lines.get(timeout=timeout)
            self.seen.append(line)
            if needle in line:
                return line
            if line == "":
                raise AssertionError(f"{needle!r} never printed:\n{''.join(self.seen)}")

    def finish(self, stdin: str | None = None) -> tuple[int, str]:
        if stdin is not None:
            assert self.proc.stdin
            self.proc.stdin.write(stdin)
            self.proc.stdin.flush()
        code = self.proc.wait(timeout=60)
        while True:
            line = self.lines.get(timeout=10)
            if line == "":
                break
            self.seen.append(line)
        return code, "".join(self.seen)


def _auth_url(cli: Cli) -> str:
    return cli.wait_for("https://127.0.0.1").strip()


@pytest.fixture
def proxy_for(start_proxy) -> Iterator:  # type: ignore[type-arg]
    def start(config: dict, name: str = "proxy"):  # type: ignore[no-untyped-def]
        return start_proxy(config, name=name)

    yield start


def test_code_flow_login_then_proxy_refresh_and_restart(
    tmp_path, pki, people, api, proxy_for
) -> None:
    config = _config(tmp_path, pki, people, api.port, grant="authorization_code")
    path = _write(tmp_path, config)
    cli = Cli(path, "login", "api")
    url = _auth_url(cli)
    query = parse_qs(urlsplit(url).query)
    assert query["code_challenge_method"] == ["S256"] and query["code_challenge"]
    sign_in(url, username=USER, password=PASSWORD, ca=str(pki.ca_cert))
    code, out = cli.finish()
    assert code == 0, out
    assert "Signed in: api" in out
    assert people.grant_counts == {"authorization_code": 1}
    assert people.discovery_requests >= 1

    url_api = f"https://api.example.test:{api.port}/"
    proxy = proxy_for({k: v for k, v in config.items() if k not in ("confdir",)})
    s = proxy.session()
    assert s.get(url_api, timeout=30).status_code == 200
    people.expire_access_tokens()
    assert s.get(url_api, timeout=30).status_code == 200  # refresh with rotation
    assert people.grant_counts == {"authorization_code": 1, "refresh_token": 1}
    proxy.stop()

    again = proxy_for({k: v for k, v in config.items() if k not in ("confdir",)}, name="again")
    assert again.session().get(url_api, timeout=30).status_code == 200
    assert people.grant_counts == {"authorization_code": 1, "refresh_token": 1}  # no new login

    tokens = run_cli("--config", str(path), "tokens")
    assert tokens.returncode == 0, tokens.stderr
    assert "api" in tokens.stdout and "valid" in tokens.stdout and "yes" in tokens.stdout
    with people._lock:
        secrets = [*people._access, *people._grants.refresh]
    assert len(secrets) >= 2
    assert secrets_in([tokens.stdout, tokens.stderr, out], secrets) == []


def test_proxy_says_which_command_to_run_then_picks_up_the_login(
    tmp_path, pki, people, api, proxy_for
) -> None:
    config = _config(tmp_path, pki, people, api.port, grant="authorization_code")
    proxy = proxy_for({k: v for k, v in config.items() if k != "confdir"})
    s = proxy.session()
    url_api = f"https://api.example.test:{api.port}/"
    r = s.get(url_api, timeout=30)
    assert r.status_code == 502
    assert r.json()["reason"] == "needs_login"
    # The proxy was started with --config: the advice works as printed, from any directory.
    assert r.json()["hint"] == f"run: authproxy --config {proxy.config_path} login api"

    cli = Cli(_write(tmp_path, config), "login", "api")
    sign_in(_auth_url(cli), username=USER, password=PASSWORD, ca=str(pki.ca_cert))
    assert cli.finish()[0] == 0
    deadline = time.monotonic() + 20  # the running proxy looks at the store again within seconds
    while (r := s.get(url_api, timeout=30)).status_code != 200 and time.monotonic() < deadline:
        pass
    assert r.status_code == 200


def test_no_browser_paste_works(tmp_path, pki, people, api) -> None:
    cfg = _config(tmp_path, pki, people, api.port, grant="authorization_code")
    cli = Cli(_write(tmp_path, cfg), "login", "api", "--no-browser")
    final = sign_in(_auth_url(cli), username=USER, password=PASSWORD, ca=str(pki.ca_cert),
                    follow_redirect=False)  # fmt: skip
    code, out = cli.finish(final + "\n")
    assert code == 0, out
    assert people.grant_counts == {"authorization_code": 1}


def test_device_flow_pending_slow_down_approve(tmp_path, pki, people, api, proxy_for) -> None:
    people.device_interval = 0.5  # enforced
    people.advertised_interval = 0.1  # told: the client polls too early once, gets slow_down
    cfg = _config(tmp_path, pki, people, api.port, grant="device_code")
    cli = Cli(_write(tmp_path, cfg), "login", "api")
    complete = cli.wait_for("user_code=").strip().strip("()").removeprefix("or open ")
    cli.wait_for("poll more slowly")
    page = approve_device(complete, username=USER, password=PASSWORD, ca=str(pki.ca_cert))
    assert "approved" in page.lower()
    code, out = cli.finish()
    assert code == 0, out
    assert people.grant_counts.get("urn:ietf:params:oauth:grant-type:device_code", 0) >= 2
    proxy = proxy_for({k: v for k, v in cfg.items() if k != "confdir"})
    assert proxy.session().get(f"https://api.example.test:{api.port}/", timeout=30).ok


def test_password_grant_and_refresh_and_logout(
    tmp_path, pki, people, api, proxy_for, monkeypatch
) -> None:
    monkeypatch.setenv("ALICE_PW", PASSWORD)  # the config names ${ALICE_PW}
    cfg = _config(
        tmp_path, pki, people, api.port, grant="password", username=USER,
        password="${ALICE_PW}", client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
    )  # fmt: skip
    path = _write(tmp_path, cfg)
    proxy = proxy_for({k: v for k, v in cfg.items() if k != "confdir"})
    assert proxy.session().get(f"https://api.example.test:{api.port}/", timeout=30).ok
    assert people.grant_counts == {"password": 1}
    r = run_cli("--config", str(path), "refresh", "api")
    assert r.returncode == 0, r.stderr
    assert people.grant_counts == {"password": 1, "refresh_token": 1}
    r = run_cli("--config", str(path), "logout", "api")
    assert r.returncode == 0, r.stderr
    assert "revoked at the provider" in r.stdout
    assert people.revocations == 2  # refresh token and access token
    t = run_cli("--config", str(path), "tokens", "--json")
    assert '"state": "not fetched"' in t.stdout
