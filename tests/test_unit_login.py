"""Sign-in in-process: `login.login` in a thread of the test, a scripted person
(tests/support/user_agent.py) at the test authorization server (a thread too), the browser a
recorder of the URL it is given. The failures a person can meet, and login CSRF by another
local user (issue 8.7). `authproxy login` as a real process, and the proxy using its tokens:
test_e2e_login.py."""

from __future__ import annotations

import io
import os
import queue
import subprocess
import threading
import webbrowser
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import yaml
from harness import route
from support.inproc_cli import authproxy
from support.user_agent import approve_device, sign_in

from proxy_addon.config import load_config
from proxy_addon.demo.certs import Pki
from proxy_addon.demo.idp import AuthServer
from proxy_addon.login import LoginError, login
from proxy_addon.runtime import Runtime
from proxy_addon.tokens import Token

USER, PASSWORD = "alice", "alice-password-" + "w" * 8
MALLORY, MALLORY_PW = "mallory", "mallory-password-" + "m" * 8
PUBLIC_CLIENT = "cli-public"


@pytest.fixture
def people(idp: AuthServer, monkeypatch: pytest.MonkeyPatch) -> AuthServer:
    idp.add_user(USER, PASSWORD)
    idp.add_user(MALLORY, MALLORY_PW)
    idp.add_client(PUBLIC_CLIENT, None, redirect_uris=["http://127.0.0.1/callback"])
    monkeypatch.setenv("AUTHPROXY_KEY", "")
    return idp


class Browser:
    """What `webbrowser` is given: the URL a browser's command line would show to every user."""

    def __init__(self) -> None:
        self.opened: queue.Queue[str] = queue.Queue()

    def open(self, url: str, *args: Any, **kwargs: Any) -> bool:
        self.opened.put(url)
        return True

    def next_url(self, timeout: float = 20) -> str:
        return self.opened.get(timeout=timeout)


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Browser:
    recorder = Browser()
    monkeypatch.setattr(webbrowser, "get", lambda *args: recorder)
    return recorder


def _config_file(tmp_path: Path, pki: Pki, idp: AuthServer, **cred: object) -> Path:
    config = {
        "ca_certs": [str(pki.ca_cert)],
        "store": {"path": str(tmp_path / "state" / "tokens.db"),
                  "key_file": str(tmp_path / "keys" / "store.key")},
        "credentials": {"api": {"issuer": idp.url, "client_id": PUBLIC_CLIENT,
                                "scopes": ["read"], **cred}},
        "routes": [route("api.example.test", 443)],
    }  # fmt: skip
    path = tmp_path / "login.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def runtime(tmp_path: Path, pki: Pki, people: AuthServer) -> Iterator[Callable[..., Runtime]]:
    """The credential `api` of a config with `cred`, its grant and store as `login` gets them."""
    built: list[Runtime] = []

    def build(**cred: object) -> Runtime:
        path = _config_file(tmp_path, pki, people, **cred)
        built.append(Runtime.build(load_config(path), check_store=False))
        return built[-1]

    yield build
    for r in built:
        r.close()


class Login:
    """`login` of credential `api` in a thread, its terminal output readable line by line."""

    def __init__(self, rt: Runtime, *, no_browser: bool = False, timeout: float = 60) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.pasted: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.token: Token | None = None
        self.error: BaseException | None = None

        def read(prompt: str) -> str:
            return self.pasted.get(timeout=60)

        def run() -> None:
            try:
                cache = rt.caches["api"]
                self.token = login(
                    cache.grant, rt.store, no_browser=no_browser, timeout=timeout,
                    out=self._out, read=read,
                )  # fmt: skip
            except BaseException as e:  # handed to the test in finish()
                self.error = e
            finally:
                self.lines.put(None)

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def _out(self, text: str) -> None:
        for line in text.splitlines():
            self.lines.put(line)

    def wait_for(self, needle: str, timeout: float = 30) -> str:
        while True:
            line = self.lines.get(timeout=timeout)
            if line is None:
                raise AssertionError(f"{needle!r} never printed:\n" + "\n".join(self.seen))
            self.seen.append(line)
            if needle in line:
                return line

    def auth_url(self) -> str:
        return self.wait_for("https://127.0.0.1").strip()

    def finish(self, pasted: str | None = None) -> str:
        """Wait for the end; the LoginError's message ("" when signed in)."""
        if pasted is not None:
            self.pasted.put(pasted)
        self.thread.join(timeout=90)
        assert not self.thread.is_alive(), "login did not end"
        if self.error is not None and not isinstance(self.error, LoginError):
            raise self.error
        return str(self.error) if self.error else ""


