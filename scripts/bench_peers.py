"""Cost of finding which user owns a client's socket (issue 11): what `LocalGuard`'s synchronous
client_connected hook pays per new connection, on the event loop's thread.

    .venv/bin/python scripts/bench_peers.py [--lookups 2000] [--rounds 5] [--connections 0]

Times `peers.socket_owner` (netlink sock_diag, one exact lookup), the /proc fallback
(`peers.proc_owner`: reading /proc/net/tcp and tcp6), and for comparison an exact lookup on one
netlink socket kept open (what `sockdiag` chose not to do), on a live loopback connection and
on one already gone (IPv4: two questions, AF_INET then AF_INET6). `--connections N` opens N more
idle loopback connections first, to show /proc's cost growing with the table while netlink's
does not. Rounds alternate between the variants; each figure is the best round.
"""

from __future__ import annotations

import argparse
import os
import socket
import time
from collections.abc import Callable

from proxy_addon.peers import Endpoint, endpoint, proc_owner, socket_owner
from proxy_addon.sockdiag import (
    NETLINK_SOCK_DIAG,
    live_owner,
    pack_request,
    parse_answer,
)


def kept_socket_owner() -> Callable[[Endpoint, Endpoint], int | None]:
    """The same exact lookup on one netlink socket opened once (IPv4 only, for the bench)."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
    sock.settimeout(0.1)
    seq = 0

    def lookup(local: Endpoint, remote: Endpoint) -> int | None:
        nonlocal seq
        seq += 1
        sock.sendto(pack_request(socket.AF_INET, local, remote, seq), (0, 0))
        return live_owner(parse_answer(sock.recv(8192), seq))

    return lookup


def best_us(lookup: Callable[[Endpoint, Endpoint], int | None], args: tuple[Endpoint, Endpoint],
            n: int) -> float:  # fmt: skip
    start = time.perf_counter()
    for _ in range(n):
        lookup(*args)
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lookups", type=int, default=2000, help="netlink lookups per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=0, help="extra idle connections")
    args = parser.parse_args()

    server = socket.create_server(("127.0.0.1", 0), backlog=max(args.connections, 1) + 1)
    port = server.getsockname()[1]
    extra = [socket.create_connection(("127.0.0.1", port)) for _ in range(args.connections)]
    extra += [server.accept()[0] for _ in range(args.connections)]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, peer = server.accept()
    live = (endpoint(*peer), endpoint("127.0.0.1", port))
    gone = (endpoint("127.0.0.1", 1), endpoint("127.0.0.1", port))
    assert socket_owner(*live) == proc_owner(*live) == os.getuid()

    proc_n = max(args.lookups // 200, 5)  # /proc is ~1000x slower: fewer calls, same wall time
    variants: list[tuple[str, Callable[[Endpoint, Endpoint], int | None], int]] = [
        ("socket_owner (netlink, a socket per lookup)", socket_owner, args.lookups),
        ("netlink, one socket kept open", kept_socket_owner(), args.lookups),
        ("proc_owner (/proc/net/tcp + tcp6)", proc_owner, proc_n),
    ]
    results: dict[tuple[str, str], float] = {}
    for _ in range(args.rounds):
        for name, lookup, n in variants:
            for case, pair in (("live", live), ("gone", gone)):
                us = best_us(lookup, pair, n)
                results[name, case] = min(results.get((name, case), us), us)

    with open("/proc/net/tcp") as f:
        rows = sum(1 for _ in f) - 1
    print(f"µs per lookup, best of {args.rounds} rounds ({rows} rows in /proc/net/tcp):")
    for name, _, _ in variants:
        print(f"  {name:45} live {results[name, 'live']:9.1f}   gone {results[name, 'gone']:9.1f}")
    netlink = "socket_owner (netlink, a socket per lookup)"
    proc = "proc_owner (/proc/net/tcp + tcp6)"
    for case in ("live", "gone"):
        ratio = results[proc, case] / results[netlink, case]
        print(f"  /proc ÷ netlink ({case}): {ratio:.0f}x")
    for s in [client, accepted, server, *extra]:
        s.close()


if __name__ == "__main__":
    main()
