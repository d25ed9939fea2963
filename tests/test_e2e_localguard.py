"""Another local user (uid 65534, `nobody`) against a running proxy, exec's temporary proxy and
a port it listens on itself; and what the proxy process leaves to others (file modes, dumps).

Clients run as another uid through `subprocess(user=65534)`, which needs root: those tests are
skipped otherwise. curl is the other user's client (the test venv is not readable by nobody).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from harness import Proxy, cc_credential, route
from test_e2e_wrap import api_url, clean_env, port_of, read_line, wrapped_config

from proxy_addon.demo.api import ApiServer
from proxy_addon.demo.certs import Pki
from proxy_addon.demo.idp import AuthServer

NOBODY = 65534
as_root = pytest.mark.skipif(os.getuid() != 0, reason="running a client as another uid needs root")


def curl_as(uid: int | None, proxy: str, url: str, ca: Path) -> subprocess.CompletedProcess[str]:
    """curl through `proxy` as `uid` (None: as this process). Another uid cannot read the
    test's CA file; it skips the check (-k): what matters is whether the proxy serves it."""
    trust = ["--cacert", str(ca)] if uid is None else ["-k"]
    return subprocess.run(
        ["curl", "-sS", "--max-time", "20", "--proxy", proxy, *trust,
         "-o", "-", "-w", "\n%{http_code}", url],
        capture_output=True, text=True, timeout=60, user=uid, cwd="/",
        env={"PATH": os.environ["PATH"]},
    )  # fmt: skip


@pytest.fixture
def api_proxy(
    start_proxy: Callable[..., Proxy], idp: AuthServer, api: ApiServer
) -> Callable[..., Proxy]:
    def start(*args: str, **extra: object) -> Proxy:
        config = {
            "credentials": {"api": cc_credential(idp.token_url)},
            "routes": [route("api.example.test", api.port)],
            **extra,
        }
        return start_proxy(config, *args)

    return start


@as_root
def test_another_user_cannot_use_a_running_proxy_or_its_status_page(
    api_proxy: Callable[..., Proxy], api: ApiServer
) -> None:
    proxy = api_proxy()
    mine = curl_as(None, proxy.url, api_url(api, "/mine"), proxy.ca)
    assert mine.stdout.endswith("\n200"), mine
    for url in (api_url(api, "/theirs"), "http://authproxy.local/status.json"):
        theirs = curl_as(NOBODY, proxy.url, url, proxy.ca)
        assert theirs.returncode in (52, 56), theirs  # closed before any answer
        assert "credentials" not in theirs.stdout
    assert [e["path"] for e in api.requests_log] == ["/mine"]
    proxy.stop()
    out = proxy.output()
    assert f"it belongs to another local user (uid {NOBODY}, this proxy runs as uid 0)" in out
    assert "Traceback" not in out


@as_root
def test_with_proxy_auth_another_user_needs_the_password(
    api_proxy: Callable[..., Proxy], api: ApiServer
) -> None:
    proxy = api_proxy(proxy_auth="team:a-long-proxy-password")
    url = proxy.url.replace("http://", "http://team:a-long-proxy-password@")
    assert curl_as(NOBODY, url, api_url(api, "/with"), proxy.ca).stdout.endswith("\n200")
    without = curl_as(NOBODY, proxy.url, api_url(api, "/without"), proxy.ca)
    assert without.returncode != 0 or without.stdout.endswith("\n407"), without
    assert [e["path"] for e in api.requests_log] == ["/with"]


@as_root
def test_exec_temporary_proxy_serves_only_its_command(
    tmp_path: Path, pki: Pki, idp: AuthServer, api: ApiServer
) -> None:
    wrapped = wrapped_config(tmp_path, pki, idp, [route("api.example.test", api.port)])
    flag = wrapped.cwd / "done"
    script = f"""
        printf '%s\\n' "$HTTPS_PROXY"
        while [ ! -e {flag} ]; do sleep 0.05; done
    """
    proc = wrapped.popen_exec("sh", "-c", script)
    try:
        url = read_line(proc, timeout=60).strip()
        port = port_of(url)
        bare = f"http://127.0.0.1:{port}"
        ca = wrapped.cwd / "mitmproxy" / "mitmproxy-ca-cert.pem"
        # The command's URL, password included, works for this user only.
        assert curl_as(None, url, api_url(api, "/mine"), ca).stdout.endswith("\n200")
        theirs = curl_as(NOBODY, url, api_url(api, "/theirs"), ca)
        assert theirs.returncode in (52, 56), theirs
        no_password = curl_as(None, bare, api_url(api, "/no-password"), ca)
        assert no_password.returncode != 0 or no_password.stdout.endswith("\n407"), no_password
        # Not in any process's argv, which every user can read.
        for pid in (p for p in os.listdir("/proc") if p.isdigit()):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            assert url.split("@")[0].split(":")[-1].encode() not in argv
    finally:
        flag.touch()
        proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert [e["path"] for e in api.requests_log] == ["/mine"]


