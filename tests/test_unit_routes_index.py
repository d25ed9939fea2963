"""The indexed RouteTable against a plain scan in file order, on many random tables and requests.

The reference below is the matching code as it was before the index: the first route in file
order whose scheme, port, host pattern and path prefix (normalized and lenient reading) match.
The generators draw from small vocabularies so that collisions (same host, nested wildcards,
shared and nested prefixes, duplicate routes) are frequent.
"""

from __future__ import annotations

import random
import time
from typing import Literal

import pytest

from proxy_addon.routes import (
    Route,
    RouteTable,
    host_matches,
    normalize_host,
    normalize_path,
    path_matches,
    strict_path,
)

# --- the reference: a scan in file order ------------------------------------------------------


def _host(host: str) -> str:
    try:
        return normalize_host(host)
    except ValueError:
        return ""


def linear_match(routes: tuple[Route, ...], scheme: str, host: str, port: int, path: str):
    h, p, strict = _host(host), normalize_path(path), strict_path(path)
    for r in routes:
        if (
            r.scheme == scheme
            and r.port == port
            and host_matches(r.host, h)
            and path_matches(r.path, p)
            and path_matches(r.path, strict)
        ):
            return r
    return None


def linear_https_only_match(routes: tuple[Route, ...], host: str, path: str):
    h, p = _host(host), normalize_path(path)
    for r in routes:
        if r.scheme == "https" and host_matches(r.host, h) and path_matches(r.path, p):
            return r
    return None


def linear_intercepts(routes: tuple[Route, ...], host: str, port: int) -> bool:
    h = _host(host)
    return any(r.scheme == "https" and r.port == port and host_matches(r.host, h) for r in routes)


# --- generators ---------------------------------------------------------------------------------

LABELS = ["a", "b", "api", "x-y", "example", "com", "test", "1", "2"]
PATTERN_HOSTS = [
    "example.com",
    "api.example.com",
    "a.api.example.com",
    "*.example.com",
    "*.api.example.com",
    "*.b.example.com",
    "example.test",
    "*.example.test",
    "127.0.0.1",
    "*.0.0.1",
    "::1",
    "2001:db8::1",
    "localhost",
]
PREFIXES = ["/", "/v1", "/v1/", "/v1/x", "/v10", "/a/b", "/a", "/a/", "/admin", "/billing"]
PATHS = [
    "",
    "/",
    "/v1",
    "/v1/",
    "/v1/x",
    "/v1/x/y?q=1",
    "/v10",
    "/v1x",
    "/a",
    "/a/b",
    "/a/b/",
    "/a/bc",
    "/a//b",
    "/billing/../admin",
    "/billing/%2e%2e/admin/x",
    "/admin/../billing",
    "/v1%2f..%2fadmin",
    "/v1\\..\\admin",
    "/v1;x/../admin",
    "/v1/..;/admin",
    "/a/b#frag",
    "/v1/%2E",
    "?x=1",
    "/..",
]
PORTS = [443, 8443, 80]


def random_host(rng: random.Random, *, pattern: bool) -> str:
    if rng.random() < 0.6:
        host = rng.choice(PATTERN_HOSTS)
        if not pattern and host.startswith("*."):
            host = rng.choice(LABELS) + host[1:]
        return host
    labels = [rng.choice(LABELS) for _ in range(rng.randint(1, 4))]
    if pattern and len(labels) >= 2 and rng.random() < 0.4:
        labels[0] = "*"
    return ".".join(labels)


def random_route(rng: random.Random, index: int) -> Route:
    scheme: Literal["https", "http"] = "https" if rng.random() < 0.8 else "http"
    host = random_host(rng, pattern=True)
    try:
        host = normalize_host(host, pattern=True)
    except ValueError:
        host = "fallback.example.com"
    return Route(
        index=index,
        credential=f"c{index}",
        host=host,
        port=rng.choice(PORTS),
        scheme=scheme,
        path=rng.choice(PREFIXES),
    )


def random_request(rng: random.Random) -> tuple[str, str, int, str]:
    host = random_host(rng, pattern=False)
    spelling = rng.random()
    if spelling < 0.1:
        host = host.upper()
    elif spelling < 0.2:
        host += "."
    elif spelling < 0.25 and ":" in host:
        host = f"[{host}]"
    elif spelling < 0.3:
        host = "evil-" + host
    elif spelling < 0.35:
        host += ".evil.test"
    scheme = "https" if rng.random() < 0.8 else "http"
    return scheme, host, rng.choice(PORTS), rng.choice(PATHS)


