"""Which requests get which credential. Pure matching rules, no I/O.

A decision is made on the address mitmproxy really connects to (the request's host and port,
i.e. the CONNECT target), never on the Host header or SNI alone.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote

from .present import BEARER, Presentation

__all__ = [
    "Route",
    "RouteTable",
    "canonical_host",
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


# Escapes some servers read as a character and others do not: IIS's `%uXXXX`, and overlong
# UTF-8 (`%c0%af` is "/" to a lax decoder). A path with one has no single reading.
_AMBIGUOUS_ESCAPES = re.compile(r"%u[0-9a-f]{4}|%c[01]|%e0%[89]|%f0%8", re.IGNORECASE)
# Reads as no path at all: it matches no prefix other than "/".
UNREADABLE = "\x00unreadable"


def strict_readings(path: str) -> tuple[str, ...]:
    """Every way a lenient server may read the path (`strict_path`), also after decoding it
    once more (`%252f` is `%2f` to a server that decodes twice, then "/"). A prefix route must
    match all of them."""
    if _AMBIGUOUS_ESCAPES.search(path):
        return (UNREADABLE,)
    once = strict_path(path)
    if "%25" not in path:
        return (once,)
    return (once, strict_path(unquote(path.split("?", 1)[0])))


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
    """Routes in file order; the first that matches wins.

    Matching is indexed so that its cost does not grow with the number of routes: routes are
    grouped by (scheme, port) and host pattern (exact names in one dict, wildcards by the domain
    below the `*.`), and within a host pattern by path prefix (see `_Paths`). A request looks
    up its own host and each of its parent domains, then only the few prefixes its path can
    match; the lowest file position among the routes found wins, exactly as a scan in file order.
    """

    def __init__(self, routes: tuple[Route, ...]) -> None:
        self.routes = routes
        # (scheme, port) -> hosts, for match() and intercepts(); https hosts on any port, for
        # https_only_match(). Positions are places in `routes` (file order), not Route.index.
        by_address: dict[tuple[str, int], list[tuple[int, Route]]] = {}
        for position, r in enumerate(routes):
            by_address.setdefault((r.scheme, r.port), []).append((position, r))
        self._by_address = {address: _HostIndex(rs) for address, rs in by_address.items()}
        self._https_any_port = _HostIndex(
            (position, r) for position, r in enumerate(routes) if r.scheme == "https"
        )

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


# One host pattern's routes by path prefix, frozen into plain tuples of ints and strings, which
# the garbage collector stops tracking: a large table adds next to no work to each collection.
#   (root, lowest, keyed)
#   root: the position of the first route with prefix "/" (it matches every path), or None;
#   lowest: the lowest position among the other prefixes (math.inf when there are none);
#   keyed: lookup key -> ((prefix, position), ...), or None when there are no other prefixes.
# A prefix P matches a path q when P is "/", q == P, or q starts with P's base (P with a
# trailing "/"). So P is filed under P and under its base, and a path q looks up q itself and
# each of its own prefixes that end in "/": only prefixes that can match q are ever compared.
# Routes with the same prefix behave alike here, so only the first of them is kept.
_Paths = tuple[int | None, float, dict[str, tuple[tuple[str, int], ...]] | None]


def _paths(entries: list[tuple[int, str]]) -> _Paths:
    """The `_Paths` of one host pattern's (position, prefix) entries, in file order."""
    root: int | None = None
    lowest = math.inf
    keyed: dict[str, list[tuple[str, int]]] = {}
    seen: set[str] = set()
    for position, prefix in entries:
        if prefix == "/":
            root = position if root is None else root
            continue
        if prefix in seen:
            continue
        seen.add(prefix)
        lowest = min(lowest, position)
        base = prefix if prefix.endswith("/") else prefix + "/"
        for key in {prefix, base}:
            keyed.setdefault(key, []).append((prefix, position))
    return root, lowest, {k: tuple(v) for k, v in keyed.items()} if keyed else None


class _HostIndex:
    """Host patterns to their `_Paths`: exact names by name, `*.example.com` by `example.com`.
    A host finds its wildcards by walking its parent domains."""

    __slots__ = ("exact", "wildcard")

    def __init__(self, routes: Iterable[tuple[int, Route]]) -> None:
        exact: dict[str, list[tuple[int, str]]] = {}
        wildcard: dict[str, list[tuple[int, str]]] = {}
        for position, r in routes:
            if r.host.startswith("*."):
                wildcard.setdefault(r.host[2:], []).append((position, r.path))
            else:
                exact.setdefault(r.host, []).append((position, r.path))
        self.exact = {host: _paths(entries) for host, entries in exact.items()}
        self.wildcard = {suffix: _paths(entries) for suffix, entries in wildcard.items()}

    def candidates(self, host: str) -> list[_Paths]:
        """The `_Paths` of every pattern that matches `host` (see `host_matches`)."""
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


def _first(candidates: list[_Paths], path: str, *, strict: bool) -> int | None:
    """The lowest position among the candidates' routes whose prefix matches `path` (as
    normalized, and also as a lenient server reads it when `strict`)."""
    best = math.inf
    for root, _, _ in candidates:
        if root is not None and root < best:
            best = root
    keys: list[str] | None = None
    lenient: tuple[str, ...] = ()
    for _, lowest, keyed in candidates:
        if keyed is None or lowest >= best:
            continue  # nothing here can beat what was found: the path need not be read
        if keys is None:
            keys = _path_keys(normalize_path(path))
            lenient = strict_readings(path) if strict else ()
        for key in keys:
            for prefix, position in keyed.get(key, ()):
                if position < best and all(path_matches(prefix, p) for p in lenient):
                    best = position
    return None if best == math.inf else int(best)


def _path_keys(path: str) -> list[str]:
    """`path` and each of its prefixes that ends in "/": the keys `_Paths` files under."""
    keys = [path]
    slash = path.find("/")
    while slash != -1:
        keys.append(path[: slash + 1])
        slash = path.find("/", slash + 1)
    return keys


def canonical_host(value: str) -> str:
    """A host as a route names it, from a host, `host:port` or `[v6]:port`; "" if it is not a
    host name (then it matches no route and agrees with no other name)."""
    host = value.strip()
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.rsplit(":", 1)[0]
    return _host(host)


@functools.lru_cache(maxsize=4096)  # a proxy sees few names; bounded against one that churns
def _host(host: str) -> str:
    try:
        return normalize_host(host)
    except ValueError:
        return ""  # not a host name: matches no route
