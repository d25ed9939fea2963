"""Fault probe for the refresh path (issue 14, items 1-4): one line per measured figure.

Starts the demo IdP and API in this process and a real `authproxy run` per scenario, all on
127.0.0.1, and drives a few client threads through the proxy:

  a  a token still valid for a few seconds, a refresh due, and an IdP that hangs: requests
     served in a window (against the same window with no refresh due) and the longest wait;
  b  an IdP answering `expires_in: -5`, then `expires_in: 0` (tokens that really are expired):
     IdP calls per second, and how many of those tokens reached the API;
  c  an API that answers 401 to every token: IdP calls per second;
  d  an IdP answering 503 with `Retry-After: 10`: IdP calls per second, and the Retry-After
     clients are told.

Every scenario lasts a few seconds; the whole probe well under two minutes. It uses only the
CLI and the demo servers' public switches, so it runs against any version of the proxy.
Exit status 0 when every scenario ran (whatever the figures), 1 when one could not.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml

from proxy_addon.demo.api import ApiServer
from proxy_addon.demo.certs import Pki, make_pki
from proxy_addon.demo.idp import FAULTS, AuthServer

ROOT = Path(__file__).resolve().parent.parent
CLIENT_ID = "probe-client"
SECRET_ENV = "AUTHPROXY_PROBE_SECRET"
SECRET = "probe-secret-" + "x" * 16  # reaches the proxy through SECRET_ENV, never its config
REQUEST_TIMEOUT = 8.0  # a client's patience; a wait this long is reported as "timed out"


class ProbeError(Exception):
    """A scenario could not run (the proxy did not start, a knob is missing)."""


# --- processes --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ProxyProcess:
    """`authproxy run` with a config of its own, a private HOME, and its output in a log file."""

    def __init__(self, work: Path, pki: Pki, credential: dict[str, Any], api_port: int) -> None:
        self.work = work
        self.port = free_port()
        self.confdir = work / "mitmproxy"
        home = work / "home"
        home.mkdir(parents=True, exist_ok=True)
        config = {
            "listen": f"127.0.0.1:{self.port}",
            "confdir": str(self.confdir),
            "ca_certs": [str(pki.ca_cert)],
            "store": {"path": str(work / "state" / "tokens.db"),
                      "key_file": str(work / "keys" / "store.key")},
            "credentials": {"api": credential},
            "routes": [{"host": "127.0.0.1", "port": api_port, "credential": "api"}],
        }  # fmt: skip
        self.config_path = work / "authproxy.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log_path = work / "authproxy.log"
        self.env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        self.env.pop("AUTHPROXY_KEY", None)
        self.env.update(
            HOME=str(home),
            XDG_CONFIG_HOME=str(home / ".config"),
            XDG_STATE_HOME=str(home / ".local" / "state"),
            XDG_CACHE_HOME=str(home / ".cache"),
            **{SECRET_ENV: SECRET},
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> ProxyProcess:
        argv = [sys.executable, "-m", "proxy_addon", "--config", str(self.config_path), "run"]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.work
            )
        ca = self.confdir / "mitmproxy-ca-cert.pem"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ProbeError(f"the proxy exited while starting:\n{self.log_tail()}")
            if ca.exists():
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                    return self
                except OSError:
                    pass
            time.sleep(0.05)  # polling a port another process opens: nothing to wait on
        self.stop()
        raise ProbeError(f"the proxy did not listen within {timeout:g}s:\n{self.log_tail()}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(f"  | {line}" for line in text.splitlines()[-lines:]) or "  | (none)"

    def session(self) -> requests.Session:
        s = requests.Session()
        s.trust_env = False
        s.proxies = {"http": self.url, "https": self.url}
        s.verify = str(self.confdir / "mitmproxy-ca-cert.pem")
        return s


# --- load -------------------------------------------------------------------------------------


@dataclass
class Load:
    """What clients saw: one entry per request that started inside the window."""

    window: float
    served_in_window: int = 0  # 200s that also completed inside the window
    waits: list[float] = field(default_factory=list)
    timed_out: int = 0
    statuses: Counter[int | str] = field(default_factory=Counter)
    retry_after: list[str] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return sum(self.statuses.values())

    def max_wait(self) -> str:
        if self.timed_out:
            return f">={REQUEST_TIMEOUT:g} ({self.timed_out} timed out)"
        return f"{max(self.waits):.2f}" if self.waits else "n/a"

    def p99(self) -> float:
        """The 99th-percentile wait, in seconds (0 with no answered request)."""
        waits = sorted(self.waits)
        return waits[min(len(waits) - 1, int(len(waits) * 0.99))] if waits else 0.0

    def status_summary(self) -> str:
        return " ".join(f"{k}x{v}" for k, v in sorted(self.statuses.items(), key=str)) or "none"


def load(proxy: ProxyProcess, url: str, clients: int, window: float) -> Load:
    """`clients` threads send GETs back to back for `window` seconds; waits for the last ones."""
    result = Load(window)
    guard = threading.Lock()
    start = time.monotonic()
    end = start + window

    def client() -> None:
        with proxy.session() as s:
            while (t0 := time.monotonic()) < end:
                try:
                    r = s.get(url, timeout=REQUEST_TIMEOUT)
                    status: int | str = r.status_code
                    retry_after = r.headers.get("Retry-After")
                except requests.Timeout:
                    status, retry_after = "timeout", None
                except requests.RequestException as e:
                    status, retry_after = type(e).__name__, None
                t1 = time.monotonic()
                with guard:
                    result.statuses[status] += 1
                    if status == "timeout":
                        result.timed_out += 1
                    else:
                        result.waits.append(t1 - t0)
                    if status == 200 and t1 <= end:
                        result.served_in_window += 1
                    if retry_after is not None:
                        result.retry_after.append(retry_after)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=window + REQUEST_TIMEOUT + 5)
    return result


# --- scenarios --------------------------------------------------------------------------------


@dataclass
class Rig:
    """The demo servers of one scenario, and a proxy in front of them."""

    idp: AuthServer
    api: ApiServer
    proxy: ProxyProcess

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.api.port}/probe"


@contextmanager
def rig(work: Path, pki: Pki, name: str, **policy: Any) -> Iterator[Rig]:
    idp = AuthServer(pki).start()
    api: ApiServer | None = None
    proxy: ProxyProcess | None = None
    try:
        idp.add_client(CLIENT_ID, SECRET)
        api = ApiServer(idp.is_valid, pki).start()
        credential = {
            "grant": "client_credentials",
            "token_url": idp.token_url,
            "client_id": CLIENT_ID,
            "client_secret": f"${{{SECRET_ENV}}}",  # expanded by authproxy
            **policy,
        }
        (work / name).mkdir()
        proxy = ProxyProcess(work / name, pki, credential, api.port).start()
        yield Rig(idp, api, proxy)
    finally:
        idp.stop()  # first: cuts a hanging token request short, so the proxy can stop
        if proxy is not None:
            proxy.stop()
        if api is not None:
            api.stop()


def emit(key: str, value: object, what: str) -> None:
    print(f"{key:<24} {value!s:<20} {what}", flush=True)


def wait_until(deadline: float) -> None:
    # Waiting for a moment on the clock (a token coming due), not for another thread.
    time.sleep(max(0.0, deadline - time.monotonic()))


def scenario_a(work: Path, pki: Pki, clients: int, window: float) -> None:
    """A due refresh against a hanging IdP while the token is still valid."""
    # Due at half its life (the leeway), with room for a window on each side of that moment
    # and two seconds for the first request, which fetches the token.
    lifetime = 2 * math.ceil(window + 2)
    due = lifetime / 2
    with rig(work, pki, "a", refresh_leeway=due) as r:
        r.idp.access_token_ttl = lifetime
        asked = time.monotonic()
        with r.proxy.session() as s:
            first = s.get(r.url, timeout=REQUEST_TIMEOUT)
        got = time.monotonic()  # the token was issued between `asked` and `got`
        if first.status_code != 200:
            raise ProbeError(f"the first request got {first.status_code}: {first.text[:200]}")
        if got - asked > 1.9:
            print(f"a: the first request took {got - asked:.1f}s; the window may reach the "
                  "token's expiry", file=sys.stderr)  # fmt: skip
        base = load(r.proxy, r.url, clients, window)
        r.idp.slow_seconds = 3600.0  # a hang: the answer never comes while the probe runs
        r.idp.set_fault("slow")
        wait_until(got + due + 0.1)
        left = asked + lifetime - time.monotonic()
        hung = load(r.proxy, r.url, clients, window)
    emit("a.token_valid_for_s", f"{left:.1f}", "token lifetime left as the window opened")
    emit("a.served_no_refresh", base.served_in_window,
         f"requests served in {window:g}s with no refresh due")  # fmt: skip
    emit("a.served_idp_hung", hung.served_in_window,
         f"requests served in {window:g}s while a refresh hangs on the IdP")  # fmt: skip
    emit("a.max_wait_s", hung.max_wait(), "longest wait of a request started in that window")
    emit("a.p99_ms", f"{base.p99() * 1000:.1f} -> {hung.p99() * 1000:.1f}",
         "p99 wait with no refresh due -> while the refresh hangs")  # fmt: skip
    ratio = hung.p99() / base.p99() if base.p99() else float("nan")
    emit("a.p99_ratio", f"{ratio:.2f}", "p99 while refreshing / p99 without (target <= 1.2)")
    emit("a.statuses", hung.status_summary(), "what those clients got")


def scenario_b(work: Path, pki: Pki, clients: int, window: float, expires_in: int) -> None:
    """An IdP whose tokens are expired on arrival, and says so (or says 0)."""
    key = f"b[{expires_in}]"
    with rig(work, pki, f"b{expires_in}") as r:
        if not hasattr(r.idp, "advertised_expires_in"):
            raise ProbeError("this demo IdP cannot advertise a lifetime (advertised_expires_in)")
        r.idp.advertised_expires_in = expires_in
        r.idp.access_token_ttl = expires_in  # really expired: the API refuses them
        r.idp.reset_counters()
        r.api.reset()
        result = load(r.proxy, r.url, clients, window)
        calls = r.idp.token_requests
        reached = [e for e in r.api.requests_log if e["token_fp"]]
    emit(f"{key}.idp_calls_per_s", f"{calls / window:.1f}", f"token requests per second "
         f"(expires_in: {expires_in})")  # fmt: skip
    emit(f"{key}.expired_at_api", len(reached),
         f"expired tokens that reached the API ({sum(e['authorized'] for e in reached)} "
         "accepted)")  # fmt: skip
    emit(f"{key}.statuses", result.status_summary(), f"what {result.sent} client requests got")


def scenario_c(work: Path, pki: Pki, clients: int, window: float) -> None:
    """An API that refuses every token."""
    with rig(work, pki, "c") as r:
        r.api.always_401 = True
        r.idp.reset_counters()
        result = load(r.proxy, r.url, clients, window)
        calls = r.idp.token_requests
    emit("c.idp_calls_per_s", f"{calls / window:.1f}", "token requests per second (API: 401)")
    emit("c.statuses", result.status_summary(), f"what {result.sent} client requests got")


def scenario_d(work: Path, pki: Pki, clients: int, window: float) -> None:
    """An IdP that is down and says when to come back."""
    if "503" not in FAULTS:
        raise ProbeError("this demo IdP has no 503 fault")
    with rig(work, pki, "d") as r:
        r.idp.retry_after = "10"
        r.idp.set_fault("503")
        r.idp.reset_counters()
        result = load(r.proxy, r.url, clients, window)
        calls = r.idp.token_requests
    told = sorted(float(v) for v in result.retry_after if _is_number(v))
    summary = f"{told[0]:g}..{told[-1]:g} (median {statistics.median(told):g})" if told else "none"
    emit("d.idp_calls_per_s", f"{calls / window:.2f}", "token requests per second (503, "
         "Retry-After: 10)")  # fmt: skip
    emit("d.client_retry_after_s", summary, "Retry-After the clients were told")
    emit("d.statuses", result.status_summary(), f"what {result.sent} client requests got")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# --- main -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--window", type=float, default=3.0, help="seconds per measurement window")
    p.add_argument("--clients", type=int, default=4, help="client threads")
    p.add_argument("--only", default="abcd", help="scenarios to run, e.g. 'ad' (default: abcd)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (proxy logs)")
    args = p.parse_args(argv)
    if not 0.5 <= args.window <= 20 or not 1 <= args.clients <= 64:
        p.error("--window must be within 0.5..20 and --clients within 1..64")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="authproxy-probe-"))
    runs: list[tuple[str, Callable[[], None]]] = []
    pki = make_pki(work / "pki", ("localhost", "127.0.0.1"))
    w, c = args.window, args.clients
    if "a" in args.only:
        runs.append(("a", lambda: scenario_a(work, pki, c, w)))
    if "b" in args.only:
        runs.append(("b[-5]", lambda: scenario_b(work, pki, c, w, -5)))
        runs.append(("b[0]", lambda: scenario_b(work, pki, c, w, 0)))
    if "c" in args.only:
        runs.append(("c", lambda: scenario_c(work, pki, c, w)))
    if "d" in args.only:
        runs.append(("d", lambda: scenario_d(work, pki, c, w)))
    failed = 0
    started = time.monotonic()
    try:
        for name, run in runs:
            try:
                run()
            except ProbeError as e:
                failed += 1
                print(f"{name}: could not run: {e}", file=sys.stderr, flush=True)
        emit("probe.seconds", f"{time.monotonic() - started:.0f}", "wall time of the whole probe")
    finally:
        if args.keep:
            print(f"work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