def test_exec_keeps_the_store_key_and_config_secrets_from_the_command(
    tmp_path: Path, pki: Pki, idp: AuthServer, api: ApiServer
) -> None:
    secret = "client-secret-from-env-" + "y" * 16
    idp.add_client("env-client", secret)
    wrapped = wrapped_config(tmp_path, pki, idp, [route("api.example.test", api.port)])
    config = (
        wrapped.config.read_text()
        .replace("client_secret: secret-a-xxxxxxxxxxxxxxxx", "client_secret: ${MY_CLIENT_SECRET}")
        .replace("client_id: client-a", "client_id: env-client")
    )
    assert "${MY_CLIENT_SECRET}" in config
    wrapped.config.write_text(config)
    wrapped.env.update(
        MY_CLIENT_SECRET=secret, AUTHPROXY_KEY=Fernet.generate_key().decode(), UNRELATED="kept"
    )
    script = 'env; curl -sS --fail --max-time 30 "$1"'
    r = wrapped.exec("sh", "-c", script, "sh", api_url(api, "/env"))
    assert r.returncode == 0, r.stderr
    *env_lines, body = r.stdout.splitlines()
    names = {line.split("=", 1)[0] for line in env_lines}
    assert "MY_CLIENT_SECRET" not in names and "AUTHPROXY_KEY" not in names
    assert secret not in r.stdout and wrapped.env["AUTHPROXY_KEY"] not in r.stdout
    assert {"UNRELATED", "HOME", "HTTPS_PROXY"} <= names
    assert json.loads(body)["token_fp"]  # the temporary proxy had both


SQUATTER = """
import json, socket, sys
server = socket.create_server(("127.0.0.1", int(sys.argv[1])))
print("listening", flush=True)
body = json.dumps({"credentials": [], "counters": {}}).encode()
while True:
    conn, _ = server.accept()
    conn.settimeout(5)
    data = b""
    try:
        while b"\\r\\n\\r\\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    # Reports what it got, then answers as an authproxy's status page would.
    print(json.dumps({"bytes": len(data), "proxy_auth": b"proxy-authorization" in data.lower()}),
          flush=True)
    try:
        conn.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Type: application/json\\r\\n"
                     b"Content-Length: %d\\r\\nConnection: close\\r\\n\\r\\n" % len(body) + body)
    except OSError:
        pass
    conn.close()
"""


@as_root
def test_env_exec_and_tokens_send_nothing_to_another_users_listener(
    tmp_path: Path, pki: Pki, idp: AuthServer, api: ApiServer, proxies: list[Proxy]
) -> None:
    wrapped = wrapped_config(
        tmp_path, pki, idp, [route("api.example.test", api.port)],
        proxy_auth="me:my-proxy-password",
    )  # fmt: skip
    # Our own proxy once elsewhere, for the CA that `env` needs.
    ours = Proxy(tmp_path, yaml_of(wrapped.config), name="once")
    proxies.append(ours)
    ours.start().stop()
    squatter = subprocess.Popen(
        ["/usr/bin/python3", "-c", SQUATTER, str(wrapped.listen_port)],
        user=NOBODY, stdout=subprocess.PIPE, text=True, cwd="/",
    )  # fmt: skip
    try:
        assert read_line(squatter, timeout=20).strip() == "listening"  # type: ignore[arg-type]
        env = wrapped.authproxy("env")
        assert env.returncode == 2 and env.stdout == ""
        assert f"is not your authproxy: another user (uid {NOBODY}) listens there" in env.stderr

        r = wrapped.exec("curl", "-sS", "--fail", "--max-time", "30", api_url(api, "/exec"))
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["token_fp"]
        assert "is not your authproxy" in r.stderr and "using a temporary proxy" in r.stderr

        tokens = wrapped.authproxy("tokens")
        assert tokens.returncode == 0, tokens.stderr
        assert "not asking" in tokens.stderr
    finally:
        squatter.kill()
        out, _ = squatter.communicate(timeout=20)
    seen = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert seen == [{"bytes": 0, "proxy_auth": False}] * len(seen), seen


def yaml_of(config: Path) -> dict[str, object]:
    import yaml

    data = yaml.safe_load(config.read_text())
    data.pop("listen")
    return data


# --- the proxy process --------------------------------------------------------------------------


def test_flow_files_har_exports_and_audit_logs_are_private(
    api_proxy: Callable[..., Proxy], api: ApiServer, tmp_path: Path
) -> None:
    flows, har, audit = tmp_path / "flows.mitm", tmp_path / "flows.har", tmp_path / "audit.jsonl"
    flows.write_bytes(b"")  # an old flow file, open to others: rewritten in place by -w
    flows.chmod(0o644)
    old_umask = os.umask(0o022)  # what the proxy inherits: files 0644 unless it says otherwise
    try:
        proxy = api_proxy("-w", str(flows), "--audit-log", str(audit), "--set", f"hardump={har}")
    finally:
        os.umask(old_umask)
    assert proxy.session().get(api_url(api, "/file-modes"), timeout=30).ok
    proxy.stop()
    for path in (flows, har, audit):
        assert path.stat().st_size > 0, path
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_proxy_writes_no_core_dump_and_is_not_dumpable(
    api_proxy: Callable[..., Proxy], tmp_path: Path
) -> None:
    proxy = api_proxy()
    assert proxy.proc is not None
    limits = Path(f"/proc/{proxy.proc.pid}/limits").read_text()
    core = next(line for line in limits.splitlines() if line.startswith("Max core file size"))
    assert core.split()[4:6] == ["0", "0"], core
    # The dumpable flag cannot be read from outside as root: the same hook in a process of its
    # own reports it (and the umask) itself.
    probe = """
import ctypes, os
from mitmproxy.test import taddons
from proxy_addon.localguard import LocalGuard
with taddons.context(LocalGuard()):
    pass
print(ctypes.CDLL(None).prctl(3, 0, 0, 0, 0), oct(os.umask(0)))
"""
    r = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env=clean_env(tmp_path / "home"),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["0", "0o77"]
