"""Is the listen address free? Checked before `authproxy run` opens or creates the store.

A start that is bound to fail (the port is taken, the address is not ours) must not first
create a token store or a key file, and must say why in one line.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Sequence

from .config import Config

__all__ = ["effective_listen", "listen_problem"]


def effective_listen(
    listen: tuple[str, int] | None, config: Config, sets: Sequence[str] = ()
) -> tuple[str, int]:
    """Where `authproxy run` will listen: --listen, else the config, with --set overriding
    either (as mitmproxy applies --set last)."""
    host, port = listen or (config.listen_host, config.listen_port)
    for option in sets:
        name, _, value = option.partition("=")
        if name.strip() == "listen_host":
            host = value.strip()
        elif name.strip() == "listen_port" and value.strip().isdigit():
            port = int(value)
    return host, port


def _where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listen_problem(host: str, port: int) -> str | None:
    """Why the proxy could not listen on host:port, or None if a bind test succeeds.

    The test socket uses SO_REUSEADDR as mitmproxy's listener does, so a port that only has
    connections in TIME_WAIT is not reported as taken.
    """
    if port == 0:
        return None  # any free port: nothing to check
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as e:
        return f"cannot listen on {_where(host, port)}: {e.strerror} (check --listen)"
    family, kind, proto, _, address = infos[0]
    try:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(address)
            s.listen(1)
    except OSError as e:
        hint = (
            " (another program, perhaps another authproxy, is using it: stop it, or choose "
            "another port with --listen or `listen:` in the config)"
            if e.errno == errno.EADDRINUSE
            else ""
        )
        return f"cannot listen on {_where(host, port)}: {e.strerror}{hint}"
    return None