# --- what a person can meet ---------------------------------------------------------------------


@pytest.mark.usefixtures("browser")
def test_denied_consent(runtime: Callable[..., Runtime], people: AuthServer, pki: Pki) -> None:
    cli = Login(runtime(grant="authorization_code"))
    sign_in(cli.auth_url(), username=USER, password=PASSWORD, approve=False, ca=str(pki.ca_cert))
    assert "sign-in was denied at the provider" in cli.finish()
    assert people.grant_counts == {}


def test_no_browser_paste_with_tampered_state(
    runtime: Callable[..., Runtime], people: AuthServer, pki: Pki
) -> None:
    cli = Login(runtime(grant="authorization_code"), no_browser=True)
    final = sign_in(cli.auth_url(), username=USER, password=PASSWORD, ca=str(pki.ca_cert),
                    follow_redirect=False)  # fmt: skip
    error = cli.finish(final.replace("state=", "state=x"))
    assert "the redirect's state does not match this login" in error
    assert people.grant_counts == {}  # the code was never exchanged


def test_pkce_verifier_mismatch(
    runtime: Callable[..., Runtime], people: AuthServer, pki: Pki
) -> None:
    from requests_oauthlib import OAuth2Session

    cli = Login(runtime(grant="authorization_code"), no_browser=True)
    q = parse_qs(urlsplit(cli.auth_url()).query)
    # A code obtained by someone else's authorization request (another PKCE challenge).
    other = OAuth2Session(PUBLIC_CLIENT, redirect_uri=q["redirect_uri"][0], pkce="S256")
    other_url, _ = other.authorization_url(people.authorize_url)
    stolen = sign_in(other_url, username=USER, password=PASSWORD, ca=str(pki.ca_cert),
                     follow_redirect=False)  # fmt: skip
    code_value = parse_qs(urlsplit(stolen).query)["code"][0]
    iss = parse_qs(urlsplit(stolen).query)["iss"][0]  # RFC 9207: the IdP names itself
    error = cli.finish(f"{q['redirect_uri'][0]}?code={code_value}&state={q['state'][0]}&iss={iss}")
    assert "the provider refused the authorization code" in error
    assert "PKCE verifier did not match" in error


