"""Benchmark: authproxy against bare mitmdump, route-count scaling, memory, and a refresh storm.

Starts a local IdP and a local HTTPS API (in this process), then proxies on 127.0.0.1:

- bare `mitmdump -q`, intercepting TLS and adding nothing (the client sends a valid token
  itself, so the API does the same work and answers 200 to both proxies),
- `authproxy run -q` with 10 routes, the API's route last in file order, routing it to a
  client_credentials credential (the client sends no token),
- later, `authproxy run -q` with 10 000 routes (exact hosts, wildcards, paths on the API's
  host; the API's route still last), to compare with the 10-route one.

The load generator is Python threads in this process, one keep-alive `http.client` connection
each, opened through the proxy with CONNECT and TLS inside the tunnel (what curl, requests and Go
clients do). No `wrk` (not a proxy client) nor `hey` (not packaged): http.client is the
lightest proxy client at hand, and one client thread costs far less per request than the proxy,
so a single proxy process stays the bottleneck. Every client connection is opened (and warmed)
before the clock starts.

Phases, in one run:
1. throughput and latency at 1 and 16 clients, bare and authproxy interleaved round by round
   (so the machine's noise falls on both), best of the rounds per metric, and the ratio; also
   each proxy's CPU time per request (from /proc), which a busy machine disturbs far less than
   the wall clock;
2. route count: `RouteTable.match` per call in this process for 10 and 10 000 routes, then the
   10-route and the 10 000-route authproxy end to end, interleaved;
3. workers (issue 11 item 3): `authproxy run --workers N` for N = 1 .. the cores (at least 1
   and 2), interleaved round by round, each started until every worker listens; throughput as a
   ratio to one worker, and how the kernel spread the connections over the workers;
4. memory: each proxy's RSS after 10 000 requests and after `--memory-requests` (default
   20 000; `--memory`: 100 000), and the difference;
5. storm: with a token cached, the IdP expires it (the proxy does not know) and turns slow;
   then `--storm` requests, released together, all meet a 401. authproxy should make one token
   request for all of them and answer every one with 200.

Exit status 0 when every correctness check passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import http.client
import math
import os
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml

from proxy_addon.config import parse_config
from proxy_addon.demo.api import ApiServer
from proxy_addon.demo.certs import Pki, make_pki
from proxy_addon.demo.idp import AuthServer
from proxy_addon.demo.run import wait_for_proxy
from proxy_addon.netutil import free_port

ROOT = Path(__file__).resolve().parent.parent
HOSTS = ROOT / "tests" / "support" / "hosts"  # makes *.test resolve to 127.0.0.1 in the proxies
API_HOST = "api.bench.test"
API_PATH = "/bench/items?page=2"
CLIENT_ID = "bench-client"
SECRET_ENV = "AUTHPROXY_BENCH_SECRET"
REQUEST_TIMEOUT = 30.0
BARRIER_TIMEOUT = 120.0
MEMORY_BASE = 10_000  # requests served before the first RSS reading
BARE, AUTHPROXY = "mitmdump (bare)", "authproxy"
FEW_ROUTES = 10
STATUS_METRICS = "http://authproxy.local/metrics"  # answered by the proxy itself


class BenchError(Exception):
    """The benchmark could not run (a process did not start, a phase hung)."""


# --- processes ------------------------------------------------------------------------------


class ProxyProcess:
    """A proxy subprocess listening on 127.0.0.1:port, its output kept in a log file."""

    def __init__(self, name: str, argv: list[str], port: int, confdir: Path, work: Path) -> None:
        self.name, self.argv, self.port, self.confdir = name, argv, port, confdir
        slug = "".join(c if c.isalnum() else "-" for c in name).strip("-")
        self.log_path = work / f"{slug}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.served = 0  # requests this process has answered (warm-up included)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ca(self) -> Path:
        return self.confdir / "mitmproxy-ca-cert.pem"

    def start(self, env: dict[str, str]) -> ProxyProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT
            )
        try:
            wait_for_proxy(self.proc, self.port, self.ca, timeout=60)
        except (RuntimeError, TimeoutError) as e:
            self.stop()
            raise BenchError(f"{self.name} did not start: {e}\n{self.log_tail()}") from None
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return "(no output)"
        text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(f"  | {line}" for line in text) or "  | (no output)"

    def pids(self) -> list[int]:
        """The process and its descendants (workers, if any)."""
        return [] if self.proc is None else process_tree(self.proc.pid)

    def rss_mb(self) -> float:
        return sum(_rss_kb(pid) for pid in self.pids()) / 1024

    def cpu_seconds(self) -> float:
        return sum(_cpu_seconds(pid) for pid in self.pids())


def process_tree(root: int) -> list[int]:
    """`root` and its descendants, from /proc (Linux); just `root` elsewhere."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return [root]
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime


