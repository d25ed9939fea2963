"""Socket owners from netlink sock_diag (`proxy_addon.sockdiag`): the messages on hand-built
bytes, then real loopback connections, compared with what /proc/net/tcp{,6} says of them."""

from __future__ import annotations

import errno
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from ipaddress import ip_address
from pathlib import Path

import pytest

from proxy_addon import sockdiag
from proxy_addon.peers import Endpoint, endpoint, proc_owner, socket_owner
from proxy_addon.sockdiag import (
    DiagSocket,
    SockDiagUnavailable,
    live_owner,
    lookup_owner,
    pack_request,
    parse_answer,
    query,
)

NATIVE = "<" if sys.byteorder == "little" else ">"
COOKIE = b"\xff" * 8


def header(length: int, kind: int, seq: int, flags: int = 0) -> bytes:
    return struct.pack(NATIVE + "IHHII", length, kind, flags, seq, 0)


def diag_msg(seq: int, *, state: int = 1, uid: int = 1000) -> bytes:
    """An inet_diag_msg answer as the kernel writes it, field by field."""
    body = (
        bytes([socket.AF_INET, state, 0, 0])
        + (50000).to_bytes(2, "big")  # sport
        + (8080).to_bytes(2, "big")  # dport
        + bytes([127, 0, 0, 1]) + bytes(12)  # src
        + bytes([127, 0, 0, 1]) + bytes(12)  # dst
        + struct.pack(NATIVE + "I", 0)  # interface
        + COOKIE
        + struct.pack(NATIVE + "IIIII", 11, 22, 33, uid, 12345)  # expires .. uid, inode
    )  # fmt: skip
    assert len(body) == 72
    return header(16 + len(body), 20, seq) + body


def error_msg(seq: int, code: int) -> bytes:
    """NLMSG_ERROR: the negative errno, then the request it answers (here its header only)."""
    body = struct.pack(NATIVE + "i", -code) + header(72, 20, seq, flags=1)
    return header(16 + len(body), 2, seq) + body


# --- the bytes ----------------------------------------------------------------------------------


def test_pack_request_ipv4() -> None:
    raw = pack_request(
        socket.AF_INET, (ip_address("127.0.0.2"), 50000), (ip_address("127.0.0.1"), 8080), 7
    )
    expected = (
        header(72, 20, 7, flags=1)  # SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST: no NLM_F_DUMP
        + bytes([socket.AF_INET, socket.IPPROTO_TCP, 0, 0])
        + b"\xff\xff\xff\xff"  # every state
        + b"\xc3\x50" + b"\x1f\x90"  # ports in network byte order
        + bytes([127, 0, 0, 2]) + bytes(12)
        + bytes([127, 0, 0, 1]) + bytes(12)
        + bytes(4)  # any interface
        + COOKIE  # INET_DIAG_NOCOOKIE
    )  # fmt: skip
    assert raw == expected


def test_pack_request_ipv6_and_mapped() -> None:
    raw = pack_request(socket.AF_INET6, (ip_address("::1"), 1), (ip_address("127.0.0.1"), 2), 1)
    assert raw[16] == socket.AF_INET6
    assert raw[24:28] == b"\x00\x01\x00\x02"
    assert raw[28:44] == bytes(15) + b"\x01"
    assert raw[44:60] == bytes(10) + b"\xff\xff" + bytes([127, 0, 0, 1])  # IPv4-mapped
    with pytest.raises(ValueError, match="not an IPv4 address"):
        pack_request(socket.AF_INET, (ip_address("::1"), 1), (ip_address("::1"), 2), 1)


def test_parse_answer_socket() -> None:
    assert parse_answer(diag_msg(3, uid=1001), 3) == DiagSocket(state=1, uid=1001)
    # An answer to another request before ours is passed over.
    assert parse_answer(diag_msg(2, uid=0) + diag_msg(3, uid=1002), 3) == (1, 1002)


