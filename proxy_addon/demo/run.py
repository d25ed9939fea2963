"""`authproxy demo`: a local OAuth 2 server, a local HTTPS API and the proxy, wired together.

Needs no outside service. It shows the one thing the product does: a client that knows nothing
of OAuth calls the API through the proxy and the API sees a valid Bearer token.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from proxy_addon.demo.api import ApiServer
from proxy_addon.demo.certs import make_pki
from proxy_addon.demo.idp import AuthServer
from proxy_addon.netutil import free_port

__all__ = ["free_port", "run_demo", "wait_for_proxy"]

CLIENT_ID = "demo-client"


def wait_for_proxy(
    proc: subprocess.Popen[bytes], port: int, ca_file: Path, timeout: float = 30.0
) -> None:
    """Until the proxy accepts connections and has written its CA (or has died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the proxy exited with status {proc.returncode} while starting")
        if ca_file.exists():
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return
            except OSError:
                pass
        time.sleep(0.05)  # polling a port someone else opens; there is nothing to wait on
    raise TimeoutError(f"the proxy did not listen on 127.0.0.1:{port} within {timeout:g}s")


def write_config(work: Path, idp: AuthServer, api: ApiServer, ca_cert: Path, port: int) -> Path:
    config = f"""\
# Written by `authproxy demo`. The client secret comes from the environment.
listen: 127.0.0.1:{port}
confdir: {work / "mitmproxy"}
ca_certs: [{ca_cert}]          # the demo IdP and API use a private CA
store:
  path: {work / "state" / "tokens.db"}
  key_file: {work / "keys" / "store.key"}
credentials:
  demo:
    grant: client_credentials
    token_url: {idp.token_url}
    client_id: {CLIENT_ID}
    client_secret: ${{AUTHPROXY_DEMO_SECRET}}
    scopes: [demo.read]
routes:
  - host: localhost
    port: {api.port}
    path: /v1
    credential: demo
"""
    path = work / "config.yaml"
    path.write_text(config)
    return path


class _Stopped(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _stop_on(signum: int, frame: object) -> None:
    raise _Stopped(signum)


class _Parts:
    """What the demo started, so that every exit path stops it."""

    def __init__(self) -> None:
        self.servers: list[AuthServer | ApiServer] = []
        self.proxy: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.terminate()
            try:
                self.proxy.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proxy.kill()
                self.proxy.wait()
        for server in reversed(self.servers):
            server.stop()


def run_demo(*, once: bool) -> int:
    """SIGTERM or SIGHUP, like Ctrl-C, stop the proxy and the servers and remove the work
    directory (which holds the demo secret's token store) before the demo exits."""
    stops = [signal.SIGTERM, signal.SIGHUP]
    previous = {s: signal.signal(s, _stop_on) for s in stops}
    parts = _Parts()
    work: Path | None = None
    try:
        work = Path(tempfile.mkdtemp(prefix="authproxy-demo-"))
        return _demo(work, parts, once)
    except KeyboardInterrupt:
        return 0
    except _Stopped as e:
        return 128 + e.signum
    finally:
        for s in stops:  # cleaning up must not be cut short by another signal
            signal.signal(s, signal.SIG_IGN)
        parts.stop()
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
        for s, handler in previous.items():
            signal.signal(s, handler)


def _demo(work: Path, parts: _Parts, once: bool) -> int:
    secret = secrets.token_urlsafe(24)
    pki = make_pki(work / "pki")
    idp = AuthServer(pki, access_token_ttl=300).start()
    parts.servers.append(idp)
    idp.add_client(CLIENT_ID, secret)
    api = ApiServer(idp.is_valid, pki).start()
    parts.servers.append(api)
    port = free_port()
    config = write_config(work, idp, api, pki.ca_cert, port)
    ca_file = work / "mitmproxy" / "mitmproxy-ca-cert.pem"
    env = {**os.environ, "AUTHPROXY_DEMO_SECRET": secret}
    print(f"demo: OAuth server {idp.url}, API {api.url}, config {config}")
    proc = parts.proxy = subprocess.Popen(
        [sys.executable, "-m", "proxy_addon", "--config", str(config), "run"],
        env=env,
        preexec_fn=_die_with_parent,
    )
    wait_for_proxy(proc, port, ca_file)
    url = f"https://localhost:{api.port}/v1/hello"
    proxy = f"http://127.0.0.1:{port}"
    with requests.Session() as session:
        session.trust_env = False
        r = session.get(url, proxies={"https": proxy}, verify=str(ca_file), timeout=30)
    issued = [e for e in idp.requests_log if e.get("status") == 200]
    print("\n--- the demo call, made without any credentials ---")
    print(f"GET {url} via {proxy} -> HTTP {r.status_code}")
    print(json.dumps(r.json(), indent=2))
    if r.ok:
        print(
            f"The API saw a Bearer token (fingerprint {r.json().get('token_fp')}) that the "
            f"proxy obtained from the OAuth server ({len(issued)} token request(s))."
        )
    print("\nTry it yourself:")
    print(f"  curl --proxy {proxy} --cacert {ca_file} {url}")
    print(demo_reuse_text(config, url, secret))
    if once:
        return 0 if r.ok and r.json().get("token_fp") else 1
    print("\nThe proxy keeps running; press Ctrl-C to stop.", flush=True)
    proc.wait()
    return 0


def demo_reuse_text(config: Path, url: str, secret: str) -> str:
    """How to use the running demo from another terminal (while it runs: the directory and
    the OAuth server go when it stops)."""
    cli = f"authproxy --config {shlex.quote(str(config))}"
    return (
        "\nFrom another terminal, while the demo runs:\n"
        f'  eval "$({cli} env)"; curl {url}\n'
        f"  {cli} tokens\n"
        "Commands that ask the OAuth server themselves (refresh, login, a second proxy) also "
        "need its client secret, a throwaway of this demo:\n"
        f"  export AUTHPROXY_DEMO_SECRET={shlex.quote(secret)}"
    )


def _die_with_parent() -> None:
    """In the proxy, between fork and exec: should the demo be killed (SIGKILL, no cleanup),
    the proxy with the demo secret stops too (Linux)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