def proxy_env(secret: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(PYTHONPATH=str(HOSTS), AUTHPROXY_KEY="", **{SECRET_ENV: secret})
    return env


def mitmdump_path() -> str:
    beside = Path(sys.executable).parent / "mitmdump"
    found = str(beside) if beside.exists() else shutil.which("mitmdump")
    if not found:
        raise BenchError("mitmdump not found beside this Python nor on PATH")
    return found


def bare_mitmdump(work: Path, confdir: Path, pki: Pki) -> ProxyProcess:
    port = free_port()
    argv = [
        mitmdump_path(), "--listen-host", "127.0.0.1", "-p", str(port), "-q",
        "--set", f"confdir={confdir}",
        "--set", f"ssl_verify_upstream_trusted_ca={pki.ca_cert}",
    ]  # fmt: skip
    return ProxyProcess(BARE, argv, port, confdir, work)


def route_entries(n: int, api_port: int) -> list[dict[str, Any]]:
    """`n` routes: exact hosts, wildcards and path prefixes on the API's own host and port, in
    turn, then the route the benchmark's requests match, last in file order (the worst case
    for a scan in file order)."""
    routes: list[dict[str, Any]] = []
    for i in range(n - 1):
        kind = i % 3
        if kind == 0:
            routes.append({"host": f"h{i}.routes.test", "credential": "api"})
        elif kind == 1:
            routes.append({"host": f"*.w{i}.routes.test", "credential": "api"})
        else:
            routes.append(
                {"host": API_HOST, "port": api_port, "path": f"/p{i}", "credential": "api"}
            )
    routes.append({"host": API_HOST, "port": api_port, "credential": "api"})
    return routes


def authproxy_config(
    port: int, confdir: Path, pki: Pki, idp: AuthServer, api: ApiServer, routes: int
) -> dict[str, Any]:
    return {
        "listen": f"127.0.0.1:{port}",
        "confdir": str(confdir),
        "ca_certs": [str(pki.ca_cert)],
        "store": {"backend": "memory"},
        "credentials": {
            "api": {
                "grant": "client_credentials",
                "token_url": idp.token_url,
                "client_id": CLIENT_ID,
                "client_secret": f"${{{SECRET_ENV}}}",  # expanded by authproxy
            }
        },
        "routes": route_entries(routes, api.port),
    }


def authproxy(
    name: str,
    work: Path,
    confdir: Path,
    pki: Pki,
    idp: AuthServer,
    api: ApiServer,
    *,
    routes: int,
    run_args: Sequence[str] = (),
) -> ProxyProcess:
    port = free_port()
    config = authproxy_config(port, confdir, pki, idp, api, routes)
    path = work / f"authproxy-{routes}-{port}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    argv = [sys.executable, "-m", "proxy_addon", "--config", str(path), "run", "-q", *run_args]
    return ProxyProcess(name, argv, port, confdir, work)


def workers_supported() -> bool:
    """Whether this authproxy has `run --workers` (issue 11 item 3)."""
    done = subprocess.run(
        [sys.executable, "-m", "proxy_addon", "run", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "AUTHPROXY_KEY": ""},
        check=False,
    )
    return "--workers" in done.stdout


# --- load -----------------------------------------------------------------------------------


class TunnelClient:
    """One keep-alive HTTPS connection to the API through the proxy: CONNECT, then TLS inside
    the tunnel, as curl, requests and Go clients do. Reconnects after an error."""

    def __init__(self, proxy: ProxyProcess, api_port: int, headers: dict[str, str]) -> None:
        self._context = ssl.create_default_context(cafile=str(proxy.ca))
        self._proxy_port, self._api_port = proxy.port, api_port
        self._headers = {"Host": f"{API_HOST}:{api_port}", **headers}
        self._conn: http.client.HTTPSConnection | None = None

    def get(self, path: str) -> int | str:
        """The status code, or the exception's name when there was no answer."""
        if self._conn is None:
            conn = http.client.HTTPSConnection(
                "127.0.0.1", self._proxy_port, context=self._context, timeout=REQUEST_TIMEOUT
            )
            conn.set_tunnel(API_HOST, self._api_port)
            self._conn = conn
        try:
            self._conn.request("GET", path, headers=self._headers)
            response = self._conn.getresponse()
            response.read()
            if response.will_close:
                self.close()
            return response.status
        except (OSError, http.client.HTTPException) as e:
            self.close()
            return type(e).__name__

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


@dataclass
class RunResult:
    name: str
    clients: int
    requests: int
    seconds: float
    cpu_seconds: float  # the proxy's CPU time during the timed requests
    client_cpu_seconds: float  # this process's (load generator, API, IdP) in the same time
    latencies: list[float]  # seconds, one per timed request
    statuses: Counter[int | str] = field(default_factory=Counter)  # warm-up included

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else math.inf

    @property
    def cpu_us(self) -> float:
        return self.cpu_seconds / self.requests * 1e6

    @property
    def busy(self) -> tuple[float, float]:
        """Percent of one core used by the proxy, and by this process, during the run."""
        return self.cpu_seconds / self.seconds * 100, self.client_cpu_seconds / self.seconds * 100

    def percentile(self, q: int) -> float:
        if len(self.latencies) < 2:
            return self.latencies[0] if self.latencies else math.nan
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[q - 1]


@dataclass
class Target:
    """Where the load goes, and what each proxy's client sends."""

    api_port: int
    headers: dict[str, dict[str, str]]  # proxy name -> extra request headers

    def client(self, proxy: ProxyProcess) -> TunnelClient:
        return TunnelClient(proxy, self.api_port, self.headers.get(proxy.name, {}))


def load_run(proxy: ProxyProcess, target: Target, n: int, clients: int, warmup: int) -> RunResult:
    """`n` GETs from `clients` threads, one keep-alive connection each, opened and warmed with
    `warmup` requests before the clock runs."""
    clients = max(1, min(clients, n))
    shares = [n // clients + (1 if i < n % clients else 0) for i in range(clients)]
    start = threading.Barrier(clients + 1, timeout=BARRIER_TIMEOUT)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    statuses: list[Counter[int | str]] = [Counter() for _ in range(clients)]

    def worker(i: int) -> None:
        client = target.client(proxy)
        try:
            for _ in range(warmup):
                statuses[i][client.get(API_PATH)] += 1
            try:
                start.wait()
            except threading.BrokenBarrierError:
                return
            clock, lat, seen, get = time.perf_counter, latencies[i], statuses[i], client.get
            for _ in range(shares[i]):
                t0 = clock()
                status = get(API_PATH)
                lat.append(clock() - t0)
                seen[status] += 1
        finally:
            client.close()

    pool = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for t in pool:
        t.start()
    try:
        start.wait()
    except threading.BrokenBarrierError:
        raise BenchError(f"{proxy.name}: the client threads did not get ready in time") from None
    cpu0, mine0, t0 = proxy.cpu_seconds(), time.process_time(), time.perf_counter()
    for t in pool:
        t.join()
    seconds, cpu = time.perf_counter() - t0, proxy.cpu_seconds() - cpu0
    mine = time.process_time() - mine0
    total: Counter[int | str] = Counter()
    for c in statuses:
        total.update(c)
    proxy.served += n + warmup * clients
    if not proxy.alive():
        raise BenchError(f"{proxy.name} exited during the run\n{proxy.log_tail()}")
    latency = [x for lat in latencies for x in lat]
    return RunResult(proxy.name, clients, n, seconds, cpu, mine, latency, total)


def interleaved(
    proxies: Sequence[ProxyProcess],
    target: Target,
    *,
    n: int,
    clients: int,
    rounds: int,
    warmup: int,
    after_run: Callable[[], None],
) -> dict[str, list[RunResult]]:
    """`rounds` runs per proxy, taking turns, so that the machine's noise falls on all."""
    runs: dict[str, list[RunResult]] = {p.name: [] for p in proxies}
    for rnd in range(1, rounds + 1):
        for proxy in proxies:
            run = load_run(proxy, target, n, clients, warmup)
            after_run()
            runs[proxy.name].append(run)
            print(
                f"  round {rnd} {proxy.name:<26} {clients:>2} clients {run.rps:7.0f} req/s  "
                f"p50 {run.percentile(50) * 1000:6.2f} ms  p99 {run.percentile(99) * 1000:6.2f} "
                f"ms  cpu {run.cpu_us:5.0f} us/req, proxy {run.busy[0]:3.0f}% + client "
                f"{run.busy[1]:3.0f}% of a core  [{_counts(run.statuses)}]",
                file=sys.stderr,
            )
    return runs


def serve_until(proxy: ProxyProcess, target: Target, total: int, clients: int) -> None:
    """Sends requests until the proxy has served `total` in all (in runs of at most 5000)."""
    while proxy.served < total:
        run = load_run(proxy, target, min(5000, total - proxy.served), clients, 0)
        bad = {k: v for k, v in run.statuses.items() if k != 200}
        if bad:
            raise BenchError(f"{proxy.name}: memory run answered {_counts(run.statuses)}")


# --- route matching in this process ---------------------------------------------------------


def match_cost_us(
    sizes: Sequence[int], pki: Pki, idp: AuthServer, api: ApiServer, secret: str
) -> list[float]:
    """Microseconds per `RouteTable.match` for the benchmark's request, per table size, on the
    routes the proxy gets (parsed from the same configuration). Timed in this thread's CPU
    time (a busy machine takes the core away, not the work); batches alternate between the
    sizes and the best counts."""
    args = ("https", API_HOST, api.port, API_PATH)
    tables = []
    for n in sizes:
        data = authproxy_config(1, Path("/nonexistent"), pki, idp, api, n)
        table = parse_config(data, "bench", env={SECRET_ENV: secret}).routes
        found = table.match(*args)
        if found is None or found.index != n - 1:
            raise BenchError(f"the {n}-route table matched {found} (expected the last route)")
        tables.append(table)
    batch, best = 2000, [math.inf] * len(tables)
    for _ in range(10):
        for i, table in enumerate(tables):
            t0 = time.thread_time()
            for _ in range(batch):
                table.match(*args)
            best[i] = min(best[i], time.thread_time() - t0)
    return [b / batch * 1e6 for b in best]


# --- storm ----------------------------------------------------------------------------------


@dataclass
class StormResult:
    requests: int
    ok: int
    token_requests: int
    seconds: float
    statuses: Counter[int | str]
    warmup_statuses: Counter[int | str]


def storm(proxy: ProxyProcess, target: Target, n: int, idp: AuthServer, slow: float) -> StormResult:
    """`n` requests released together at a token the IdP has expired behind the proxy's back."""
    ready = threading.Barrier(n + 1, timeout=BARRIER_TIMEOUT)
    go = threading.Barrier(n + 1, timeout=BARRIER_TIMEOUT)
    warm: list[int | str] = [""] * n
    final: list[int | str] = ["not sent"] * n

    def worker(i: int) -> None:
        client = target.client(proxy)
        try:
            warm[i] = client.get(API_PATH)  # opens the connection, and proves the token works
            try:
                ready.wait()
                go.wait()
            except threading.BrokenBarrierError:
                return
            final[i] = client.get(API_PATH)
        finally:
            client.close()

    pool = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n)]
    for t in pool:
        t.start()
    try:
        ready.wait()
        idp.expire_access_tokens()  # the proxy still believes its cached token is good
        idp.slow_seconds = slow
        idp.set_fault("slow")  # every waiter piles up while the one refresh is in flight
        idp.reset_counters()
        t0 = time.perf_counter()
        go.wait()
    except threading.BrokenBarrierError:
        go.abort()
        raise BenchError("storm: the client threads did not get ready in time") from None
    for t in pool:
        t.join()
    seconds = time.perf_counter() - t0
    idp.set_fault(None)
    statuses = Counter(final)
    return StormResult(n, statuses[200], idp.token_requests, seconds, statuses, Counter(warm))


