"""Which requests get which credential. Pure matching rules, no I/O.

A decision is made on the address mitmproxy really connects to (the request's host and port,
i.e. the CONNECT target), never on the Host header or SNI alone.
"""

from __future__ import annotations

import functools
import ipaddress
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "Route",
    "RouteTable",
    "host_matches",
    "normalize_host",
    "normalize_path",
    "path_matches",
]

_IPV4_CHARS = "0123456789."
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
    # Only digits and dots (IPv4) or a ":" (IPv6) can be an address; asking ipaddress about
    # every name costs two exceptions.
    if ":" in h or not h.strip(_IPV4_CHARS):
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

    def matches_host(self, host: str, port: int) -> bool:
        return self.port == port and host_matches(self.host, host)

    def describe(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}{self.path}"


class RouteTable:
    """Routes in file order; the first that matches wins.

    Matching is indexed so that its cost does not grow with the number of routes: routes are
    grouped by (scheme, port) and host pattern (exact names in one dict, wildcards by the domain
    below the `*.`), and within a host pattern by path prefix (see `_PathIndex`). A request looks
    up its own host and each of its parent domains, then only the few prefixes its path can
    match; the lowest file position among the routes found wins, exactly as a scan in file order.
    """

    def __init__(self, routes: tuple[Route, ...]) -> None:
        self.routes = routes
        # (scheme, port) -> hosts, for match() and intercepts(); https hosts on any port, for
        # https_only_match(). Positions are places in `routes` (file order), not Route.index.
        self._by_address: dict[tuple[str, int], _HostIndex] = {}
        self._https_any_port = _HostIndex()
        for position, r in enumerate(routes):
            self._by_address.setdefault((r.scheme, r.port), _HostIndex()).add(position, r)
            if r.scheme == "https":
                self._https_any_port.add(position, r)

    def __iter__(self) -> Iterator[Route]:
        return iter(self.routes)

    def __len__(self) -> int:
        return len(self.routes)

    def match(self, scheme: str, host: str, port: int, path: str) -> Route | None:
        hosts = self._by_address.get((scheme, port))
        if hosts is None:
            return None
        found = _first(hosts.candidates(_host(host)), path, strict=True)
        return None if found is None else self.routes[found]

    def https_only_match(self, host: str, path: str) -> Route | None:
        """An https route that this plain-http request would have matched, had it used TLS."""
        found = _first(self._https_any_port.candidates(_host(host)), path, strict=False)
        return None if found is None else self.routes[found]

    def intercepts(self, host: str, port: int) -> bool:
        """Whether TLS to host:port must be intercepted (some https route may apply to it)."""
        hosts = self._by_address.get(("https", port))
        return hosts is not None and bool(hosts.candidates(_host(host)))


class _PathIndex:
    """The routes of one host pattern (in one scheme and port), by path prefix.

    A prefix P matches a path q when P is "/", q == P, or q starts with P's base (P with a
    trailing "/"). So P is filed under P and under its base, and a path q looks up q itself and
    each of its own prefixes that end in "/": only prefixes that can match q are ever compared.
    Routes with the same prefix behave alike here, so only the first of them is kept.
    """

    __slots__ = ("by_key", "first", "lowest", "root")

    def __init__(self) -> None:
        self.root: int | None = None  # the first route with prefix "/": matches every path
        self.first: dict[str, int] = {}  # other prefix -> its first position
        self.by_key: dict[str, list[str]] = {}  # lookup key -> prefixes filed under it
        self.lowest: float = math.inf  # the lowest position among the other prefixes

    def add(self, position: int, prefix: str) -> None:
        if prefix == "/":
            if self.root is None:
                self.root = position
            return
        if prefix in self.first:
            return
        self.first[prefix] = position
        self.lowest = min(self.lowest, position)
        base = prefix if prefix.endswith("/") else prefix + "/"
        for key in {prefix, base}:
            self.by_key.setdefault(key, []).append(prefix)

    def first_match(self, keys: list[str], strict: str | None, below: float) -> int | None:
        """The lowest position below `below` whose prefix matches (the paths behind) `keys`,
        and `strict` too when given."""
        best: int | None = None
        for key in keys:
            for prefix in self.by_key.get(key, ()):
                position = self.first[prefix]
                if position < below and (strict is None or path_matches(prefix, strict)):
                    best, below = position, position
        return best


class _HostIndex:
    """Host patterns to their `_PathIndex`: exact names by name, `*.example.com` by
    `example.com`. A host finds its wildcards by walking its parent domains."""

    __slots__ = ("exact", "wildcard")

    def __init__(self) -> None:
        self.exact: dict[str, _PathIndex] = {}
        self.wildcard: dict[str, _PathIndex] = {}

    def add(self, position: int, route: Route) -> None:
        if route.host.startswith("*."):
            paths = self.wildcard.setdefault(route.host[2:], _PathIndex())
        else:
            paths = self.exact.setdefault(route.host, _PathIndex())
        paths.add(position, route.path)

    def candidates(self, host: str) -> list[_PathIndex]:
        """The path indexes of every pattern that matches `host` (see `host_matches`)."""
        found = []
        exact = self.exact.get(host)
        if exact is not None:
            found.append(exact)
        if self.wildcard:
            # `*.S` matches `X.S` for a non-empty X: every "." after the first character.
            dot = host.find(".", 1)
            while dot != -1:
                wild = self.wildcard.get(host[dot + 1 :])
                if wild is not None:
                    found.append(wild)
                dot = host.find(".", dot + 1)
        return found


def _first(candidates: list[_PathIndex], path: str, *, strict: bool) -> int | None:
    """The lowest position among the candidates' routes whose prefix matches `path` (as
    normalized, and also as a lenient server reads it when `strict`)."""
    best = math.inf
    for paths in candidates:
        if paths.root is not None and paths.root < best:
            best = paths.root
    keys: list[str] | None = None
    lenient: str | None = None
    for paths in candidates:
        if paths.lowest < best:  # a prefix other than "/" could still win: read the path
            if keys is None:
                keys = _path_keys(normalize_path(path))
                lenient = strict_path(path) if strict else None
            found = paths.first_match(keys, lenient, best)
            if found is not None:
                best = found
    return None if best == math.inf else int(best)


def _path_keys(path: str) -> list[str]:
    """`path` and each of its prefixes that ends in "/": the keys `_PathIndex` files under."""
    keys = [path]
    slash = path.find("/")
    while slash != -1:
        keys.append(path[: slash + 1])
        slash = path.find("/", slash + 1)
    return keys


@functools.lru_cache(maxsize=4096)  # a proxy sees few names; bounded against one that churns
def _host(host: str) -> str:
    try:
        return normalize_host(host)
    except ValueError:
        return ""  # not a host name: matches no route
