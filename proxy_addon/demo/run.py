"""`authproxy demo`: a local OAuth 2 server, a local HTTPS API and the proxy, wired together.

Needs no outside service. It shows the one thing the product does: a client that knows nothing
of OAuth calls the API through the proxy and the API sees a valid Bearer token.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
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

__all__ = ["run_demo", "wait_for_proxy"]

CLIENT_ID = "demo-client"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


def run_demo(*, once: bool) -> int:
    work = Path(tempfile.mkdtemp(prefix="authproxy-demo-"))
    secret = secrets.token_urlsafe(24)
    pki = make_pki(work / "pki")
    idp = AuthServer(pki, access_token_ttl=300).start()
    idp.add_client(CLIENT_ID, secret)
    api = ApiServer(idp.is_valid, pki).start()
    port = free_port()
    config = write_config(work, idp, api, pki.ca_cert, port)
    ca_file = work / "mitmproxy" / "mitmproxy-ca-cert.pem"
    env = {**os.environ, "AUTHPROXY_DEMO_SECRET": secret}
    print(f"demo: OAuth server {idp.url}, API {api.url}, config {config}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy_addon", "--config", str(config), "run"], env=env
    )
    try:
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
        if once:
            return 0 if r.ok and r.json().get("token_fp") else 1
        print("\nThe proxy keeps running; press Ctrl-C to stop.")
        proc.wait()
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        api.stop()
        idp.stop()
        shutil.rmtree(work, ignore_errors=True)