# --- properties ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(40))
def test_indexed_table_agrees_with_a_scan_in_file_order(seed: int) -> None:
    rng = random.Random(seed)
    routes = tuple(random_route(rng, i) for i in range(rng.randint(0, 40)))
    table = RouteTable(routes)
    for _ in range(300):
        scheme, host, port, path = random_request(rng)
        expected = linear_match(routes, scheme, host, port, path)
        # `is`: the very route object, so the first of two equal routes is the one returned.
        assert table.match(scheme, host, port, path) is expected, (scheme, host, port, path)
        assert table.https_only_match(host, path) is linear_https_only_match(routes, host, path)
        assert table.intercepts(host, port) is linear_intercepts(routes, host, port)


def test_duplicate_routes_the_first_wins() -> None:
    a = Route(index=0, credential="a", host="*.example.com", port=443, scheme="https", path="/v1")
    b = Route(index=1, credential="b", host="*.example.com", port=443, scheme="https", path="/v1")
    c = Route(index=2, credential="c", host="api.example.com", port=443, scheme="https")
    table = RouteTable((a, b, c))
    assert table.match("https", "api.example.com", 443, "/v1/x") is a
    assert table.match("https", "api.example.com", 443, "/v2") is c


def test_a_later_exact_host_loses_to_an_earlier_nested_wildcard() -> None:
    routes = (
        Route(index=0, credential="deep", host="*.b.example.com", port=443, scheme="https",
              path="/a"),
        Route(index=1, credential="wide", host="*.example.com", port=443, scheme="https"),
        Route(index=2, credential="exact", host="a.b.example.com", port=443, scheme="https"),
    )  # fmt: skip
    table = RouteTable(routes)
    assert table.match("https", "a.b.example.com", 443, "/a/x") is routes[0]
    assert table.match("https", "a.b.example.com", 443, "/z") is routes[1]
    assert table.match("https", "x.a.b.example.com", 443, "/a") is routes[0]


def test_a_prefix_must_also_match_the_lenient_reading() -> None:
    table = RouteTable(
        (
            Route(index=0, credential="v1", host="api.example.com", port=443, scheme="https",
                  path="/v1"),
            Route(index=1, credential="any", host="api.example.com", port=443, scheme="https"),
        )
    )  # fmt: skip
    # normalized: /v1/..%2fadmin stays under /v1; a lenient server reads /admin
    found = table.match("https", "api.example.com", 443, "/v1/..%2fadmin")
    assert found is not None and found.credential == "any"


def _big_table(n: int) -> tuple[RouteTable, tuple[str, str, int, str]]:
    """n routes of every kind, the one the request matches last in file order."""
    routes = []
    for i in range(n - 1):
        kind = i % 3
        host = (
            f"h{i}.example.com"
            if kind == 0
            else f"*.w{i}.example.com"
            if kind == 1
            else "api.example.com"
        )
        path = f"/p{i}" if kind == 2 else "/"
        routes.append(Route(index=i, credential="c", host=host, port=443, scheme="https",
                            path=path))  # fmt: skip
    routes.append(Route(index=n - 1, credential="last", host="*.example.com", port=443,
                        scheme="https"))  # fmt: skip
    return RouteTable(tuple(routes)), ("https", "api.example.com", 443, "/v1/items?page=2")


def test_matching_cost_does_not_grow_with_the_route_count() -> None:
    def per_call(n: int) -> float:
        table, request = _big_table(n)
        assert table.match(*request) is table.routes[-1]
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(2000):
                table.match(*request)
            best = min(best, time.perf_counter() - t0)
        return best

    small, large = per_call(10), per_call(10_000)
    # A scan of 10 000 routes is several hundred times slower than one of 10; the index is
    # flat. The margin (3x) absorbs a noisy shared machine.
    assert large < 3 * small, (small, large)


def _normalize_host_reference(host: str) -> str:
    """normalize_host as it was: ipaddress is asked about every name first."""
    import ipaddress

    h = host.strip().lower()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    if h.endswith("."):
        h = h[:-1]
    try:
        return str(ipaddress.ip_address(h))
    except ValueError:
        return normalize_host(host)


@pytest.mark.parametrize(
    "host",
    ["1.2.3.4", "01.2.3.4", "1.2.3", "1.2.3.4.5", "256.1.1.1", "1.2.3.4.", "[::1]",
     "::FFFF:1.2.3.4", "fe80::1%eth0", "2001:DB8::1", "1e2.3.4.5", "0.0.0.0", "123",
     "api.example.com", "a1.2.3.4"],
)  # fmt: skip
def test_normalize_host_fast_path_agrees_with_asking_ipaddress(host: str) -> None:
    try:
        expected: str | type[ValueError] = _normalize_host_reference(host)
    except ValueError:
        expected = ValueError
    try:
        got: str | type[ValueError] = normalize_host(host)
    except ValueError:
        got = ValueError
    assert got == expected
