"""`compat.share_listen_port`: mitmproxy's own listeners accept SO_REUSEPORT, so the workers of
`authproxy run --workers N` share one address. A failure here after a mitmproxy upgrade means
compat.share_listen_port needs updating (or the workers would fail to bind)."""

from __future__ import annotations

import asyncio
import socket
import sys

import pytest
from mitmproxy.proxy import mode_servers
from mitmproxy.test import taddons

from proxy_addon import compat
from proxy_addon.demo.run import free_port

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="SO_REUSEPORT with uid check: Linux"
)


async def _two_listeners(port: int) -> tuple[bool, bool]:
    """Start two of mitmproxy's own regular-mode servers on one port; which of them listen."""
    first = mode_servers.ServerInstance.make(f"regular@127.0.0.1:{port}", None)  # type: ignore[arg-type]
    second = mode_servers.ServerInstance.make(f"regular@127.0.0.1:{port}", None)  # type: ignore[arg-type]
    await first.start()
    try:
        try:
            await second.start()
        except OSError:
            return first.is_running, False
        reuse = [
            s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
            for server in second._servers  # type: ignore[attr-defined]
            for s in server.sockets  # type: ignore[union-attr]
        ]
        await second.stop()
        return first.is_running, bool(reuse) and all(reuse)
    finally:
        await first.stop()


def test_mitmproxy_listeners_share_the_port_with_the_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mode_servers, "asyncio", asyncio)  # undone after the test
    compat.share_listen_port()
    compat.share_listen_port()  # idempotent
    with taddons.context():
        assert asyncio.run(_two_listeners(free_port())) == (True, True), (
            "compat.share_listen_port no longer gives mitmproxy's listeners SO_REUSEPORT"
        )


def test_without_the_hook_the_second_listener_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """The control: the first test proves the hook, not the default."""
    monkeypatch.setattr(mode_servers, "asyncio", asyncio)
    with taddons.context():
        assert asyncio.run(_two_listeners(free_port())) == (True, False)


def test_hook_refuses_a_mitmproxy_that_binds_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    async def listen(self: object, host: str, port: int) -> list[object]:
        return []  # binds some other way: the hook must not pretend to work

    monkeypatch.setattr(mode_servers, "asyncio", asyncio)
    monkeypatch.setattr(mode_servers.AsyncioServerInstance, "listen", listen)
    with pytest.raises(RuntimeError, match="share_listen_port needs updating"):
        compat.share_listen_port()
