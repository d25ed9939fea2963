"""Benchmark: authproxy against bare mitmdump, and a refresh storm.

Starts a local IdP and a local HTTPS API (in this process), then two proxies on 127.0.0.1:

- bare `mitmdump`, intercepting TLS but adding nothing (so the API answers 401), and
- `authproxy run`, routing the API to a client_credentials credential (so the API answers 200).

Throughput/latency: N keep-alive GETs from C client threads through each proxy, the runs
interleaved (bare, authproxy, bare, authproxy, ...) to spread the machine's noise over both,
and the best of the rounds reported per metric.

Storm: with a token cached in authproxy, the IdP expires it (the proxy does not know) and turns
slow; then `--storm` requests, released together, all meet a 401. authproxy should make one
token request for all of them and answer every one with 200.

Exit status 0 when every correctness check passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import requests
import yaml

from proxy_addon.demo.api import ApiServer
from proxy_addon.demo.certs import Pki, make_pki
from proxy_addon.demo.idp import AuthServer
from proxy_addon.demo.run import free_port, wait_for_proxy

ROOT = Path(__file__).resolve().parent.parent
HOSTS = ROOT / "tests" / "support" / "hosts"  # makes *.test resolve to 127.0.0.1 in the proxies
API_HOST = "api.bench.test"
CLIENT_ID = "bench-client"
SECRET_ENV = "AUTHPROXY_BENCH_SECRET"
REQUEST_TIMEOUT = 30.0
BARRIER_TIMEOUT = 120.0
BARE, AUTHPROXY = "mitmdump (bare)", "authproxy"


class BenchError(Exception):
    """The benchmark could not run (a process did not start, a phase hung)."""


# --- processes ------------------------------------------------------------------------------


class ProxyProcess:
    """A proxy subprocess listening on 127.0.0.1:port, its output kept in a log file."""

    def __init__(self, name: str, argv: list[str], port: int, confdir: Path, work: Path) -> None:
        self.name, self.argv, self.port, self.confdir = name, argv, port, confdir
        self.log_path = work / f"{name.split()[0]}.log"
        self.proc: subprocess.Popen[bytes] | None = None

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
            wait_for_proxy(self.proc, self.port, self.ca)
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

    def session(self) -> requests.Session:
        s = requests.Session()
        s.trust_env = False
        s.proxies = {"http": self.url, "https": self.url}
        s.verify = str(self.ca)
        return s


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


def authproxy(work: Path, confdir: Path, pki: Pki, idp: AuthServer, api: ApiServer) -> ProxyProcess:
    port = free_port()
    config = {
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
        "routes": [{"host": API_HOST, "port": api.port, "credential": "api"}],
    }
    path = work / "authproxy.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    argv = [sys.executable, "-m", "proxy_addon", "--config", str(path), "run", "-q"]
    return ProxyProcess(AUTHPROXY, argv, port, confdir, work)


# --- load -----------------------------------------------------------------------------------


@dataclass
class RunResult:
    name: str
    requests: int
    seconds: float
    latencies: list[float]  # seconds, one per timed request
    statuses: Counter[int | str] = field(default_factory=Counter)  # warm-up included

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else math.inf

    def percentile(self, q: int) -> float:
        if len(self.latencies) < 2:
            return self.latencies[0] if self.latencies else math.nan
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[q - 1]


def _get(session: requests.Session, url: str) -> int | str:
    """The status code, or the exception's name when there was no answer."""
    try:
        r = session.get(url, timeout=REQUEST_TIMEOUT)
        r.content  # noqa: B018 (read the whole body before the clock stops)
        return r.status_code
    except requests.RequestException as e:
        return type(e).__name__


