"""The cost of one token update in the encrypted store, against a bare SQLite commit.

Baseline, in the same process and on the same disk: a plain SQLite table in WAL mode with
synchronous=FULL, one INSERT OR REPLACE of the same size per transaction, no encryption, no
compare-and-set. The ratio is what authproxy's durability and encryption add.

    ./scripts/bench_store [--updates N]
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.fernet import Fernet

from proxy_addon.store.keys import Keyring
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
    args = parser.parse_args()
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
