"""A separate process using the SQLite token store, driven by tests/test_store_sqlite.py.

Run as `python store_writer.py MODE DB CREDENTIAL [ARGS]` with AUTHPROXY_KEY set and the
project root on PYTHONPATH. It prints one line per event and flushes, so the test can wait on
lines instead of sleeping.

  writer TTL           forever: lock, get, put token n+1, print n (after the commit)
  locker TTL MARKERS N  print "ready", wait for a line on stdin, then N times: lock, append
                        "enter"/"exit" markers around a compare-and-set increment, unlock,
                        pause a random few milliseconds
  holder TTL           take the lock, print "locked", then hang until killed
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path

from proxy_addon.store.keys import load_keys
from proxy_addon.store.sqlite import SqliteStore
from proxy_addon.tokens import Token


def numbered_token(n: int) -> Token:
    """Every field carries n, so a token mixed from two writes is detectable."""
    return Token(
        access_token=f"at-{n}",
        expires_at=float(n),
        obtained_at=float(n),
        refresh_token=f"rt-{n}",
        scope=(f"scope-{n}",),
        seed_id=f"seed-{n}",
    )


def increment(store: SqliteStore, credential: str) -> int:
    record = store.get(credential)
    n = int(record.token.refresh_token.removeprefix("rt-")) + 1 if record else 1
    store.put(credential, numbered_token(n), record.version if record else None)
    return n


def main(argv: list[str]) -> None:
    mode, db, credential, ttl = argv[0], Path(argv[1]), argv[2], float(argv[3])
    # The key comes from AUTHPROXY_KEY; the key file argument is never read.
    keyring = load_keys(Path(os.devnull), db_path=db)
    store = SqliteStore(db, keyring, lock_ttl=ttl)
    if mode == "writer":
        while True:
            with store.lock(credential, timeout=30):
                n = increment(store, credential)
            print(n, flush=True)
    elif mode == "locker":
        markers, rounds = Path(argv[4]), int(argv[5])
        print("ready", flush=True)
        sys.stdin.readline()
        for _ in range(rounds):
            with store.lock(credential, timeout=30):
                with open(markers, "a") as f:
                    f.write(f"enter {os.getpid()}\n")
                increment(store, credential)
                with open(markers, "a") as f:
                    f.write(f"exit {os.getpid()}\n")
            # Jitter, not synchronisation: without it one contender re-takes the free lock
            # before the others poll again, and they would never interleave.
            time.sleep(random.uniform(0, 0.02))
        print("done", flush=True)
    elif mode == "holder":
        with store.lock(credential, timeout=30):
            print("locked", flush=True)
            sys.stdin.readline()
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