# --- report ---------------------------------------------------------------------------------


@dataclass
class Summary:
    name: str
    clients: int
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float
    busy: tuple[float, float]  # median % of one core: the proxy, this process


def summarize(runs: list[RunResult]) -> Summary:
    """Best of the rounds, per metric: the least disturbed measurement of each."""
    return Summary(
        runs[0].name,
        runs[0].clients,
        max(r.rps for r in runs),
        min(r.percentile(50) for r in runs) * 1000,
        min(r.percentile(99) for r in runs) * 1000,
        min(r.cpu_us for r in runs),
        (
            statistics.median(r.busy[0] for r in runs),
            statistics.median(r.busy[1] for r in runs),
        ),
    )


def _counts(c: Counter[int | str]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(c.items(), key=lambda kv: str(kv[0])))


def check_statuses(run: RunResult, expected: int, why: str) -> list[str]:
    wrong = {k: v for k, v in run.statuses.items() if k != expected}
    if not wrong:
        return []
    got = _counts(run.statuses)
    return [f"{run.name}: expected every response to be {expected} ({why}), got {got}"]


def table_lines(summaries: Sequence[Summary]) -> list[str]:
    lines = [
        f"{'':<27}{'clients':>7}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'CPU us/req':>11}"
        f"{'proxy %CPU':>11}{'client %CPU':>12}"
    ]
    for s in summaries:
        lines.append(
            f"{s.name:<27}{s.clients:>7}{s.rps:>8.0f}{s.p50_ms:>8.2f}{s.p99_ms:>8.2f}"
            f"{s.cpu_us:>11.0f}{s.busy[0]:>11.0f}{s.busy[1]:>12.0f}"
        )
    return lines


