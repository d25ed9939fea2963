"""Header lookups for the per-request path, where the header asked for is nearly always absent.

mitmproxy's `name in headers` and `headers.get(name)` lower-case every field name in Python and
raise and catch a KeyError when the name is absent. These read the raw names in one C-level
join instead. Pure; names are given as lower-case bytes.
"""

from __future__ import annotations

from operator import itemgetter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mitmproxy import http

__all__ = ["has", "header", "names", "put"]

_name = itemgetter(0)


def names(headers: http.Headers) -> bytes:
    """Every field name, lower case, each between NULs (`b"\\0host\\0" in names(h)`)."""
    return b"\0" + b"\0".join(map(_name, headers.fields)).lower() + b"\0"


def has(headers: http.Headers, name: bytes) -> bool:
    return b"\0" + name + b"\0" in names(headers)


def header(headers: http.Headers, name: bytes) -> str | None:
    """`headers.get(name)` (every copy, joined as mitmproxy joins them), or None."""
    return headers.get(name.decode()) if has(headers, name) else None


def put(headers: http.Headers, name: bytes, value: str) -> None:
    """`headers[name] = value`; a name not there yet (the usual case) is appended to the raw
    fields directly, as mitmproxy would append it, without its pass over every field."""
    if has(headers, name):
        headers[name.decode()] = value
    else:
        headers.fields = (*headers.fields, (name, value.encode("utf-8", "surrogateescape")))
