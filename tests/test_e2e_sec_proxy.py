"""Attacks on the request path that need real processes: a request line naming another host
inside a CONNECT tunnel (curl --request-target), the status page hit straight on the listen
port, a streamed upload while the IdP is down, and mitmweb loading the addon as a script."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests
from harness import CLIENT_SECRET, HOSTS, Proxy, cc_credential, route, secrets_in

from proxy_addon.demo.api import ApiServer
from proxy_addon.demo.idp import AuthServer
from proxy_addon.demo.run import wait_for_proxy
from proxy_addon.netutil import free_port


def _config(idp: AuthServer, api: ApiServer, **cred: object) -> dict:
    return {
        "credentials": {"api": cc_credential(idp.token_url, **cred)},
        "routes": [route("api.example.test", api.port)],
    }


def _status(r: subprocess.CompletedProcess[str]) -> int:
    """The status of the last response curl printed (after the CONNECT's own)."""
    lines = [line for line in r.stdout.splitlines() if line.startswith("HTTP/")]
    assert lines, r.stdout + r.stderr
    return int(lines[-1].split()[1])


def test_absolute_form_request_line_in_a_tunnel_never_gets_the_token(start_proxy, idp, api) -> None:
    """Issue 8.1 (severe): CONNECT, SNI and Host name the routed host, the request line another."""
    proxy = start_proxy(_config(idp, api))
    url = f"https://api.example.test:{api.port}/v1/x"
    other = proxy.curl("-i", "--request-target", f"https://other.test:{api.port}/v1/x", url)
    assert _status(other) == 421
    assert "misdirected_request" in other.stdout
    port = proxy.curl("-i", "--request-target", "https://api.example.test:1/v1/x", url)
    assert _status(port) == 421
    assert api.requests_log == []

    same = proxy.curl("-i", "--request-target", f"https://api.example.test:{api.port}/v1/x", url)
    assert _status(same) == 200
    (seen,) = api.requests_log
    assert seen["path"] == "/v1/x"  # forwarded in origin form
    assert seen["authorized"]


def test_status_page_is_not_served_to_a_request_sent_straight_to_the_port(start_proxy, idp, api):
    proxy = start_proxy(_config(idp, api))
    direct = subprocess.run(
        ["curl", "-sS", "-i", "--max-time", "20", "-H", "Host: authproxy.local",
         f"http://127.0.0.1:{proxy.port}/status.json"],
        capture_output=True, text=True, timeout=60,
        env={k: v for k, v in os.environ.items() if "proxy" not in k.lower()},
    )  # fmt: skip
    assert _status(direct) == 421
    assert '"credentials"' not in direct.stdout
    via_proxy = proxy.session().get("http://authproxy.local/status.json", timeout=30)
    assert via_proxy.status_code == 200 and "credentials" in via_proxy.json()


def test_streamed_upload_while_the_idp_is_down_is_answered_not_left_hanging(
    start_proxy, idp, api, tmp_path: Path
) -> None:
    """Issue 14.6: mitmproxy cannot answer a request whose body it streams; the client must get
    the error, promptly. The first upload waits for the failing token request; the others are
    refused at once (the credential backs off), while their bodies still arrive: those used to
    be killed, and mitmproxy 12 could then leave the socket open (curl waited for --max-time)."""
    backoff = {"retry_attempts": 1, "backoff_initial": 60, "backoff_max": 60}
    proxy = start_proxy(_config(idp, api, **backoff), "--set", "stream_large_bodies=1k")
    idp.stop()
    url = f"https://api.example.test:{api.port}/upload"
    upload = tmp_path / "upload.bin"
    upload.write_bytes(b"z" * 200_000)
    chunked, expect = ["-H", "Transfer-Encoding: chunked"], ["-H", "Expect: 100-continue"]
    # The immediate refusal raced with the body's arrival: a few rounds of each framing.
    for extra in [[], *[[], chunked, expect] * 3]:
        started = time.monotonic()
        r = proxy.curl("-i", "--max-time", "20", "-X", "POST", "--data-binary", f"@{upload}",
                       *extra, url)  # fmt: skip
        took = time.monotonic() - started
        assert r.returncode == 0, f"curl {extra} failed after {took:.1f} s: {r.stderr}"
        assert took < 5, f"the client waited {took:.1f} s"
        assert _status(r) == 502, r.stdout
        assert "X-Authproxy-Error: token_unavailable" in r.stdout
        assert '"error": "token_unavailable"' in r.stdout
    assert api.requests_log == []  # never sent upstream without its token
    assert "token refresh failing, next attempt in" in proxy.output()  # refused at once


def test_mitmweb_with_the_addon_as_a_script_never_shows_a_token(tmp_path, pki, idp, api) -> None:
    """Issue 8.6: `mitmweb -s proxy_addon/addon.py` hides in-flight flows as `run --web` does."""
    cfg = Proxy(tmp_path, {**_config(idp, api), "ca_certs": [str(pki.ca_cert)],
                           "store": {"backend": "memory"}})  # fmt: skip
    port, web_port, password = free_port(), free_port(), "web-" + "p" * 20
    mitmweb = Path(sys.executable).parent / "mitmweb"
    log = (tmp_path / "mitmweb.log").open("wb")
    proc = subprocess.Popen(
        [str(mitmweb), "--listen-host", "127.0.0.1", "-p", str(port),
         "--set", f"web_port={web_port}", "--set", f"web_password={password}",
         "--set", "web_open_browser=false", "--set", f"confdir={cfg.confdir}",
         "-s", "proxy_addon/addon.py", "--set", f"authproxy_config={cfg.config_path}"],
        env={**os.environ, "PYTHONPATH": str(HOSTS)}, cwd=Path(__file__).parent.parent,
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    arrived, release = threading.Event(), threading.Event()
    handle = api.handle

    def held(request):  # type: ignore[no-untyped-def]
        arrived.set()
        assert release.wait(30)
        return handle(request)

    api.handle = held  # type: ignore[method-assign]
    web = requests.Session()
    web.trust_env = False
    web.headers["Authorization"] = f"Bearer {password}"
    result: list[int] = []
    try:
        wait_for_proxy(proc, port, cfg.ca)
        s = requests.Session()
        s.trust_env = False
        s.proxies = {"https": f"http://127.0.0.1:{port}"}
        s.verify = str(cfg.ca)
        t = threading.Thread(target=lambda: result.append(
            s.get(f"https://api.example.test:{api.port}/x", timeout=60).status_code))  # fmt: skip
        t.start()
        assert arrived.wait(30)
        in_flight = [web.get(f"http://127.0.0.1:{web_port}/flows", timeout=30),
                     web.get(f"http://127.0.0.1:{web_port}/flows/dump", timeout=30)]  # fmt: skip
        release.set()
        t.join(60)
        after = web.get(f"http://127.0.0.1:{web_port}/flows/dump", timeout=30)
    finally:
        release.set()
        proc.terminate()
        proc.wait(timeout=20)
        log.close()
    assert result == [200]
    assert all(r.status_code == 200 for r in [*in_flight, after])
    with idp._lock:  # test-only peek at the server's issued tokens
        tokens = list(idp._access)
    assert tokens
    texts = [r.content for r in [*in_flight, after]]
    assert secrets_in(texts, [*tokens, CLIENT_SECRET]) == []
    assert b"api.example.test" not in in_flight[0].content  # hidden while it held a token
    assert b"<redacted:api:" in after.content  # shown once redacted


def test_socks5_checks_the_same_names(start_proxy, idp, api) -> None:
    """Issue 8.1 in SOCKS5 mode: the SOCKS target is the destination every name must match."""
    socks = free_port()
    proxy = start_proxy(_config(idp, api), "--set", "mode=regular",
                        "--set", f"mode=socks5@127.0.0.1:{socks}")  # fmt: skip
    url = f"https://api.example.test:{api.port}/v1/x"

    def curl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["curl", "-sS", "-i", "--max-time", "20", "--socks5-hostname", f"127.0.0.1:{socks}",
             "--cacert", str(proxy.ca), *args, url],
            capture_output=True, text=True, timeout=60,
            env={k: v for k, v in os.environ.items() if "proxy" not in k.lower()},
        )  # fmt: skip

    assert _status(curl("--request-target", f"https://other.test:{api.port}/v1/x")) == 421
    assert _status(curl("-H", "Host: other.test")) == 421
    assert api.requests_log == []
    assert _status(curl()) == 200
    assert api.requests_log[0]["authorized"]
