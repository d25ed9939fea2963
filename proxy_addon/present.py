"""How a route hands its token to the API: `present:` on a route.

- `bearer` (the default): `Authorization: <token_type> <token>`.
- `{header: X-Api-Key, value: "{token}"}`: any header, with a value template (`token {token}`
  for GitHub's classic form; `{token_type}` is there too).
- `{basic: x-access-token}`: HTTP Basic with that fixed user and the token as password (git
  over HTTPS to GitHub).
- `{query: access_token}`: a query parameter, for the APIs that still want one.

`presented` encodes a token as a route presents it, once per token; `apply` puts it in a
request, `redact` replaces it by its redacted mark once the request has gone upstream (so flow
files, the web UI and logs never hold it); the audit log writes paths without query values.
Pure: plain functions over a mitmproxy request.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from .headerscan import has, put

if TYPE_CHECKING:
    from mitmproxy import http

    from .tokens import Token

__all__ = [
    "BEARER",
    "REDACTED_PROOF",
    "Presentation",
    "Presented",
    "apply",
    "carried",
    "parse_present",
    "presented",
    "redact",
    "strip",
]

_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$")  # an RFC 9110 token
# Headers whose meaning to the proxy or to HTTP framing a token must never take over.
_FORBIDDEN_HEADERS = frozenset({
    "host", "proxy-authorization", "proxy-connection", "connection", "content-length",
    "transfer-encoding", "te", "upgrade", "keep-alive", "trailer", "cookie", "set-cookie",
    "dpop",  # the proof's own header: a token there would be overwritten by the proof
})  # fmt: skip
_QUERY_NAME = re.compile(r"^[A-Za-z0-9._~-]{1,64}$")


@dataclass(frozen=True, slots=True)
class Presentation:
    kind: Literal["header", "basic", "query"] = "header"
    name: str = "authorization"  # header (lower case) or query parameter
    template: str = "{token_type} {token}"  # the header's value
    user: str = ""  # Basic's user name

    def describe(self) -> str:
        if self.kind == "basic":
            return f"basic user {self.user}"
        return f"{self.kind} {self.name}"


BEARER = Presentation()


def parse_present(raw: Any) -> Presentation:
    """A route's `present:` value; ValueError says what is wrong (the caller adds the key)."""
    if raw is None or raw == "bearer":
        return BEARER
    if not isinstance(raw, dict):
        raise ValueError(
            "expected bearer, or a mapping with one of header (and value), basic or query"
        )
    kinds = [k for k in ("header", "basic", "query") if k in raw]
    unknown = sorted(set(raw) - {"header", "basic", "query", "value"})
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} (known: header, value, basic, query)")
    if len(kinds) != 1:
        raise ValueError("give exactly one of header, basic or query")
    kind, name = kinds[0], raw[kinds[0]]
    if not isinstance(name, str) or not name:
        raise ValueError(f"{kind}: expected a non-empty string")
    if "value" in raw and kind != "header":
        raise ValueError("value goes with header only")
    if kind == "header":
        lowered = name.lower()
        if not _HEADER_NAME.match(name) or lowered in _FORBIDDEN_HEADERS:
            raise ValueError(f"header: {name!r} cannot carry a token")
        template = raw.get(
            "value", "{token_type} {token}" if lowered == "authorization" else "{token}"
        )
        if not isinstance(template, str) or "{token}" not in template:
            raise ValueError("value: must contain {token}")
        if any(c in template for c in "\r\n\0"):
            raise ValueError("value: no line breaks")
        return Presentation("header", lowered, template)
    if kind == "basic":
        if ":" in name or any(c in name for c in "\r\n\0"):
            raise ValueError("basic: a user name without ':' or line breaks")
        return Presentation("basic", "authorization", user=name)
    if not _QUERY_NAME.match(name):
        raise ValueError(f"query: {name!r} is not a plain parameter name")
    return Presentation("query", name)


def _value(p: Presentation, token_type: str, token: str) -> str:
    if p.kind == "basic":
        return "Basic " + base64.b64encode(f"{p.user}:{token}".encode()).decode()
    # Replaced, not str.format: a template is config, and braces elsewhere stay as they are.
    return p.template.replace("{token_type}", token_type).replace("{token}", token)


@dataclass(frozen=True, slots=True)
class Presented:
    """A token as one route presents it, encoded once per token instead of once per request:
    the header value that carries it and the value that replaces it once the request is gone."""

    token: Token
    how: Presentation
    mark: str  # the redacted token: what stands for it wherever it must not be seen
    header: bytes  # the header carrying it, lower case; b"" for a query parameter
    value: bytes  # that header's value
    redacted: bytes  # the same value with `mark` for the token


def presented(token: Token, p: Presentation, mark: str) -> Presented:
    if p.kind == "query":
        return Presented(token, p, mark, b"", b"", b"")
    redacted = f"Basic {mark}" if p.kind == "basic" else _value(p, token.token_type, mark)
    return Presented(token, p, mark, p.name.encode(), _bytes(_value(p, token.token_type,
                     token.access_token)), _bytes(redacted))  # fmt: skip


def _bytes(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")  # as mitmproxy encodes a header value


def apply(req: http.Request, pr: Presented) -> None:
    """Put the token into `req` as its route says (replacing what the client sent under that
    name)."""
    if pr.how.kind == "query":
        req.query[pr.how.name] = pr.token.access_token
    else:
        put(req.headers, pr.header, pr.value)


REDACTED_PROOF = "<redacted:dpop-proof>"


def redact(req: http.Request, pr: Presented) -> None:
    """Replace the token in `req` by its mark (the redacted token, never usable), and a DPoP
    proof by a placeholder: a proof is bound to this request, but redacted like a token."""
    if has(req.headers, b"dpop"):
        put(req.headers, b"dpop", REDACTED_PROOF)
    if pr.how.kind == "query":
        if pr.how.name in req.query:
            req.query[pr.how.name] = pr.mark
    else:
        put(req.headers, pr.header, pr.redacted)


def carried(req: http.Request, p: Presentation) -> bool:
    """Does the client's request already carry a credential where `p` would put the token?
    (A route's `existing_authorization` then says keep, reject or replace.)"""
    if p.kind == "query":
        return p.name in req.query
    return has(req.headers, p.name.encode())


def strip(req: http.Request, p: Presentation) -> None:
    """Take whatever carried a token out of `req` (a copy about to be sent again gets the
    current token put back in; if it cannot, it must not carry the old one)."""
    req.headers.pop("dpop", None)
    req.headers.pop("authorization", None)
    if p.kind == "query":
        req.query.pop(p.name, None)
    else:
        req.headers.pop(p.name, None)
