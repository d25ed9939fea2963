"""Which requests get which credential. Pure matching rules, no I/O.

A decision is made on the address mitmproxy really connects to (the request's host and port,
i.e. the CONNECT target), never on the Host header or SNI alone.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from .present import BEARER, Presentation

__all__ = [
    "Route",
    "RouteTable",
    "host_matches",
    "normalize_host",
    "normalize_path",
    "path_matches",
]

_LABEL_OK = set("abcdefghijklmnopqrstuvwxyz0123456789-_")


def normalize_host(host: str, *, pattern: bool = False) -> str:
    """Lower-case, without a trailing dot or IPv6 brackets. Raises ValueError on a bad name."""
    h = host.strip().lower()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    if h.endswith("."):
        h = h[:-1]
    if not h:
        raise ValueError("expected a host name, got an empty string")
    try:
        return str(ipaddress.ip_address(h))
    except ValueError:
        pass
    labels = h.split(".")
    if pattern and labels[0] == "*":
        if len(labels) < 3:
            raise ValueError(
                f"{host!r}: a wildcard needs at least two labels after it, like '*.example.com'"
            )
        labels = labels[1:]
    for label in labels:
        if not label or not set(label) <= _LABEL_OK or "*" in label:
            raise ValueError(
                f"{host!r} is not a host name ('api.example.com', '*.example.com' or an IP address)"
            )
    return h


def host_matches(pattern: str, host: str) -> bool:
    """Exact, or `*.example.com` for any name below example.com (not example.com itself).

    Both sides must already be normalized. The label boundary matters: `*.example.com` never
    matches `evil-example.com`, and `example.com` never matches `example.com.evil.test`.
    """
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern


def normalize_path(path: str) -> str:
    """The path without query, with dot segments removed (RFC 3986 §5.2.4), so that
    `/billing/../admin` is matched as `/admin`."""
    path = path.split("?", 1)[0].split("#", 1)[0] or "/"
    out: list[str] = []
    for seg in path.split("/"):
        if seg in ("", ".", "%2e", "%2E"):
            continue
        if seg.lower() in ("..", "%2e%2e", ".%2e", "%2e."):
            if out:
                out.pop()
            continue
        out.append(seg)
    trailing = "/" if path.endswith(("/", "/.", "/..")) and out else ""
    return "/" + "/".join(out) + trailing if out else "/"


def strict_path(path: str) -> str:
    """The path as a lenient server may read it: %2F, %5C and backslashes as separators,
    `;params` dropped, `#` not special. A prefix route must match this reading too."""
    path = path.split("?", 1)[0]
    for encoded in ("%2f", "%2F", "%5c", "%5C", "\\"):
        path = path.replace(encoded, "/")
    segments = [seg.split(";", 1)[0] for seg in path.replace("#", "%23").split("/")]
    return normalize_path("/".join(segments))


def path_matches(prefix: str, path: str) -> bool:
    """Prefix match on segment boundaries: `/v1` matches `/v1` and `/v1/x`, not `/v10`."""
    if prefix == "/" or path == prefix:
        return True
    base = prefix if prefix.endswith("/") else prefix + "/"
    return path.startswith(base)


@dataclass(frozen=True, slots=True)
class Route:
    index: int
    credential: str
    host: str  # normalized; may start with "*."
    port: int
    scheme: Literal["https", "http"]
    path: str = "/"
    existing_authorization: Literal["replace", "keep", "reject"] = "replace"
    allow_cross_site: bool = False  # may browsers on other sites' pages use this credential?
    present: Presentation = BEARER  # how the token goes to the API (`present:`)
    client_cert: tuple[str, str] | None = None  # (certificate, key) files for mTLS to the API

    def matches_host(self, host: str, port: int) -> bool:
        return self.port == port and host_matches(self.host, host)

    def describe(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}{self.path}"


class RouteTable:
    """Routes in file order; the first that matches wins."""

    def __init__(self, routes: tuple[Route, ...]) -> None:
        self.routes = routes

    def __iter__(self) -> Iterator[Route]:
        return iter(self.routes)

    def __len__(self) -> int:
        return len(self.routes)

    def match(self, scheme: str, host: str, port: int, path: str) -> Route | None:
        h, p, strict = _host(host), normalize_path(path), strict_path(path)
        for r in self.routes:
            if (
                r.scheme == scheme
                and r.matches_host(h, port)
                and path_matches(r.path, p)
                and path_matches(r.path, strict)
            ):
                return r
        return None

    def https_only_match(self, host: str, path: str) -> Route | None:
        """An https route that this plain-http request would have matched, had it used TLS."""
        h, p = _host(host), normalize_path(path)
        for r in self.routes:
            if r.scheme == "https" and host_matches(r.host, h) and path_matches(r.path, p):
                return r
        return None

    def intercepts(self, host: str, port: int) -> bool:
        """Whether TLS to host:port must be intercepted (some https route may apply to it)."""
        h = _host(host)
        return any(r.scheme == "https" and r.matches_host(h, port) for r in self.routes)


def _host(host: str) -> str:
    try:
        return normalize_host(host)
    except ValueError:
        return ""  # not a host name: matches no route
