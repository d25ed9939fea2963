"""Login CSRF by another local user (issue 8.7), with `authproxy login` as a real process and a
scripted person (tests/support/user_agent.py) at the test authorization server.

The "browser" is a script that records its command line, which every user of the machine can
read: it must hold no state and no PKCE challenge, only the one-time local start URL."""

from __future__ import annotations

import os
import queue
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from support.user_agent import sign_in
from test_e2e_login import PASSWORD, PUBLIC_CLIENT, USER, Cli, _auth_url, _config, _write

from proxy_addon.demo.idp import AuthServer

MALLORY, MALLORY_PW = "mallory", "mallory-password-" + "m" * 8


@pytest.fixture
def people(idp: AuthServer) -> AuthServer:
    idp.add_user(USER, PASSWORD)
    idp.add_user(MALLORY, MALLORY_PW)
    idp.add_client(PUBLIC_CLIENT, None, redirect_uris=["http://127.0.0.1/callback"])
    return idp


def _browser(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """A BROWSER that only writes down the command line it was started with."""
    argv = tmp_path / "browser-argv.txt"
    script = tmp_path / "browser.sh"
    script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" >> {argv}\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return {"BROWSER": str(script)}, argv


def _wait_for_file(path: Path, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.05)
    raise AssertionError(f"{path} never written")


def _start_cli(tmp_path: Path, pki, people: AuthServer, api_port: int) -> tuple[Cli, str, str]:
    env, argv_file = _browser(tmp_path)
    cfg = _config(tmp_path, pki, people, api_port, grant="authorization_code")
    cli = _CliWithBrowser(_write(tmp_path, cfg), env["BROWSER"], "login", "api")
    idp_url = _auth_url(cli)
    return cli, _wait_for_file(argv_file), idp_url


class _CliWithBrowser(Cli):
    """`Cli` with our recording BROWSER instead of `true`."""

    def __init__(self, config: Path, browser: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proxy_addon", "--config", str(config), *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "BROWSER": browser},
        )  # fmt: skip
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()


def _follow_start(start_url: str) -> str:
    """What the browser does with the start URL: one request, answered by a redirect."""
    r = requests.get(start_url, allow_redirects=False, timeout=10)
    assert r.status_code == 302, r.status_code
    return r.headers["Location"]


def test_the_browser_command_line_holds_no_state(tmp_path, pki, people, api) -> None:
    cli, argv, idp_url = _start_cli(tmp_path, pki, people, api.port)
    state = parse_qs(urlsplit(idp_url).query)["state"][0]
    challenge = parse_qs(urlsplit(idp_url).query)["code_challenge"][0]
    assert state not in argv and challenge not in argv
    assert argv.startswith("http://127.0.0.1:") and "/start/" in argv
    target = _follow_start(argv)
    assert target == idp_url
    sign_in(target, username=USER, password=PASSWORD, ca=str(pki.ca_cert))
    code, out = cli.finish()
    assert code == 0, out
    assert people.grant_counts == {"authorization_code": 1}


def test_the_start_url_works_once_and_a_second_use_stops_the_login(
    tmp_path, pki, people, api
) -> None:
    cli, argv, _ = _start_cli(tmp_path, pki, people, api.port)
    attacker_target = _follow_start(argv)  # another user got there first
    r = requests.get(argv, allow_redirects=False, timeout=10)  # the victim's browser
    assert r.status_code == 409
    # Whatever the other user does with what he learnt, nothing is exchanged or stored.
    sign_in(attacker_target, username=MALLORY, password=MALLORY_PW, ca=str(pki.ca_cert))
    code, out = cli.finish()
    assert code == 1
    assert "opened twice" in out
    assert people.grant_counts == {}


def test_a_callback_with_a_wrong_state_is_ignored_and_the_login_goes_on(
    tmp_path, pki, people, api
) -> None:
    from requests_oauthlib import OAuth2Session

    cli, argv, idp_url = _start_cli(tmp_path, pki, people, api.port)
    redirect_uri = parse_qs(urlsplit(idp_url).query)["redirect_uri"][0]
    # Another user signs in as himself with the victim's redirect URI and his own state, and
    # sends his code to the victim's listener.
    other = OAuth2Session(PUBLIC_CLIENT, redirect_uri=redirect_uri, pkce="S256")
    other_url, _ = other.authorization_url(people.authorize_url)
    sign_in(other_url, username=MALLORY, password=MALLORY_PW, ca=str(pki.ca_cert))
    cli.wait_for("not for this sign-in")
    # A hit with no state at all is ignored too.
    assert requests.get(f"{redirect_uri}?code=x", timeout=10).status_code == 400
    sign_in(_follow_start(argv), username=USER, password=PASSWORD, ca=str(pki.ca_cert))
    code, out = cli.finish()
    assert code == 0, out
    assert people.grant_counts == {"authorization_code": 1}  # only the victim's code
    with people._lock:
        issued = list(people._access)
    assert {people.subject_of(t) for t in issued} == {USER}


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0, reason="needs root to be nobody")
def test_another_user_cannot_use_the_start_url(tmp_path, pki, people, api) -> None:
    if not Path("/proc/net/tcp").exists():
        pytest.skip("no /proc/net/tcp here")
    cli, argv, _ = _start_cli(tmp_path, pki, people, api.port)
    other = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10", argv],
        capture_output=True, text=True, timeout=30, user=65534, group=65534,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    )  # fmt: skip
    assert other.stdout == "403", other
    cli.wait_for("from another user")
    sign_in(_follow_start(argv), username=USER, password=PASSWORD, ca=str(pki.ca_cert))
    code, out = cli.finish()
    assert code == 0, out
