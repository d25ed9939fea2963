"""The cost of one token update in the encrypted store, against a bare SQLite commit.

Baseline, in the same process and on the same disk: a plain SQLite table in WAL mode with
synchronous=FULL, one INSERT OR REPLACE of the same size per transaction, no encryption, no
compare-and-set. The ratio is what authproxy's durability and encryption add.

    ./scripts/bench_store [--updates N] [--redis]
    ./scripts/bench_store --fleet [--sizes 1,2,4,8] [--seconds S] [--ttl T] [--clients C]

With --redis (needs redis-server on PATH): put / get / lock round trips of the SQLite store
against the Redis store, on a redis-server started here on 127.0.0.1 with AOF and
appendfsync always (as the README recommends), same machine, same token.

With --fleet (needs redis-server): IdP calls per expiry for 1, 2, 4 and 8 `authproxy run`
processes on one Redis (target: 1); see scripts/bench_fleet.py.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import socket
import sqlite3
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.fernet import Fernet

from proxy_addon.store.base import TokenStore
from proxy_addon.store.keys import Keyring
from proxy_addon.store.sealer import Sealer
from proxy_addon.store.sqlite import SqliteStore
from proxy_addon.tokens import Token


def timed(n: int, step: Callable[[], None]) -> list[float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        samples.append(time.perf_counter() - t0)
    return samples[n // 10 :]  # drop warm-up


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--updates", type=int, default=500)
    parser.add_argument("--redis", action="store_true", help="also compare with Redis")
    parser.add_argument("--fleet", action="store_true",
                        help="only: IdP calls per expiry for a fleet of proxies on one Redis")
    parser.add_argument("--sizes", default="1,2,4,8", help="--fleet: members per run")
    parser.add_argument("--seconds", type=float, default=8.0, help="--fleet: traffic per size")
    parser.add_argument("--ttl", type=float, default=4.0, help="--fleet: access token lifetime")
    parser.add_argument("--clients", type=int, default=16, help="--fleet: client threads")
    args = parser.parse_args()
    if args.fleet:
        from bench_fleet import bench_fleet  # scripts/, beside this file

        sizes = [int(n) for n in args.sizes.split(",")]
        return bench_fleet(sizes, seconds=args.seconds, ttl=args.ttl, clients=args.clients)
    work = Path(tempfile.mkdtemp(prefix="authproxy-bench-store-"))
    token = Token("a" * 1200, expires_at=2e9, obtained_at=1e9, refresh_token="r" * 400)
    payload = token.to_json().encode()

    raw = sqlite3.connect(work / "raw.db", isolation_level=None)
    raw.execute("PRAGMA journal_mode=WAL")
    raw.execute("PRAGMA synchronous=FULL")
    raw.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v BLOB)")

    def raw_update() -> None:
        raw.execute("BEGIN IMMEDIATE")
        raw.execute("INSERT OR REPLACE INTO t VALUES ('cred', ?)", (payload,))
        raw.execute("COMMIT")

    keyring = Keyring.from_keys([Fernet.generate_key()], "benchmark key")
    store = SqliteStore(work / "state" / "tokens.db", keyring)
    version: list[int | None] = [None]

    def store_update() -> None:
        version[0] = store.put("cred", token, version[0]).version

    # Interleaved rounds, best median of each: the machine is noisy.
    raw_medians, store_medians = [], []
    for _ in range(3):
        raw_medians.append(statistics.median(timed(args.updates, raw_update)))
        store_medians.append(statistics.median(timed(args.updates, store_update)))
    base, ours = min(raw_medians), min(store_medians)
    print(f"one token update, median of {args.updates} (best of 3 interleaved rounds):")
    print(f"  bare SQLite commit (WAL, synchronous=FULL): {base * 1e3:7.3f} ms")
    print(f"  authproxy store put (Fernet + CAS + commit): {ours * 1e3:7.3f} ms")
    print(f"  ratio authproxy/bare: {ours / base:.2f}x")
    store.close()
    raw.close()
    if args.redis:
        compare_redis(work, token, keyring, args.updates)
    return 0


def round_trips(store: TokenStore, token: Token, n: int) -> dict[str, float]:
    """Median seconds of one put (CAS), one get, one lock + release."""
    version = [store.get("cred").version if store.get("cred") else None]  # type: ignore[union-attr]

    def put() -> None:
        version[0] = store.put("cred", token, version[0]).version

    def lock() -> None:
        with store.lock("cred", timeout=5):
            pass

    return {
        "put": statistics.median(timed(n, put)),
        "get": statistics.median(timed(n, lambda: store.get("cred"))),
        "lock": statistics.median(timed(n, lock)),
    }


def compare_redis(work: Path, token: Token, keyring: Keyring, n: int) -> None:
    from proxy_addon.store.redis_config import RedisSettings
    from proxy_addon.store.redis_store import RedisStore

    server = shutil.which("redis-server")
    if server is None:
        print("--redis: redis-server is not installed")
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    password = secrets.token_hex(16)
    (work / "redis").mkdir()
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--requirepass", password,
         "--dir", str(work / "redis"), "--appendonly", "yes", "--appendfsync", "always",
         "--save", "", "--logfile", os.devnull],
    )  # fmt: skip
    try:
        settings = RedisSettings("127.0.0.1", port, 0, False, None, password)
        deadline = time.monotonic() + 10
        while True:
            try:
                redis_store = RedisStore(settings, Sealer(keyring))
                redis_store.check()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        sqlite_store = SqliteStore(work / "state2" / "tokens.db", keyring)
        results = {"sqlite": round_trips(sqlite_store, token, n),
                   "redis": round_trips(redis_store, token, n)}  # fmt: skip
        sqlite_store.close()
        redis_store.close()
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
    print(f"\nround trips, median of {n} (Redis on 127.0.0.1, AOF appendfsync always):")
    print(f"  {'':6} {'put':>9} {'get':>9} {'lock':>9}")
    for name, r in results.items():
        print(f"  {name:6} " + " ".join(f"{r[k] * 1e3:7.3f}ms" for k in ("put", "get", "lock")))


if __name__ == "__main__":
    raise SystemExit(main())
