"""Who owns one TCP socket, asked of Linux's NETLINK_SOCK_DIAG (inet_diag) by its exact 4-tuple.

Reading /proc/net/tcp{,6} makes the kernel walk its whole established-connection hash table
(sized by RAM: 5-9 ms on a 23 GB machine with a handful of sockets); an exact inet_diag request
(no NLM_F_DUMP) is one hash lookup: 25-40 µs from Python (scripts/bench_peers.py). The request
names the socket as its owner sees it: `local` is the socket's own address, `remote` its peer's.

`pack_request` and `parse_answer` work on bytes and are tested on bytes; `query` is the one
function that talks to the kernel. `lookup_owner` raises `SockDiagUnavailable` when netlink
cannot answer (not Linux, a seccomp filter, a kernel without inet_diag): the caller then reads
/proc.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from typing import NamedTuple

__all__ = [
    "DiagSocket",
    "SockDiagUnavailable",
    "live_owner",
    "lookup_owner",
    "pack_request",
    "parse_answer",
    "query",
]

IP = ipaddress.IPv4Address | ipaddress.IPv6Address

# From include/uapi/linux/netlink.h, sock_diag.h and inet_diag.h.
NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x01
NLMSG_ERROR = 2
NLMSG_DONE = 3
# nlmsghdr: length, type, flags, sequence number, port id (host byte order).
_HEADER = struct.Struct("=IHHII")
# inet_diag_req_v2: family, protocol, extensions, pad, states, then inet_diag_sockid: ports and
# addresses in network byte order (bytes here), interface and cookie in host byte order.
_REQUEST = struct.Struct("=BBBBI2s2s16s16sIII")
# inet_diag_msg, of which only the state and the uid are read: family, state, timer, retrans,
# inet_diag_sockid (48 bytes), expires, rqueue, wqueue, uid, inode.
_MESSAGE = struct.Struct("=xBxx48x12xI4x")
_ERROR = struct.Struct("=i")
_NOCOOKIE = 0xFFFFFFFF
_ALL_STATES = 0xFFFFFFFF
# Not a process's socket any more (TIME_WAIT: the kernel reports uid 0), a listener (no peer),
# or a half-open connection still in the listener's queue (reported with uid 0).
_TCP_ESTABLISHED, _TCP_TIME_WAIT, _TCP_LISTEN, _TCP_NEW_SYN_RECV = 1, 6, 10, 12
_IGNORED_STATES = {_TCP_TIME_WAIT, _TCP_LISTEN, _TCP_NEW_SYN_RECV}
_TIMEOUT = 0.1  # seconds; the kernel answers an exact lookup before sendto() returns
# An answer is one nlmsghdr + inet_diag_msg (no attributes asked), or an error that quotes the
# request: far below this.
_BUFSIZE = 8192


class SockDiagUnavailable(OSError):
    """Netlink sock_diag cannot answer here; read /proc/net/tcp instead."""


def _address(ip: IP, family: int) -> bytes:
    """`ip` as the 16 bytes of an inet_diag_sockid address in `family`."""
    if family == socket.AF_INET:
        if ip.version != 4:
            raise ValueError(f"{ip} is not an IPv4 address")
        return ip.packed + bytes(12)
    if ip.version == 4:
        return bytes(10) + b"\xff\xff" + ip.packed  # IPv4-mapped, as a dual-stack socket has it
    return ip.packed


def pack_request(family: int, local: tuple[IP, int], remote: tuple[IP, int], seq: int) -> bytes:
    """A netlink message asking for the one TCP socket whose own address is `local` and whose
    peer is `remote` (an exact lookup: not a dump), in address family `family`."""
    body = _REQUEST.pack(
        family,
        socket.IPPROTO_TCP,
        0,  # no extensions: the base message carries the uid
        0,
        _ALL_STATES,
        local[1].to_bytes(2, "big"),
        remote[1].to_bytes(2, "big"),
        _address(local[0], family),
        _address(remote[0], family),
        0,  # any interface
        _NOCOOKIE,
        _NOCOOKIE,
    )
    header = _HEADER.pack(_HEADER.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, seq, 0)
    return header + body


class DiagSocket(NamedTuple):
    """What an inet_diag answer says of the socket found."""

    state: int  # TCP_ESTABLISHED = 1 ... as in include/net/tcp_states.h
    uid: int


def parse_answer(data: bytes, seq: int) -> DiagSocket | None:
    """The socket in the kernel's answer to request `seq`, or None when the kernel has no such
    socket (ENOENT). Raises SockDiagUnavailable for any other error, or a truncated, malformed
    or missing answer."""
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, _flags, msg_seq, _port = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size or offset + length > len(data):
            raise SockDiagUnavailable(f"a truncated netlink message ({length} bytes announced)")
        payload = data[offset + _HEADER.size : offset + length]
        offset += (length + 3) & ~3  # messages are 4-byte aligned
        if msg_seq != seq:
            continue  # not ours (a socket of our own only gets our answers; be safe anyway)
        if kind == NLMSG_ERROR:
            if len(payload) < _ERROR.size:
                raise SockDiagUnavailable("a truncated netlink error message")
            (code,) = _ERROR.unpack_from(payload)
            if code == -errno.ENOENT:
                return None
            raise SockDiagUnavailable(-code, f"sock_diag: {os.strerror(-code)}")
        if kind == SOCK_DIAG_BY_FAMILY:
            if len(payload) < _MESSAGE.size:
                raise SockDiagUnavailable(f"a truncated inet_diag message ({len(payload)} bytes)")
            state, uid = _MESSAGE.unpack_from(payload)
            return DiagSocket(state=state, uid=uid)
        raise SockDiagUnavailable(f"an unexpected netlink message (type {kind})")
    raise SockDiagUnavailable(f"no answer to request {seq} in {len(data)} bytes")


def live_owner(found: DiagSocket | None) -> int | None:
    """The uid of a socket that is a live connection's end, else None."""
    if found is None or found.state in _IGNORED_STATES:
        return None
    if found.uid == 0 and found.state != _TCP_ESTABLISHED:
        # Closed by its process (an orphan, FIN_WAIT/CLOSING/LAST_ACK), the kernel reports uid 0:
        # another user's send-then-close must not pass for root's to a proxy running as root.
        return None
    return found.uid