def ratio_line(label: str, a: Summary, b: Summary) -> str:
    return (
        f"ratio {label} ({a.clients} client{'s' if a.clients > 1 else ''}): "
        f"throughput {a.rps / b.rps:.2f}x, p50 {a.p50_ms / b.p50_ms:.2f}x "
        f"({a.p50_ms - b.p50_ms:+.2f} ms), p99 {a.p99_ms / b.p99_ms:.2f}x, "
        f"proxy CPU per request {a.cpu_us - b.cpu_us:+.0f} us"
    )


def bearer_token(idp: AuthServer, secret: str, pki: Pki) -> str:
    """A token for the bare proxy's client to send itself, so the API answers both alike."""
    with requests.Session() as s:
        s.trust_env = False
        r = s.post(
            idp.token_url,
            data={"grant_type": "client_credentials"},
            auth=(CLIENT_ID, secret),
            verify=str(pki.ca_cert),
            timeout=REQUEST_TIMEOUT,
        )
    if r.status_code != 200:
        raise BenchError(f"the IdP refused the bare client's token request: {r.status_code}")
    return str(r.json()["access_token"])


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="scripts/bench",
        description="authproxy vs bare mitmdump (throughput, latency, CPU), route-count "
        "scaling, memory growth, and a refresh storm.",
    )
    p.add_argument(
        "--requests",
        type=int,
        metavar="N",
        help="timed GETs per run with 16 clients (default 2000; --quick: 200); with 1 client, "
        "half as many",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=16,
        metavar="C",
        help="client threads for the many-clients runs (default 16)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        metavar="R",
        help="interleaved runs per proxy; the best is reported (default 3; --quick: 1)",
    )
    p.add_argument(
        "--routes",
        type=int,
        default=10_000,
        metavar="N",
        help=f"routes in the large configuration, compared with {FEW_ROUTES} (default 10 000)",
    )
    p.add_argument(
        "--memory",
        action="store_true",
        help=f"measure RSS after {MEMORY_BASE} and after 100 000 requests (about 5 more "
        "minutes) instead of the default 20 000",
    )
    p.add_argument(
        "--memory-requests",
        type=int,
        metavar="N",
        help="requests served when RSS is read the second time (default 20 000; --memory: "
        "100 000; --quick: 1500)",
    )
    p.add_argument(
        "--storm",
        type=int,
        metavar="N",
        help="concurrent requests at an expired token (default 100; --quick: 20)",
    )
    p.add_argument(
        "--slow",
        type=float,
        default=0.5,
        metavar="SECONDS",
        help="how long the IdP takes to answer during the storm (default 0.5)",
    )
    p.add_argument("--quick", action="store_true", help="a small run (~20 s), for smoke tests")
    args = p.parse_args(argv)
    if args.requests is None:
        args.requests = 200 if args.quick else 2000
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.storm is None:
        args.storm = 20 if args.quick else 100
    if args.memory_requests is None:
        args.memory_requests = 100_000 if args.memory else 1500 if args.quick else 20_000
    args.memory_base = min(MEMORY_BASE, args.memory_requests // 2) if args.quick else MEMORY_BASE
    for name in ("requests", "concurrency", "rounds", "storm", "memory_requests", "routes"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.memory_requests <= args.memory_base:
        p.error(f"--memory-requests must be more than {args.memory_base}")
    if args.slow < 0:
        p.error("--slow must not be negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warmup = 2 if args.quick else 5  # per client, before each timed run
    work = Path(tempfile.mkdtemp(prefix="authproxy-bench-"))
    confdir = work / "mitmproxy"  # one CA for every proxy
    secret = "bench-secret-" + os.urandom(12).hex()
    pki = make_pki(work / "pki", ("localhost", "127.0.0.1", API_HOST))
    idp = api = None
    proxies: list[ProxyProcess] = []
    failures: list[str] = []
    out: list[str] = []  # the report, printed at the end (progress goes to stderr)
    try:
        idp = AuthServer(pki, access_token_ttl=24 * 3600).start()
        idp.add_client(CLIENT_ID, secret)
        api = ApiServer(idp.is_valid, pki).start()
        env = proxy_env(secret)
        target = Target(
            api.port, {BARE: {"Authorization": f"Bearer {bearer_token(idp, secret, pki)}"}}
        )
        idp.reset_counters()
        after_run = api.reset  # the API logs every request; keep this process's memory flat
        # One after the other: the first writes the CA into the shared confdir.
        bare = bare_mitmdump(work, confdir, pki).start(env)
        proxies.append(bare)
        auth = authproxy(AUTHPROXY, work, confdir, pki, idp, api, routes=FEW_ROUTES).start(env)
        proxies.append(auth)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
        out += [
            f"machine: {cores()} cores, shared by the proxy under test, the load generator "
            f"(this process: client threads, the upstream API and the IdP) and whatever else "
            f"runs (load average {load:.2f} at the start)",
            f"load generator: Python threads, one keep-alive http.client connection each, "
            f"CONNECT + TLS through the proxy to https://{API_HOST}:{api.port}{API_PATH}",
            f"both proxies quiet (-q); best of {args.rounds} interleaved round(s) per metric",
            "CPU us/req: the proxy's CPU time per request (/proc); proxy and client %CPU: "
            "share of one core used by the proxy and by this process (load generator, API, "
            "IdP), median of the rounds; a proxy near 100% is the bottleneck (one event loop)",
            "",
        ]

        # 1. Throughput and latency, 1 and C clients.
        print("throughput and latency", file=sys.stderr)
        summaries: list[tuple[Summary, Summary]] = []
        for clients, n in ((1, max(1, args.requests // 2)), (args.concurrency, args.requests)):
            runs = interleaved(
                [bare, auth], target, n=n, clients=clients, rounds=args.rounds, warmup=warmup,
                after_run=after_run,
            )  # fmt: skip
            for run in runs[BARE] + runs[AUTHPROXY]:
                failures += check_statuses(run, 200, "a valid token reaches the API")
            summaries.append((summarize(runs[BARE]), summarize(runs[AUTHPROXY])))
        out.append(f"throughput and latency ({args.requests // 2} GETs with 1 client, "
                   f"{args.requests} with {args.concurrency}, per run)")  # fmt: skip
        out += table_lines([s for pair in summaries for s in pair])
        out += [ratio_line("authproxy/bare", a, b) for b, a in summaries]
        if idp.token_requests != 1:
            failures.append(
                f"authproxy made {idp.token_requests} token requests during the load runs "
                "(expected 1: the token lives for a day)"
            )

        # 2. Route count.
        print("route count", file=sys.stderr)
        few_us, many_us = match_cost_us((FEW_ROUTES, args.routes), pki, idp, api, secret)
        auth_many = f"authproxy ({args.routes} routes)"
        t0 = time.perf_counter()
        many = authproxy(auth_many, work, confdir, pki, idp, api, routes=args.routes).start(env)
        proxies.append(many)
        startup = time.perf_counter() - t0
        runs = interleaved(
            [auth, many], target, n=args.requests, clients=args.concurrency,
            rounds=args.rounds, warmup=warmup, after_run=after_run,
        )  # fmt: skip
        for run in runs[auth_many]:
            failures += check_statuses(run, 200, "the last route applies")
        few, lots = summarize(runs[AUTHPROXY]), summarize(runs[auth_many])
        out += [
            "",
            f"route count ({FEW_ROUTES} vs {args.routes} routes: exact hosts, wildcards, paths; "
            "the matching route last in file order)",
            f"RouteTable.match in-process (CPU time): {FEW_ROUTES} routes {few_us:.2f} us/call, "
            f"{args.routes} routes {many_us:.2f} us/call ({many_us / few_us:.2f}x)",
            *table_lines([few, lots]),
            f"ratio {args.routes}/{FEW_ROUTES} routes ({args.concurrency} clients): throughput "
            f"{lots.rps / few.rps:.2f}x, p50 {lots.p50_ms / few.p50_ms:.2f}x, proxy CPU per "
            f"request {lots.cpu_us - few.cpu_us:+.0f} us; the {args.routes}-route proxy started in "
            f"{startup:.1f}s",
        ]
        many.stop()
        proxies.remove(many)

        # 3. Workers (issue 11 item 3): filled in once `authproxy run --workers N` exists.
        lines, bad = workers_phase(args, work, confdir, pki, idp, api, env, target, warmup)
        out += ["", *lines]
        failures += bad
        after_run()

        # 4. Memory: RSS after MEMORY_BASE and after --memory-requests requests served.
        print(f"memory: up to {args.memory_requests} requests per proxy", file=sys.stderr)
        rss: dict[str, list[float]] = {}
        for step in (args.memory_base, args.memory_requests):
            for proxy in (bare, auth):
                serve_until(proxy, target, step, args.concurrency)
                after_run()
                rss.setdefault(proxy.name, []).append(proxy.rss_mb())
        out += [
            "",
            f"memory (RSS of each proxy process, after {args.memory_base} and after "
            f"{args.memory_requests} requests served; target: growth within 5 MB)",
        ]
        for name, (before, after) in rss.items():
            out.append(
                f"{name:<27} {before:7.1f} MB -> {after:7.1f} MB   growth {after - before:+.1f} MB"
            )

        # 5. Storm.
        print(f"storm: {args.storm} requests, IdP answering in {args.slow:g}s", file=sys.stderr)
        st = storm(auth, target, args.storm, idp, args.slow)
        if set(st.warmup_statuses) != {200}:
            failures.append(f"storm warm-up: expected only 200, got {_counts(st.warmup_statuses)}")
        if st.ok != st.requests:
            failures.append(
                f"storm: {st.requests - st.ok} of {st.requests} requests failed "
                f"({_counts(st.statuses)})"
            )
        if st.token_requests != 1:
            failures.append(
                f"storm: {st.token_requests} token requests at the IdP (expected 1: one refresh "
                "for every request the API refused)"
            )
        out += [
            "",
            f"storm: {st.requests} concurrent requests at an expired token -> "
            f"{st.token_requests} token request(s) at the IdP, {st.ok}/{st.requests} OK "
            f"in {st.seconds:.2f}s (IdP delay {args.slow:g}s)",
        ]
    except BenchError as e:
        failures.append(str(e))
    finally:
        for proxy in reversed(proxies):
            proxy.stop()
        if api is not None:
            api.stop()
        if idp is not None:
            idp.stop()
        shutil.rmtree(work, ignore_errors=True)
    print("\n".join(["", *out]))
    if failures:
        print("\nFAILED:", file=sys.stderr)
        for f in failures:
            print(f"  - {f}", file=sys.stderr)
        return 1
    return 0


def workers_phase(
    args: argparse.Namespace,
    work: Path,
    confdir: Path,
    pki: Pki,
    idp: AuthServer,
    api: ApiServer,
    env: dict[str, str],
    target: Target,
    warmup: int,
) -> tuple[list[str], list[str]]:
    """Throughput with `authproxy run --workers N`, N = 1 .. the cores (at least 1 and 2), as a
    ratio to one worker (issue 11 item 3), interleaved round by round; (report lines,
    failures). Until `run` has the option, says so and measures nothing."""
    n_cores = cores()
    if not workers_supported():
        return [
            f"workers 1..{n_cores}: not measured (`authproxy run` has no --workers option yet; "
            "issue 11 item 3)"
        ], []
    counts = list(range(1, max(2, n_cores) + 1))
    print(f"workers 1..{counts[-1]}", file=sys.stderr)
    failures: list[str] = []
    started: list[ProxyProcess] = []
    try:
        for n in counts:
            name = f"authproxy --workers {n}"
            proxy = authproxy(name, work, confdir, pki, idp, api, routes=FEW_ROUTES,
                              run_args=("--workers", str(n)))  # fmt: skip
            started.append(proxy.start(env))
            if n > 1:
                wait_for_workers(proxy, n)
        runs = interleaved(
            started, target, n=args.requests, clients=args.concurrency, rounds=args.rounds,
            warmup=warmup, after_run=api.reset,
        )  # fmt: skip
        spread = {p.name: worker_connections(p) for p in started}
    finally:
        for proxy in started:
            proxy.stop()
    summaries = [summarize(runs[p.name]) for p in started]
    for p in started:
        for run in runs[p.name]:
            failures += check_statuses(run, 200, "every worker injects the shared token")
    base = summaries[0]
    lines = [
        f"workers 1..{counts[-1]} ({args.concurrency} keep-alive clients; this machine has "
        f"{n_cores} core(s), and the load generator (this process: client threads, API, IdP) "
        "competes with the workers for all of them; best of "
        f"{args.rounds} interleaved round(s))",
        *table_lines(summaries),
    ]
    for n, s in zip(counts, summaries, strict=True):
        split = spread.get(s.name) or {}
        where = (", connections per worker " + " / ".join(str(v) for _, v in sorted(split.items()))
                 if split else "")  # fmt: skip
        lines.append(f"workers {n}: {s.rps:7.0f} req/s ({s.rps / base.rps:.2f}x one worker), "
                     f"p50 {s.p50_ms:.2f} ms, proxy {s.busy[0]:.0f}% + client {s.busy[1]:.0f}% "
                     f"of a core{where}")  # fmt: skip
    return lines, failures


def _status_session(proxy: ProxyProcess) -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    s.proxies = {"http": proxy.url}
    return s


def wait_for_workers(proxy: ProxyProcess, n: int, timeout: float = 60.0) -> None:
    """Until every worker listens (else early keep-alive connections all go to the first)."""
    deadline = time.monotonic() + timeout
    with _status_session(proxy) as s:
        while time.monotonic() < deadline:
            try:
                if f"\nauthproxy_workers {n}\n" in s.get(STATUS_METRICS, timeout=5).text:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)  # polling another process's state
    raise BenchError(f"{proxy.name}: not all {n} workers listened within {timeout:g}s")


def worker_connections(proxy: ProxyProcess) -> dict[str, int]:
    """Client connections per worker so far (warm-up included), from /metrics."""
    with _status_session(proxy) as s:
        try:
            text = s.get(STATUS_METRICS, timeout=5).text
        except requests.RequestException:
            return {}
    prefix = 'authproxy_worker_connections_total{worker="'
    return {
        line[len(prefix):].split('"', 1)[0]: int(float(line.rsplit(" ", 1)[1]))
        for line in text.splitlines()
        if line.startswith(prefix)
    }


if __name__ == "__main__":
    sys.exit(main())
