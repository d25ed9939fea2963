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


# The last two heads asked about and their names: hooks ask about the same head several times,
# and about a request's and its answer's in turn. `fields` is an immutable tuple that mitmproxy
# replaces on every change, and it is held here, so `is` proves the names are still right.
_Seen = tuple[tuple[tuple[bytes, bytes], ...], bytes]
_last: tuple[_Seen, _Seen] = (((), b"\0\0"), ((), b"\0\0"))


def names(headers: http.Headers) -> bytes:
    """Every field name, lower case, each between NULs (`b"\\0host\\0" in names(h)`)."""
    global _last
    fields = headers.fields
    newest, older = _last  # one read: another thread may replace it, never half of it
    if newest[0] is fields:
        return newest[1]
    if older[0] is fields:
        return older[1]
    found = b"\0" + b"\0".join(map(_name, fields)).lower() + b"\0"
    _last = ((fields, found), newest)
    return found


def has(headers: http.Headers, name: bytes) -> bool:
    # lower(): a caller passing "Authorization" must not read "absent" and add a second one.
    return b"\0" + name.lower() + b"\0" in names(headers)


def header(headers: http.Headers, name: bytes) -> str | None:
    """`headers.get(name)` (every copy, joined as mitmproxy joins them), or None."""
    return headers.get(name.decode()) if has(headers, name) else None


def put(headers: http.Headers, name: bytes, value: str | bytes) -> None:
    """`headers[name] = value`, as mitmproxy does it (the first copy takes the value, further
    copies go, a name not there is appended), without a Python call per field in the usual
    cases: the name absent, or there once."""
    new = value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")
    name = name.lower()
    fields = headers.fields
    key = b"\0" + name + b"\0"
    found = names(headers)
    at = found.find(key)
    if at == -1:  # the usual case for a header the proxy adds
        headers.fields = (*fields, (name, new))
        return
    if found.find(key, at + 1) == -1:  # there once: its place is the NULs before it
        i = found.count(b"\0", 0, at)
        if i < len(fields) and fields[i][0].lower() == name:  # a NUL inside a name: the loop
            headers.fields = (*fields[:i], (fields[i][0], new), *fields[i + 1 :])
            return
    out = []
    done = False
    for field in fields:
        if field[0].lower() != name:
            out.append(field)
        elif not done:
            out.append((field[0], new))
            done = True
    if not done:  # has() saw the name only across fields (cannot come from the wire): add it
        out.append((name, new))
    headers.fields = tuple(out)
