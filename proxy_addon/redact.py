"""Turning secrets into fingerprints before a flow is shown, saved or logged, and taking a
token out of an answer that echoes it (debug endpoints, reflective error pages)."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence

from mitmproxy import http
from mitmproxy.net import encoding

from .headerscan import header
from .tokens import Token, fingerprint

__all__ = [
    "Pairs",
    "StreamScrubber",
    "redacted_authorization",
    "redacted_token",
    "scrub_body",
    "scrub_echoes",
    "scrub_head",
    "scrub_message",
]

# Content-Encoding names we can undo, by the name mitmproxy's decoder knows them.
_DECODERS = {"gzip": "gzip", "x-gzip": "gzip", "deflate": "deflate", "br": "br", "zstd": "zstd"}


def redacted_authorization(credential: str, token: Token) -> str:
    """What the Authorization header says once the request has gone upstream.

    The fingerprint lets a person tell tokens apart (did the retry use a new one?) without
    revealing anything usable.
    """
    return f"{token.token_type} {redacted_token(credential, token)}"


def redacted_token(credential: str, token: Token) -> str:
    return f"<redacted:{credential}:{fingerprint(token.access_token)[:4]}>"


Pairs = tuple[tuple[str, str], ...]  # (secret, what replaces it): more than a token to scrub


def scrub_echoes(
    response: http.Response, token: Token, replacement: str, *, also: Pairs = ()
) -> bool:
    """Remove the token (and `also`: a DPoP proof) from a whole answer: head, trailers and
    body. False when the body is encoded in a way we cannot read, so it cannot be checked (the
    caller withholds it)."""
    scrub_head(response, token.access_token, replacement, also=also)
    return scrub_body(response, token.access_token, replacement, also=also)


def _needles(secret: str, replacement: str, also: Pairs) -> tuple[tuple[bytes, bytes], ...]:
    token = _token_needle(secret, replacement)
    if not also:
        return token
    # A DPoP proof is new with every request: encoded here, never cached.
    return token + tuple((s.encode(), r.encode()) for s, r in also if s)


@functools.lru_cache(maxsize=16)  # a token is scrubbed from every answer while it lives
def _token_needle(secret: str, replacement: str) -> tuple[tuple[bytes, bytes], ...]:
    return ((secret.encode(), replacement.encode()),) if secret else ()


def scrub_head(
    response: http.Response, secret: str, replacement: str, *, also: Pairs = ()
) -> None:
    """Headers (every copy of each), the reason phrase and trailers."""
    needles = _needles(secret, replacement, also)
    for fields in (response.headers, response.trailers):
        if fields is None:
            continue
        # Nearly always absent: one C search over the raw fields, nothing decoded, before the
        # slow path. (A match across the NUL separators could only send it down the slow path.)
        if not _found(needles, b"\0".join(itertools.chain.from_iterable(fields.fields))):
            continue
        for old, new in ((secret, replacement), *also):
            if not old:
                continue
            for name in {n for n, v in fields.items(multi=True) if old in n or old in v}:
                values = fields.get_all(name)
                del fields[name]
                fields.set_all(name.replace(old, new),
                               [v.replace(old, new) for v in values])  # fmt: skip
    reason = response.data.reason  # bytes; the str form is decoded as Latin-1
    if _found(needles, reason) or not reason.isascii():
        for old, new in ((secret, replacement), *also):
            if old and old in response.reason:
                response.reason = response.reason.replace(old, new)


def _found(needles: tuple[tuple[bytes, bytes], ...], data: bytes) -> bool:
    # A loop, not any() over a generator: this runs twice per answer (issue 11).
    for needle, _ in needles:  # noqa: SIM110
        if needle in data:
            return True
    return False


def decoded_body(raw: bytes, content_encoding: str) -> bytes | None:
    """The body with every listed Content-Encoding undone (`x-gzip`, `gzip, gzip`,
    `identity, gzip` included); None if one is unknown or the data does not decode."""
    data = raw
    for name in reversed([e.strip().lower() for e in content_encoding.split(",")]):
        if name in ("", "identity"):
            continue
        decoder = _DECODERS.get(name)
        if decoder is None:
            return None
        try:
            data = encoding.decode(data, decoder)  # type: ignore[assignment]
        except ValueError:
            return None
    return data


def scrub_body(
    response: http.Response, secret: str, replacement: str, *, also: Pairs = ()
) -> bool:
    """Replace `secret` (and `also`) in the body. Cheap when it cannot be there: an unencoded
    body is one C search per secret; only an encoded body is decoded. Streamed bodies are
    handled by StreamScrubber. Returns False when the body cannot be decoded, so it cannot be
    checked."""
    raw = response.raw_content
    if response.stream or not raw:
        return True
    needles = _needles(secret, replacement, also)
    ce = header(response.headers, b"content-encoding") or ""
    if not ce.strip(" ,").lower().replace("identity", "").strip(" ,"):
        if _found(needles, raw):
            response.headers.pop("content-encoding", None)
            response.content = _replace_all(raw, needles)
        return True
    body = decoded_body(raw, ce)
    if body is None:
        return False
    if _found(needles, body):
        response.headers.pop("content-encoding", None)
        response.content = _replace_all(body, needles)
    return True


def _replace_all(data: bytes, needles: Sequence[tuple[bytes, bytes]]) -> bytes:
    for needle, mark in needles:
        data = data.replace(needle, mark)
    return data


def scrub_message(content: bytes, secret: str, replacement: str, *, also: Pairs = ()) -> bytes:
    """A whole WebSocket message."""
    needles = _needles(secret, replacement, also)
    if _found(needles, content):
        return _replace_all(content, needles)
    return content


class StreamScrubber:
    """A `response.stream` callable that replaces `secret` (and `also`) in an unencoded
    streamed body, even when it is split across chunks: it holds back the last bytes of each
    chunk (the longest secret's length less one) until the next one arrives. A replacement has
    its secret's length, so a Content-Length stays true."""

    def __init__(self, secret: str, replacement: str, *, also: Pairs = ()) -> None:
        self._needles = []
        for needle, mark in _needles(secret, replacement, also):
            mark = mark[: len(needle)]
            self._needles.append((needle, mark + b"*" * (len(needle) - len(mark))))
        self._keep = max((len(n) for n, _ in self._needles), default=1) - 1
        self._tail = b""

    def __call__(self, chunk: bytes) -> bytes:
        if not chunk:  # end of the body: let go of what was held back
            out, self._tail = self._tail, b""
            return out
        data = _replace_all(self._tail + chunk, self._needles)
        keep = self._keep
        self._tail = data[-keep:] if keep else b""
        return data[: len(data) - len(self._tail)]