def test_wrong_redirect_url_pasted(
    tmp_path: Path,
    pki: Pki,
    people: AuthServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Through `authproxy login` itself: the URL is read from stdin, the error printed as such.
    path = _config_file(tmp_path, pki, people, grant="authorization_code")
    monkeypatch.setattr("sys.stdin", io.StringIO("http://127.0.0.1:1/elsewhere?code=x&state=y\n"))
    r = authproxy(capsys, "--config", str(path), "login", "api", "--no-browser")
    assert r.returncode == 1
    assert "authproxy: login api: that is not the redirect this login waits for" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.usefixtures("browser")
def test_login_timeout(
    tmp_path: Path, pki: Pki, people: AuthServer, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _config_file(tmp_path, pki, people, grant="authorization_code")
    r = authproxy(capsys, "--config", str(path), "login", "api", "--timeout", "0.5")
    assert r.returncode == 1
    assert "authproxy: login api: no sign-in arrived within" in r.stderr
    assert "within 0s" in r.stderr or "within 1s" in r.stderr


def test_device_flow_denied_and_expired(
    runtime: Callable[..., Runtime], people: AuthServer, pki: Pki
) -> None:
    people.device_interval = 0.1
    rt = runtime(grant="device_code")
    cli = Login(rt)
    complete = cli.wait_for("user_code=").strip().strip("()").removeprefix("or open ")
    approve_device(complete, username=USER, password=PASSWORD, approve=False, ca=str(pki.ca_cert))
    assert "sign-in was denied at the provider" in cli.finish()

    people.device_code_ttl = 1
    error = Login(rt).finish()
    assert "the code expired before the sign-in was approved" in error


# --- login CSRF by another local user (issue 8.7) -----------------------------------------------
# The browser's command line is readable by every user of the machine: it must hold no state
# and no PKCE challenge, only the one-time local start URL.


def _follow_start(start_url: str) -> str:
    """What the browser does with the start URL: one request, answered by a redirect."""
    r = requests.get(start_url, allow_redirects=False, timeout=10)
    assert r.status_code == 302, r.status_code
    return r.headers["Location"]


def test_the_browser_command_line_holds_no_state(
    runtime: Callable[..., Runtime], people: AuthServer, pki: Pki, browser: Browser
) -> None:
    cli = Login(runtime(grant="authorization_code"))
    idp_url = cli.auth_url()
    argv = browser.next_url()
    state = parse_qs(urlsplit(idp_url).query)["state"][0]
    challenge = parse_qs(urlsplit(idp_url).query)["code_challenge"][0]
    assert state not in argv and challenge not in argv
    assert argv.startswith("http://127.0.0.1:") and "/start/" in argv
    target = _follow_start(argv)
    assert target == idp_url
    sign_in(target, username=USER, password=PASSWORD, ca=str(pki.ca_cert))
    assert cli.finish() == ""
    assert people.grant_counts == {"authorization_code": 1}


def test_the_start_url_works_once_and_a_second_use_stops_the_login(
    runtime: Callable[..., Runtime], people: AuthServer, pki: Pki, browser: Browser
) -> None:
    cli = Login(runtime(grant="authorization_code"))
    argv = browser.next_url()
    attacker_target = _follow_start(argv)  # another user got there first
    r = requests.get(argv, allow_redirects=False, timeout=10)  # the victim's browser
    assert r.status_code == 409
    # Whatever the other user does with what he learnt, nothing is exchanged or stored.
    sign_in(attacker_target, username=MALLORY, password=MALLORY_PW, ca=str(pki.ca_cert))
    assert "opened twice" in cli.finish()
    assert people.grant_counts == {}


def test_a_callback_with_a_wrong_state_is_ignored_and_the_login_goes_on(
    runtime: Callable[..., Runtime], people: AuthServer, pki: Pki, browser: Browser
) -> None:
    from requests_oauthlib import OAuth2Session

    cli = Login(runtime(grant="authorization_code"))
    idp_url = cli.auth_url()
    argv = browser.next_url()
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
    assert cli.finish() == ""
    assert people.grant_counts == {"authorization_code": 1}  # only the victim's code
    with people._lock:
        issued = list(people._access)
    assert {people.subject_of(t) for t in issued} == {USER}


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0, reason="needs root to be nobody")
def test_another_user_cannot_use_the_start_url(
    runtime: Callable[..., Runtime], people: AuthServer, pki: Pki, browser: Browser
) -> None:
    if not Path("/proc/net/tcp").exists():
        pytest.skip("no /proc/net/tcp here")
    cli = Login(runtime(grant="authorization_code"))
    argv = browser.next_url()
    other = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10", argv],
        capture_output=True, text=True, timeout=30, user=65534, group=65534,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    )  # fmt: skip
    assert other.stdout == "403", other
    cli.wait_for("from another user")
    sign_in(_follow_start(argv), username=USER, password=PASSWORD, ca=str(pki.ca_cert))
    assert cli.finish() == ""


class _Peer:
    """What `same_user` reads of a request handler: the client's address."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.client_address = address


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="the kernel cannot be asked here")
def test_the_sign_in_listener_refuses_a_socket_the_kernel_does_not_know() -> None:
    # A client that resets its connection right after sending is gone before the lookup:
    # where the owner can be looked up at all, "unknown" is not "ours".
    import socket

    from proxy_addon.login import _Listener

    listener = _Listener(0, "state")
    try:
        with socket.create_connection(("127.0.0.1", listener.port)) as ours:
            assert listener.same_user(_Peer(ours.getsockname()))  # type: ignore[arg-type]
        gone = ("127.0.0.1", 1)  # no socket has this address and the listener's as its peer
        assert not listener.same_user(_Peer(gone))  # type: ignore[arg-type]
        assert not listener.same_user(_Peer(("not an address", 5)))  # type: ignore[arg-type]
    finally:
        listener.close()
