"""headerscan's lookups give exactly what mitmproxy's own Headers operations give."""

from __future__ import annotations

import pytest
from mitmproxy import http

from proxy_addon.headerscan import has, header, put

FIELDS = [
    [],
    [(b"Host", b"a")],
    [(b"Authorization", b"x"), (b"Host", b"a")],
    [(b"host", b"a"), (b"AUTHORIZATION", b"x"), (b"authorization", b"y"), (b"z", b"1")],
    [(b"DPoP", b"p"), (b"x-authorization", b"q"), (b"authorization-x", b"r")],
    [(b"upgrade", b"websocket"), (b"Upgrade", b"h2c")],
]
NAMES = [b"authorization", b"dpop", b"upgrade", b"host", b"x", b"authorizatio"]


@pytest.mark.parametrize("fields", FIELDS)
@pytest.mark.parametrize("name", NAMES)
def test_lookups_agree_with_mitmproxy(fields: list[tuple[bytes, bytes]], name: bytes) -> None:
    headers = http.Headers(fields)
    assert has(headers, name) == (name.decode() in headers)
    assert header(headers, name) == headers.get(name.decode())


@pytest.mark.parametrize("fields", FIELDS)
@pytest.mark.parametrize("name", NAMES)
def test_put_agrees_with_mitmproxy(fields: list[tuple[bytes, bytes]], name: bytes) -> None:
    theirs, ours = http.Headers(fields), http.Headers(fields)
    theirs[name.decode()] = "v\u00e9"
    put(ours, name, "v\u00e9")
    assert ours.fields == theirs.fields


@pytest.mark.parametrize("fields", FIELDS)
@pytest.mark.parametrize("name", [b"Authorization", b"DPoP", b"UPGRADE"])
def test_a_name_in_any_case_is_found_and_never_doubled(
    fields: list[tuple[bytes, bytes]], name: bytes
) -> None:
    headers = http.Headers(fields)
    assert has(headers, name) == (name.decode() in headers)
    put(headers, name, "v")
    assert [v for n, v in headers.fields if n.lower() == name.lower()] == [b"v"]
