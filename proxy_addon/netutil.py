"""Small network helpers shared by the config, the guards, the launcher and the tests.

A bottom module: it imports only the standard library, so anything may import it.
"""

from __future__ import annotations

import ipaddress
import socket

__all__ = ["MIN_PROXY_PASSWORD", "free_port", "host_for_url", "is_loopback"]

# Shortest proxy password accepted on a listener other machines can reach.
MIN_PROXY_PASSWORD = 12


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_for_url(host: str) -> str:
    """`host` as it goes into a URL's authority: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now (another program may take it before it is bound)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
