"""Which local user owns a TCP socket: asked of Linux's netlink sock_diag, else read from
`/proc/net/tcp` and `/proc/net/tcp6`.

Loopback is shared by every user of a machine, so "a client on 127.0.0.1" says nothing about who
it is. The kernel knows every TCP socket of the network namespace with its owner's uid; the
other end of a connection we accepted is the socket whose local address is our peer's and whose
remote address is ours. The same lookup from the client side (local = the server's address,
remote = ours) gives the owner of the server's accepted socket, which is the listener's owner.

The kernel is asked for that one socket by its addresses (`sockdiag`: one hash lookup, 25-40 µs
from Python); reading /proc/net/tcp{,6} makes it list every socket, walking its whole connection
hash table (5-9 ms on a 23 GB machine, however few sockets there are: the table is sized by
RAM), so /proc is only the fallback where netlink cannot answer (scripts/bench_peers.py).
Parsing /proc is pure (`find_owner`) so it is tested on fixture text; `proc_owner` is the one
function that reads /proc.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal, NamedTuple

from .sockdiag import SockDiagUnavailable, found_a_socket, lookup_owner

__all__ = [
    "Endpoint", "endpoint", "find_owner", "kernel_forms", "lookup_works", "proc_owner",
    "socket_owner",
]  # fmt: skip

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
ByteOrder = Literal["little", "big"]
PROC_NET = Path("/proc/net")
# A socket in TIME_WAIT is no longer a process's: the kernel lists it with uid 0. LISTEN sockets
# have no peer. Neither can be the other end of a live connection.
_IGNORED_STATES = {"06", "0A"}
_ESTABLISHED = "01"


class Endpoint(NamedTuple):
    ip: IP
    port: int


def endpoint(host: str, port: int) -> Endpoint:
    """An address as a socket reports it (`::ffff:127.0.0.1`, `fe80::1%lo`) in comparable form:
    IPv4-mapped IPv6 addresses become IPv4, a zone index is dropped."""
    return Endpoint(_unmapped(ipaddress.ip_address(host.split("%", 1)[0])), int(port))


def _unmapped(ip: IP) -> IP:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def kernel_forms(ep: Endpoint, byteorder: ByteOrder = sys.byteorder) -> set[str]:
    """How the kernel writes `ep` in its tables: in tcp, and (as IPv4-mapped, for IPv4) in tcp6.
    Comparing these strings costs far less than parsing every line of a busy table."""
    ips: list[IP] = [ep.ip]
    if ep.ip.version == 4:
        ips.append(ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + ep.ip.packed))
    forms = set()
    for ip in ips:
        raw = ip.packed
        words = [raw[i : i + 4] for i in range(0, len(raw), 4)]
        if byteorder == "little":
            words = [w[::-1] for w in words]
        forms.add(f"{b''.join(words).hex().upper()}:{ep.port:04X}")
    return forms


def find_owner(
    tables: Iterable[str], local: Endpoint, remote: Endpoint, byteorder: ByteOrder = sys.byteorder
) -> int | None:
    """The uid owning the live socket with these local and remote addresses, or None."""
    locals_, remotes = kernel_forms(local, byteorder), kernel_forms(remote, byteorder)
    for text in tables:
        for line in text.splitlines()[1:]:
            fields = line.split()
            if (
                len(fields) >= 8
                and fields[1].upper() in locals_
                and fields[2].upper() in remotes
                and fields[3].upper() not in _IGNORED_STATES
                and fields[7].isdigit()
                # A socket its process has closed is listed with uid 0: not root's.
                and not (fields[7] == "0" and fields[3].upper() != _ESTABLISHED)
            ):
                return int(fields[7])
    return None


def socket_owner(local: Endpoint, remote: Endpoint, proc_net: Path = PROC_NET) -> int | None:
    """The uid owning the socket `local` <-> `remote` on this machine, or None when it cannot
    be found (another machine's socket, a connection already gone, not Linux). Netlink
    sock_diag is asked first; `proc_net` is read only where netlink cannot answer."""
    try:
        return lookup_owner(local, remote)
    except SockDiagUnavailable:
        return proc_owner(local, remote, proc_net)


def lookup_works(proc_net: Path = PROC_NET) -> bool:
    """Whether "no owner found" means "no such socket" here, not "cannot ask": /proc/net/tcp is
    there, or netlink has found a socket in this process."""
    return (proc_net / "tcp").exists() or found_a_socket()


def proc_owner(local: Endpoint, remote: Endpoint, proc_net: Path = PROC_NET) -> int | None:
    """`socket_owner` from the tables in `proc_net` (/proc/net/tcp{,6}), or None."""

    def tables() -> Iterator[str]:
        # An IPv4 peer may still hold an IPv6 socket (an IPv4-mapped address): tcp6 comes second.
        names = ("tcp", "tcp6") if local.ip.version == 4 else ("tcp6",)
        for name in names:
            try:
                yield (proc_net / name).read_text()
            except OSError:
                continue

    return find_owner(tables(), local, remote)
