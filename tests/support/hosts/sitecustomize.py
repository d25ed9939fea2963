"""Test-only name resolution, put on PYTHONPATH of the proxy process by the tests.

End-to-end tests need host names (wildcards, look-alikes) that all lead to servers on
127.0.0.1, and the machine's resolver knows none of them. Names under `.test` (reserved by
RFC 2606) resolve to 127.0.0.1 here; everything else resolves as usual. The proxy's routing
decisions, TLS and certificate checks still see the names.
"""

import socket

_real_getaddrinfo = socket.getaddrinfo


def _getaddrinfo(host, *args, **kwargs):  # type: ignore[no-untyped-def]
    name = host.decode() if isinstance(host, bytes) else host
    if isinstance(name, str) and name.rstrip(".").lower().endswith(".test"):
        host = "127.0.0.1"
    return _real_getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = _getaddrinfo
