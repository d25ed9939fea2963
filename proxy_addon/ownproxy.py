"""Is the proxy at host:port this user's authproxy? Asked before `exec`, `env` and `tokens` send
anything to it, proxy credentials included: any local user can listen on a free loopback port.

The kernel says first who owns the socket that accepted our connection (`peers`); only when it
is this user's, the status page is asked through that same connection, so the answer comes from
the socket that was checked.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
from pathlib import Path
from typing import Any

from .peers import PROC_NET, endpoint, socket_owner

__all__ = ["NotOurProxy", "proxy_status"]

STATUS_URL = "http://authproxy.local/status.json"


class NotOurProxy(Exception):
    """Something listens there, but it is not this user's authproxy; str() says why."""


def proxy_status(
    host: str, port: int, auth: str | None, *, timeout: float = 5.0, proc_net: Path = PROC_NET
) -> dict[str, Any]:
    """The status.json of this user's authproxy at host:port. Raises OSError when nothing
    answers there, NotOurProxy when the listener is another user's or not an authproxy.
    `auth` ("user:password") is sent only after the listener's owner was checked."""
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        _check_owner(sock, proc_net)
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        conn.sock = sock
        headers = {"Host": "authproxy.local", "Connection": "close"}
        if auth:
            headers["Proxy-Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
        conn.request("GET", STATUS_URL, headers=headers)
        response = conn.getresponse()
        body = response.read(1 << 20)
    except http.client.HTTPException as e:
        raise NotOurProxy(f"it does not answer as an HTTP proxy ({e.__class__.__name__})") from None
    finally:
        sock.close()
    if response.status == 407:
        raise NotOurProxy("it asks for proxy credentials that do not match the config's")
    try:
        status = json.loads(body)
    except ValueError:
        status = None
    if (
        response.status != 200
        or not isinstance(status, dict)
        or not isinstance(status.get("credentials"), list)
    ):
        raise NotOurProxy(f"it does not answer as an authproxy (HTTP {response.status})")
    return status


def _check_owner(sock: socket.socket, proc_net: Path) -> None:
    if not (proc_net / "tcp").exists():
        return  # no /proc/net (not Linux): the owner cannot be checked here
    theirs = endpoint(*sock.getpeername()[:2])
    ours = endpoint(*sock.getsockname()[:2])
    # The socket that accepted us is the listener's child: same owner.
    owner = socket_owner(theirs, ours, proc_net)
    if owner is None:
        raise NotOurProxy("cannot tell which user listens there")
    if owner != os.getuid():
        raise NotOurProxy(f"another user (uid {owner}) listens there, not you")