def found_a_socket() -> bool:
    """Whether sock_diag has found a socket in this process (so its "no such socket" holds)."""
    return _seen_a_socket


# ENOENT also means "this kernel has no inet_diag for TCP": until the kernel has answered with a
# socket once, "no such socket" is not believed and the caller reads /proc instead.
_seen_a_socket = False


def lookup_owner(local: tuple[IP, int], remote: tuple[IP, int]) -> int | None:
    """The uid owning the live TCP socket whose own address is `local` and whose peer is
    `remote`; None when there is none (the connection is gone, or in TIME_WAIT).
    Raises SockDiagUnavailable when netlink cannot tell."""
    global _seen_a_socket
    if local[0].version != remote[0].version or not (
        0 <= local[1] <= 0xFFFF and 0 <= remote[1] <= 0xFFFF
    ):
        return None  # no connection joins an IPv4 and an IPv6 address, nor has such a port
    # An IPv4 address may belong to an IPv6 socket (IPv4-mapped): AF_INET6 is asked second.
    families: list[int] = (
        [socket.AF_INET, socket.AF_INET6] if local[0].version == 4 else [socket.AF_INET6]
    )
    try:
        found = query(families, local, remote)
    except SockDiagUnavailable:
        raise
    except OSError as e:  # no netlink (EAFNOSUPPORT), a seccomp filter (EPERM), a timeout
        raise SockDiagUnavailable(e.errno, f"netlink sock_diag: {e.strerror or e}") from e
    if found:
        _seen_a_socket = True
    elif not _seen_a_socket:
        raise SockDiagUnavailable("sock_diag has found no socket yet: its ENOENT is not trusted")
    for answer in found:
        if (owner := live_owner(answer)) is not None:
            return owner
    return None


def query(families: list[int], local: tuple[IP, int], remote: tuple[IP, int]) -> list[DiagSocket]:
    """The sockets the kernel finds for `local` <-> `remote`, asking in each family in turn until
    a live one is found. Raises OSError when netlink cannot be asked."""
    netlink = getattr(socket, "AF_NETLINK", None)
    if netlink is None:
        raise SockDiagUnavailable("no netlink sockets on this system")
    found: list[DiagSocket] = []
    # A socket per lookup: ~15 µs more than keeping one open (scripts/bench_peers.py), and no
    # stale answers after a timeout, nothing shared across threads or forked workers.
    with socket.socket(netlink, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as sock:
        sock.settimeout(_TIMEOUT)
        for seq, family in enumerate(families, 1):
            sock.sendto(pack_request(family, local, remote, seq), (0, 0))
            answer = parse_answer(sock.recv(_BUFSIZE), seq)
            if answer is not None:
                found.append(answer)
                if live_owner(answer) is not None:
                    break
    return found