def test_parse_answer_errors() -> None:
    assert parse_answer(error_msg(5, errno.ENOENT), 5) is None  # no such socket
    with pytest.raises(SockDiagUnavailable) as info:
        parse_answer(error_msg(5, errno.EPERM), 5)
    assert info.value.errno == errno.EPERM


@pytest.mark.parametrize(
    "data",
    [
        b"",
        diag_msg(1)[:40],  # cut inside the message its header announces
        header(16 + 20, 20, 1) + diag_msg(1)[16:36],  # an inet_diag_msg of 20 bytes
        header(18, 2, 1) + b"\0\0",  # an error message too short for its errno
        header(8, 20, 1),  # a header announcing less than itself
        diag_msg(2),  # only another request's answer
        header(20, 3, 1) + bytes(4),  # NLMSG_DONE: a dump's end, not an answer to a lookup
    ],
)
def test_parse_answer_malformed(data: bytes) -> None:
    with pytest.raises(SockDiagUnavailable):
        parse_answer(data, 1)


@pytest.mark.parametrize(
    ("state", "owner"),
    [(1, 1000), (2, 1000), (4, 1000), (6, None), (10, None), (12, None)],
)  # ESTABLISHED, SYN_SENT, FIN_WAIT1; TIME_WAIT, LISTEN, NEW_SYN_RECV
def test_live_owner(state: int, owner: int | None) -> None:
    assert live_owner(DiagSocket(state=state, uid=1000)) == owner
    assert live_owner(None) is None


@pytest.mark.parametrize(("state", "owner"), [(1, 0), (4, None), (5, None), (8, None), (9, None)])
def test_a_socket_its_process_closed_is_not_roots(state: int, owner: int | None) -> None:
    # ESTABLISHED root is root; FIN_WAIT1/2, CLOSE_WAIT, LAST_ACK with uid 0 are orphans.
    assert live_owner(DiagSocket(state=state, uid=0)) == owner


# --- real sockets -------------------------------------------------------------------------------


def _netlink_works() -> bool:
    try:
        query([socket.AF_INET], (ip_address("127.0.0.1"), 1), (ip_address("127.0.0.1"), 2))
    except OSError:
        return False
    return True


needs_netlink = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not _netlink_works(), reason="needs netlink sock_diag"
)


@contextmanager
def connection(
    listen: str, connect: str, *, dualstack: bool = False
) -> Iterator[tuple[Endpoint, Endpoint]]:
    """A live loopback connection: (the client socket's address, the accepted socket's)."""
    family = socket.AF_INET6 if ":" in listen else socket.AF_INET
    try:
        server = socket.create_server(
            (listen, 0), family=family, dualstack_ipv6=dualstack
        )  # fmt: skip
    except (OSError, ValueError) as e:
        pytest.skip(f"cannot listen on {listen} here: {e}")
    with server, socket.create_connection((connect, server.getsockname()[1])):
        accepted, peer = server.accept()
        with accepted:
            yield endpoint(*peer[:2]), endpoint(*accepted.getsockname()[:2])


def _both_sides(client: Endpoint, accepted: Endpoint) -> list[tuple[Endpoint, Endpoint]]:
    return [(client, accepted), (accepted, client)]


@needs_netlink
@pytest.mark.parametrize(
    ("listen", "connect", "dualstack"),
    [
        ("127.0.0.1", "127.0.0.1", False),
        ("::1", "::1", False),
        ("::", "127.0.0.1", True),  # an IPv4 client; the accepted socket is IPv6 (IPv4-mapped)
    ],
)
def test_own_connection(listen: str, connect: str, dualstack: bool, tmp_path: Path) -> None:
    with connection(listen, connect, dualstack=dualstack) as (client, accepted):
        for local, remote in _both_sides(client, accepted):
            assert lookup_owner(local, remote) == os.getuid()
            assert proc_owner(local, remote) == os.getuid()
            # Netlink answers: the (here empty) /proc tables are not read.
            assert socket_owner(local, remote, proc_net=tmp_path) == os.getuid()


