"""IdP calls per expiry for a fleet of 1, 2, 4 and 8 `authproxy run` processes on one Redis.

Real parts on 127.0.0.1: a redis-server (AOF, appendfsync always), the demo IdP with short
access tokens and refresh-token rotation with reuse detection, the demo HTTPS API, and N proxy
processes with separate HOMEs sharing AUTHPROXY_KEY, the Redis store and one mitmproxy CA.
Client threads (spread over the members) call the API for a few seconds. Each member refreshes
at the token's half-life; the fleet should then make ONE IdP call per due point, whatever N.

A "refresh window" is a cluster of IdP calls less than a quarter of the token lifetime apart
(one due point); calls per window is the figure (target 1.00). Run by `scripts/bench_store
--fleet`; bounded: each size runs `--seconds` of traffic after its members are up.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests
import yaml
from cryptography.fernet import Fernet

from proxy_addon.demo.api import ApiServer
from proxy_addon.demo.certs import make_pki
from proxy_addon.demo.idp import AuthServer
from proxy_addon.demo.run import free_port, wait_for_proxy

CLIENT_ID = "bench-client"


def _redis(work: Path) -> tuple[subprocess.Popen[bytes], int, str]:
    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit("--fleet: redis-server is not installed")
    port, password = free_port(), secrets.token_hex(16)
    (work / "redis").mkdir()
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--requirepass", password,
         "--dir", str(work / "redis"), "--appendonly", "yes", "--appendfsync", "always",
         "--save", "", "--logfile", os.devnull],
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while True:
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, port, password
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("--fleet: redis-server did not start")
        time.sleep(0.05)


def _flush(port: int, password: str) -> None:
    import redis

    redis.Redis(host="127.0.0.1", port=port, password=password).flushall()


def windows(times: list[float], gap: float) -> list[int]:
    """Calls per refresh window: runs of call times less than `gap` apart."""
    out: list[int] = []
    last = None
    for t in sorted(times):
        if last is None or t - last >= gap:
            out.append(0)
        out[-1] += 1
        last = t
    return out


def run_size(
    n: int, work: Path, pki_ca: Path, idp: AuthServer, api: ApiServer, redis: tuple[int, str],
    *, seconds: float, clients: int,
) -> dict[str, object]:  # fmt: skip
    port, password = redis
    _flush(port, password)
    seed = idp.issue_refresh_token(CLIENT_ID, "read")
    key = Fernet.generate_key().decode()
    confdir = work / "mitmproxy"  # one CA for the whole fleet
    base = work / f"fleet{n}"
    procs: list[tuple[subprocess.Popen[bytes], int]] = []
    logs = []
    try:
        for i in range(n):
            home = base / f"home{i}"
            home.mkdir(parents=True)
            listen = free_port()
            config = {
                "listen": f"127.0.0.1:{listen}", "confdir": str(confdir),
                "ca_certs": [str(pki_ca)],
                "store": {"backend": "redis",
                          "url": f"redis://:${{REDIS_PW}}@127.0.0.1:{port}/0"},
                "credentials": {"api": {
                    "grant": "refresh_token", "token_url": idp.token_url,
                    "client_id": CLIENT_ID, "client_secret": "${CLIENT_SECRET}",
                    "refresh_token": "${SEED_RT}"}},
                "routes": [{"host": "localhost", "port": api.port, "credential": "api"}],
            }  # fmt: skip
            path = base / f"m{i}.yaml"
            path.write_text(yaml.safe_dump(config))
            env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
                   "XDG_STATE_HOME": str(home / ".state"), "AUTHPROXY_KEY": key,
                   "REDIS_PW": password, "CLIENT_SECRET": _SECRET, "SEED_RT": seed}  # fmt: skip
            for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
                env.pop(var, None)
            log = (base / f"m{i}.log").open("wb")
            logs.append(log)
            proc = subprocess.Popen(
                [sys.executable, "-m", "proxy_addon", "--config", str(path), "run"],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=base,
            )
            procs.append((proc, listen))
            if i == 0:  # the first member writes the shared CA; the others read it
                wait_for_proxy(proc, listen, confdir / "mitmproxy-ca-cert.pem", timeout=60)
        for proc, listen in procs[1:]:
            wait_for_proxy(proc, listen, confdir / "mitmproxy-ca-cert.pem", timeout=60)
        before = len(idp.requests_log)
        statuses: list[int] = []
        lock = threading.Lock()
        url = f"https://localhost:{api.port}/v1/hello"
        start = time.monotonic()
        deadline = start + seconds

        def drive(listen: int) -> None:
            with requests.Session() as s:
                s.trust_env = False
                s.proxies = {"https": f"http://127.0.0.1:{listen}"}
                s.verify = str(confdir / "mitmproxy-ca-cert.pem")
                while time.monotonic() < deadline:
                    try:
                        code = s.get(url, timeout=30).status_code
                    except requests.RequestException:
                        code = 0
                    with lock:
                        statuses.append(code)

        per = max(1, clients // n)
        threads = [threading.Thread(target=drive, args=(listen,))
                   for _, listen in procs for _ in range(per)]  # fmt: skip
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        log_entries = idp.requests_log[before:]
    finally:
        for proc, _ in procs:
            proc.terminate()
        for proc, _ in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()
    times = [e["time"] for e in log_entries]
    ws = windows(times, idp.access_token_ttl / 4)
    return {
        "members": n, "clients": per * n, "requests": len(statuses),
        "client_errors": sum(s != 200 for s in statuses),
        "idp_calls": len(times), "idp_errors": sum(e["status"] != 200 for e in log_entries),
        "windows": len(ws), "per_window": len(times) / max(len(ws), 1),
        "max_in_window": max(ws, default=0),
        "min_gap": min((b - a for a, b in itertools.pairwise(sorted(times))), default=0.0),
    }  # fmt: skip


_SECRET = secrets.token_urlsafe(24)


def bench_fleet(sizes: list[int], *, seconds: float, ttl: float, clients: int) -> int:
    work = Path(tempfile.mkdtemp(prefix="authproxy-bench-fleet-"))
    redis_proc, port, password = _redis(work)
    pki = make_pki(work / "pki")
    idp = AuthServer(pki, access_token_ttl=ttl).start()  # rotation with reuse detection
    idp.add_client(CLIENT_ID, _SECRET)
    api = ApiServer(idp.is_valid, pki).start()
    rows = []
    try:
        for n in sizes:
            rows.append(run_size(n, work, pki.ca_cert, idp, api, (port, password),
                                 seconds=seconds, clients=clients))  # fmt: skip
    finally:
        api.stop()
        idp.stop()
        redis_proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            redis_proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nfleet on one Redis (AOF always): {ttl:g} s access tokens rotating refresh "
          f"tokens with reuse detection, {seconds:g} s of traffic per size, refresh at half-life")
    print(f"  {'members':>7} {'clients':>7} {'requests':>8} {'failed':>6} {'IdP calls':>9} "
          f"{'windows':>7} {'calls/window':>12} {'max/window':>10} {'IdP errors':>10} "
          f"{'min gap':>8}")  # fmt: skip
    for r in rows:
        print(f"  {r['members']:>7} {r['clients']:>7} {r['requests']:>8} "
              f"{r['client_errors']:>6} {r['idp_calls']:>9} {r['windows']:>7} "
              f"{r['per_window']:>12.2f} {r['max_in_window']:>10} {r['idp_errors']:>10} "
              f"{r['min_gap']:>7.2f}s")  # fmt: skip
    return 0
