"""Who owns a loopback socket (`proxy_addon.peers`), and whom the local guard serves."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

from proxy_addon.localguard import password_gate, peer_refusal
from proxy_addon.peers import endpoint, find_owner, kernel_forms, socket_owner

# Lines as Linux 6.x writes them (x86: words in little-endian order).
TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 26224 1
   1: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 26300 1
   2: 0100007F:D431 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1001        0 26301 1
   3: 0100007F:D432 0100007F:1F90 06 00000000:00000000 03:00000E2F 00000000     0        0 0 3
   4: 0100007F:D433 0100007F:1F90 04 00000000:00000000 00:00000000 00000000  1002        0 0 1
   5: 0100007F:D434 0100007F:1F90 05 00000000:00000000 00:00000000 00000000     0        0 0 1
   6: 0100007F:D435 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 9 1
garbage line
"""
TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1F91 00000000000000000000000001000000:C000 01 00000000:00000000 00:00000000 00000000  1003        0 1 1
   1: 0000000000000000FFFF00000100007F:C001 0000000000000000FFFF00000100007F:1F90 01 00000000:00000000 00:00000000 00000000  1004        0 2 1
"""  # noqa: E501


@pytest.mark.parametrize(
    ("local", "remote", "owner"),
    [
        (("127.0.0.1", 0xD431), ("127.0.0.1", 8080), 1001),  # the client's socket
        (("127.0.0.1", 8080), ("127.0.0.1", 0xD431), 1000),  # our accepted socket
        (("::ffff:127.0.0.1", 0xD431), ("127.0.0.1", 8080), 1001),  # as a dual-stack socket says
        (("127.0.0.1", 0xD432), ("127.0.0.1", 8080), None),  # TIME_WAIT: nobody's any more
        (("127.0.0.1", 0xD433), ("127.0.0.1", 8080), 1002),  # FIN_WAIT1: still the client's
        (("127.0.0.1", 0xD434), ("127.0.0.1", 8080), None),  # FIN_WAIT2, uid 0: an orphan
        (("127.0.0.1", 0xD435), ("127.0.0.1", 8080), 0),  # ESTABLISHED root: root's
        (("127.0.0.1", 0xD431), ("127.0.0.1", 8081), None),  # another listener
        (("127.0.0.2", 0xD431), ("127.0.0.1", 8080), None),
        (("::1", 8081), ("::1", 0xC000), 1003),
        (("::1%lo", 8081), ("::1", 0xC000), 1003),
        (("127.0.0.1", 0xC001), ("127.0.0.1", 8080), 1004),  # an IPv4 client on an IPv6 socket
    ],
)
def test_find_owner(local: tuple[str, int], remote: tuple[str, int], owner: int | None) -> None:
    assert find_owner([TCP, TCP6], endpoint(*local), endpoint(*remote), "little") == owner


def test_kernel_forms_in_both_byte_orders() -> None:
    ep = endpoint("127.0.0.1", 8080)
    assert kernel_forms(ep, "little") == {
        "0100007F:1F90", "0000000000000000FFFF00000100007F:1F90"
    }  # fmt: skip
    assert kernel_forms(ep, "big") == {"7F000001:1F90", "00000000000000000000FFFF7F000001:1F90"}
    assert kernel_forms(endpoint("::1", 1), "little") == {"00000000000000000000000001000000:0001"}


def test_socket_owner_without_proc(tmp_path: Path) -> None:
    assert socket_owner(endpoint("127.0.0.1", 1), endpoint("127.0.0.1", 2), tmp_path) is None


@pytest.mark.skipif(sys.byteorder != "little", reason="the fixture tables are little-endian")
def test_socket_owner_reads_proc_without_netlink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where netlink cannot answer (here: a system without it), the tables in /proc are read."""
    (tmp_path / "tcp").write_text(TCP)
    (tmp_path / "tcp6").write_text(TCP6)
    monkeypatch.delattr(socket, "AF_NETLINK", raising=False)
    local, remote = endpoint("127.0.0.1", 0xD431), endpoint("127.0.0.1", 8080)
    assert socket_owner(local, remote, tmp_path) == 1001
    assert socket_owner(endpoint("127.0.0.1", 0xC001), remote, tmp_path) == 1004  # from tcp6


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")
def test_socket_owner_of_real_connections() -> None:
    """Our own connection, from both sides (another uid's: test_unit_sockdiag)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, peer = server.accept()
            with accepted:
                assert socket_owner(endpoint(*peer), endpoint("127.0.0.1", port)) == os.getuid()
                # From the client's side: the owner of the server's socket.
                assert (
                    socket_owner(endpoint("127.0.0.1", port), endpoint(*client.getsockname()))
                    == os.getuid()
                )


@pytest.mark.parametrize(
    ("owner", "gate", "strict", "served"),
    [
        (1000, False, False, True),  # the user who runs the proxy
        (1000, True, True, True),
        (1001, False, False, False),  # another user
        (1001, True, False, True),  # ... who has the proxy password
        (1001, True, True, False),  # ... on a strict proxy (exec's)
        (None, False, False, False),  # unknown: only with a password
        (None, True, False, True),
        (None, True, True, True),
    ],
)
def test_peer_refusal(owner: int | None, gate: bool, strict: bool, served: bool) -> None:
    why = peer_refusal(owner=owner, me=1000, password_gate=gate, strict=strict)
    assert (why is None) == served
    if why and owner is not None:
        assert f"uid {owner}" in why


def test_password_gate() -> None:
    assert password_gate("user:pw") and password_gate("@/etc/htpasswd")
    assert not password_gate(None) and not password_gate("") and not password_gate("any")


# --- the addon's hook, in this process ----------------------------------------------------------


@pytest.mark.parametrize(
    ("own_socket", "proxyauth", "check", "served"),
    [
        (True, None, "auto", True),
        (False, None, "auto", False),  # no such socket: owner unknown, and no password asked
        (False, "u:a-password", "auto", True),  # the password will be asked
        (False, "any", "auto", False),  # "any" asks for nothing
        (True, "u:a-password", "strict", True),
        (False, "u:a-password", "strict", True),  # unknown owner but a password: served
    ],
)
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")
def test_client_connected(
    own_socket: bool, proxyauth: str | None, check: str, served: bool
) -> None:
    from mitmproxy.addons.proxyauth import ProxyAuth
    from mitmproxy.test import taddons, tflow

    from proxy_addon.localguard import LocalGuard

    guard = LocalGuard(harden=False)  # hardening would change this test process
    with (
        socket.create_server(("127.0.0.1", 0)) as server,
        socket.create_connection(server.getsockname()) as client_sock,
        taddons.context(guard, ProxyAuth()) as tctx,
    ):
        accepted, peer = server.accept()
        with accepted:
            tctx.configure(guard, proxyauth=proxyauth, authproxy_peer_check=check)
            client = tflow.tclient_conn()
            client.peername = peer if own_socket else ("127.0.0.1", 1)
            client.sockname = server.getsockname()
            client.error = None
            guard.client_connected(client)
            assert (client.error is None) == served, client.error
            assert client_sock.fileno() >= 0


def test_a_peer_check_that_breaks_refuses_the_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    from mitmproxy.addons.proxyauth import ProxyAuth
    from mitmproxy.test import taddons, tflow

    from proxy_addon import localguard

    def broken(*_: object) -> None:
        raise OSError("netlink says no")

    monkeypatch.setattr(localguard, "socket_owner", broken)
    guard = localguard.LocalGuard(harden=False)
    with taddons.context(guard, ProxyAuth()) as tctx:
        tctx.configure(guard, authproxy_peer_check="strict")
        client = tflow.tclient_conn()
        client.peername, client.sockname = ("127.0.0.1", 40000), ("127.0.0.1", 8080)
        client.error = None
        guard.client_connected(client)
    assert client.error == "refused by authproxy: the peer check failed"