@needs_netlink
def test_mapped_address_asked_as_ipv6() -> None:
    """The second question lookup_owner asks for an IPv4 peer finds an IPv6 socket too."""
    with connection("::", "127.0.0.1", dualstack=True) as (client, accepted):
        found = query([socket.AF_INET6], accepted, client)
        assert [(s.state, s.uid) for s in found] == [(1, os.getuid())]


@needs_netlink
def test_closed_connection_has_no_owner() -> None:
    with connection("127.0.0.1", "127.0.0.1") as (client, accepted):
        assert lookup_owner(client, accepted) == os.getuid()  # ENOENT is believed from now on
    for local, remote in _both_sides(client, accepted):
        # One side is gone, the other (the first to close) in TIME_WAIT: nobody's either way.
        assert lookup_owner(local, remote) is None
        assert proc_owner(local, remote) is None
    assert lookup_owner(endpoint("::1", 1), endpoint("127.0.0.1", 2)) is None  # mixed families
    assert lookup_owner(endpoint("127.0.0.1", 1 << 16), accepted) is None  # not a port


@needs_netlink
def test_no_such_socket_is_not_believed_before_one_was_found(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A kernel without tcp_diag answers ENOENT to everything: until sock_diag has found one
    socket, its "no such socket" sends socket_owner to /proc."""
    monkeypatch.setattr(sockdiag, "_seen_a_socket", False)
    with pytest.raises(SockDiagUnavailable):
        lookup_owner(endpoint("127.0.0.1", 1), endpoint("127.0.0.1", 2))
    with connection("127.0.0.1", "127.0.0.1") as (client, accepted):
        assert lookup_owner(client, accepted) == os.getuid()
    assert lookup_owner(endpoint("127.0.0.1", 1), endpoint("127.0.0.1", 2)) is None


@needs_netlink
@pytest.mark.skipif(os.getuid() != 0, reason="a client of another uid needs root")
def test_another_users_connection() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        other = subprocess.Popen(
            ["curl", "-sS", "--max-time", "20", f"http://127.0.0.1:{port}/"],
            user=65534, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            server.settimeout(20)
            accepted, peer = server.accept()
            with accepted:
                theirs, ours = endpoint(*peer), endpoint(*accepted.getsockname())
                assert lookup_owner(theirs, ours) == 65534
                assert proc_owner(theirs, ours) == 65534
                assert socket_owner(theirs, ours) == 65534  # what the local guard asks
                assert lookup_owner(ours, theirs) == 0  # our side of it
        finally:
            other.kill()
            other.wait()


@needs_netlink
@pytest.mark.skipif(os.getuid() != 0, reason="a client of another uid needs root")
def test_another_users_send_then_close_is_nobodys() -> None:
    # The kernel lists a socket its process closed with uid 0: to a proxy running as root that
    # must not read as its own user's connection.
    script = ('exec 3<>"/dev/tcp/127.0.0.1/$1"; '
              'printf "GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n" >&3; exec 3>&-')  # fmt: skip
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        subprocess.run(["bash", "-c", script, "bash", str(port)], user=65534, check=True,
                       timeout=20)  # fmt: skip
        server.settimeout(20)
        accepted, peer = server.accept()
        with accepted:
            theirs, ours = endpoint(*peer), endpoint(*accepted.getsockname())
            assert accepted.recv(100).startswith(b"GET /")  # the request is there to be served
            # Once the client's FIN_WAIT2 is handed to a timewait mini-socket (tens of ms on
            # Linux 6), the kernel reports it with uid 0.
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                found = sockdiag.query([socket.AF_INET], theirs, ours)
                if found and found[0].uid == 0:
                    break
            else:
                pytest.skip("this kernel never reported the closed socket as uid 0")
            assert found[0].state != 1  # not ESTABLISHED: its process closed it
            assert lookup_owner(theirs, ours) is None
            assert proc_owner(theirs, ours) is None
