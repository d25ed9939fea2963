"""Turning secrets into fingerprints before a flow is shown, saved or logged, and taking a
token out of an answer that echoes it (debug endpoints, reflective error pages)."""

from __future__ import annotations

from mitmproxy import http
from mitmproxy.net import encoding

from .tokens import Token, fingerprint

__all__ = [
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


def scrub_echoes(response: http.Response, token: Token, replacement: str) -> bool:
    """Remove the token from a whole answer: head, trailers and body. False when the body is
    encoded in a way we cannot read, so it cannot be checked (the caller withholds it)."""
    scrub_head(response, token.access_token, replacement)
    return scrub_body(response, token.access_token, replacement)


def scrub_head(response: http.Response, secret: str, replacement: str) -> None:
    """Headers (every copy of each), the reason phrase and trailers."""
    for fields in (response.headers, response.trailers):
        if fields is None:
            continue
        for name in {n for n, v in fields.items(multi=True) if secret in n or secret in v}:
            values = fields.get_all(name)
            del fields[name]
            fields.set_all(name.replace(secret, replacement),
                           [v.replace(secret, replacement) for v in values])  # fmt: skip
    if secret in response.reason:
        response.reason = response.reason.replace(secret, replacement)


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


def scrub_body(response: http.Response, secret: str, replacement: str) -> bool:
    """Replace `secret` in the body. Cheap when it cannot be there: an unencoded body is one C
    search; only an encoded body is decoded. Streamed bodies are handled by StreamScrubber.
    Returns False when the body cannot be decoded, so it cannot be checked."""
    raw = response.raw_content
    if response.stream or not raw:
        return True
    needle = secret.encode()
    ce = response.headers.get("content-encoding", "")
    if not ce.strip(" ,").lower().replace("identity", "").strip(" ,"):
        if needle in raw:
            response.headers.pop("content-encoding", None)
            response.content = raw.replace(needle, replacement.encode())
        return True
    body = decoded_body(raw, ce)
    if body is None:
        return False
    if needle in body:
        response.headers.pop("content-encoding", None)
        response.content = body.replace(needle, replacement.encode())
    return True


def scrub_message(content: bytes, secret: str, replacement: str) -> bytes:
    """A whole WebSocket message."""
    needle = secret.encode()
    return content.replace(needle, replacement.encode()) if needle in content else content


class StreamScrubber:
    """A `response.stream` callable that replaces `secret` in an unencoded streamed body, even
    when it is split across chunks: it holds back the last len(secret)-1 bytes of each chunk
    until the next one arrives. The replacement has the secret's length, so a Content-Length
    stays true."""

    def __init__(self, secret: str, replacement: str) -> None:
        self._needle = secret.encode()
        mark = replacement.encode()[: len(self._needle)]
        self._mark = mark + b"*" * (len(self._needle) - len(mark))
        self._tail = b""

    def __call__(self, chunk: bytes) -> bytes:
        if not chunk:  # end of the body: let go of what was held back
            out, self._tail = self._tail, b""
            return out
        data = (self._tail + chunk).replace(self._needle, self._mark)
        keep = len(self._needle) - 1
        self._tail = data[-keep:] if keep else b""
        return data[: len(data) - len(self._tail)]