def load_run(proxy: ProxyProcess, url: str, n: int, threads: int, warmup: int) -> RunResult:
    """`n` GETs from `threads` keep-alive sessions; connections are opened before the clock runs."""
    shares = [n // threads + (1 if i < n % threads else 0) for i in range(threads)]
    start = threading.Barrier(threads + 1, timeout=BARRIER_TIMEOUT)
    latencies: list[list[float]] = [[] for _ in range(threads)]
    statuses: list[Counter[int | str]] = [Counter() for _ in range(threads)]

    def worker(i: int) -> None:
        with proxy.session() as s:
            for _ in range(warmup):
                statuses[i][_get(s, url)] += 1
            try:
                start.wait()
            except threading.BrokenBarrierError:
                return
            clock, lat, seen = time.perf_counter, latencies[i], statuses[i]
            for _ in range(shares[i]):
                t0 = clock()
                status = _get(s, url)
                lat.append(clock() - t0)
                seen[status] += 1

    pool = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for t in pool:
        t.start()
    try:
        start.wait()
    except threading.BrokenBarrierError:
        raise BenchError(f"{proxy.name}: the client threads did not get ready in time") from None
    t0 = time.perf_counter()
    for t in pool:
        t.join()
    seconds = time.perf_counter() - t0
    total: Counter[int | str] = Counter()
    for c in statuses:
        total.update(c)
    return RunResult(proxy.name, n, seconds, [x for lat in latencies for x in lat], total)


# --- storm ----------------------------------------------------------------------------------


@dataclass
class StormResult:
    requests: int
    ok: int
    token_requests: int
    seconds: float
    statuses: Counter[int | str]
    warmup_statuses: Counter[int | str]


def storm(proxy: ProxyProcess, url: str, n: int, idp: AuthServer, slow: float) -> StormResult:
    """`n` requests released together at a token the IdP has expired behind the proxy's back."""
    ready = threading.Barrier(n + 1, timeout=BARRIER_TIMEOUT)
    go = threading.Barrier(n + 1, timeout=BARRIER_TIMEOUT)
    warm: list[int | str] = [""] * n
    final: list[int | str] = ["not sent"] * n

    def worker(i: int) -> None:
        with proxy.session() as s:
            warm[i] = _get(s, url)  # opens the connection, and proves the token works
            try:
                ready.wait()
                go.wait()
            except threading.BrokenBarrierError:
                return
            final[i] = _get(s, url)

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
    rps: float
    p50_ms: float
    p99_ms: float


def summarize(name: str, runs: list[RunResult]) -> Summary:
    """Best of the rounds, per metric: the least disturbed measurement of each."""
    return Summary(
        name,
        max(r.rps for r in runs),
        min(r.percentile(50) for r in runs) * 1000,
        min(r.percentile(99) for r in runs) * 1000,
    )


def _counts(c: Counter[int | str]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(c.items(), key=lambda kv: str(kv[0])))


def check_statuses(run: RunResult, expected: int, why: str) -> list[str]:
    wrong = {k: v for k, v in run.statuses.items() if k != expected}
    if not wrong:
        return []
    got = _counts(run.statuses)
    return [f"{run.name}: expected every response to be {expected} ({why}), got {got}"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="scripts/bench",
        description="Throughput and latency of authproxy vs bare mitmdump, and a refresh storm.",
    )
    p.add_argument(
        "--requests", type=int, metavar="N", help="timed GETs per run (default 2000; --quick: 200)"
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=8,
        metavar="C",
        help="client threads, one keep-alive session each (default 8)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=2,
        metavar="R",
        help="interleaved runs per proxy; the best is reported (default 2)",
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
    p.add_argument("--quick", action="store_true", help="a small run, for smoke tests")
    args = p.parse_args(argv)
    if args.requests is None:
        args.requests = 200 if args.quick else 2000
    if args.storm is None:
        args.storm = 20 if args.quick else 100
    for name in ("requests", "concurrency", "rounds", "storm"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if args.slow < 0:
        p.error("--slow must not be negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = min(args.concurrency, args.requests)
    warmup = 2 if args.quick else 5  # per client thread, before each timed run
    work = Path(tempfile.mkdtemp(prefix="authproxy-bench-"))
    confdir = work / "mitmproxy"  # one CA for both proxies
    secret = "bench-secret-" + os.urandom(12).hex()
    pki = make_pki(work / "pki", ("localhost", "127.0.0.1", API_HOST))
    idp = api = None
    proxies: list[ProxyProcess] = []
    failures: list[str] = []
    try:
        idp = AuthServer(pki, access_token_ttl=24 * 3600).start()
        idp.add_client(CLIENT_ID, secret)
        api = ApiServer(idp.is_valid, pki).start()
        url = f"https://{API_HOST}:{api.port}/bench"
        env = proxy_env(secret)
        # One after the other: both write the CA into the shared confdir on first start.
        bare = bare_mitmdump(work, confdir, pki).start(env)
        proxies.append(bare)
        auth = authproxy(work, confdir, pki, idp, api).start(env)
        proxies.append(auth)

        print(
            f"bench: {args.requests} GETs x {args.rounds} round(s) per proxy, {threads} client "
            f"threads (keep-alive), {url}",
            file=sys.stderr,
        )
        runs: dict[str, list[RunResult]] = {BARE: [], AUTHPROXY: []}
        for rnd in range(1, args.rounds + 1):
            for proxy in (bare, auth):
                run = load_run(proxy, url, args.requests, threads, warmup)
                runs[proxy.name].append(run)
                print(
                    f"  round {rnd} {proxy.name:<16} {run.rps:8.0f} req/s  "
                    f"p50 {run.percentile(50) * 1000:6.2f} ms  "
                    f"p99 {run.percentile(99) * 1000:6.2f} ms  [{_counts(run.statuses)}]",
                    file=sys.stderr,
                )
                if not proxy.alive():
                    raise BenchError(f"{proxy.name} exited during the run\n{proxy.log_tail()}")
        for run in runs[BARE]:
            failures += check_statuses(run, 401, "the bare proxy adds no token")
        for run in runs[AUTHPROXY]:
            failures += check_statuses(run, 200, "authproxy adds a valid token")
        load_tokens = idp.token_requests
        if load_tokens != 1:
            failures.append(
                f"authproxy made {load_tokens} token requests during the load runs "
                "(expected 1: the token lives for a day)"
            )

        print(f"  storm: {args.storm} requests, IdP answering in {args.slow:g}s", file=sys.stderr)
        st = storm(auth, url, args.storm, idp, args.slow)
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

        b, a = summarize(BARE, runs[BARE]), summarize(AUTHPROXY, runs[AUTHPROXY])
        best = f"best of {args.rounds}" if args.rounds > 1 else "1 round"
        print(f"\n{'':<17}{'req/s':>7}{'p50 ms':>9}{'p99 ms':>9}   "
              f"({args.requests} GETs, {threads} threads, {best})")  # fmt: skip
        for s in (b, a):
            print(f"{s.name:<17}{s.rps:>7.0f}{s.p50_ms:>9.2f}{s.p99_ms:>9.2f}")
        print(
            f"ratio authproxy/bare: throughput {a.rps / b.rps:.2f}x, "
            f"p50 {a.p50_ms / b.p50_ms:.2f}x, p99 {a.p99_ms / b.p99_ms:.2f}x"
        )
        print(
            f"storm: {st.requests} concurrent requests at an expired token -> "
            f"{st.token_requests} token request(s) at the IdP, {st.ok}/{st.requests} OK "
            f"in {st.seconds:.2f}s (IdP delay {args.slow:g}s)"
        )
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
    if failures:
        print("\nFAILED:", file=sys.stderr)
        for f in failures:
            print(f"  - {f}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
