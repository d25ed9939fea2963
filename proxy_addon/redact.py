"""Turning secrets into fingerprints before a flow is shown, saved or logged."""

from __future__ import annotations

from mitmproxy import http

from .tokens import Token, fingerprint

__all__ = ["redacted_authorization", "redacted_token", "scrub_echoes"]


def redacted_authorization(credential: str, token: Token) -> str:
    """What the Authorization header says once the request has gone upstream.

    The fingerprint lets a person tell tokens apart (did the retry use a new one?) without
    revealing anything usable.
    """
    return f"{token.token_type} {redacted_token(credential, token)}"


def redacted_token(credential: str, token: Token) -> str:
    return f"<redacted:{credential}:{fingerprint(token.access_token)[:4]}>"


def scrub_echoes(response: http.Response, token: Token, replacement: str) -> None:
    """Remove the token from an answer that echoes it (debug endpoints, reflective error
    pages): neither the client nor a flow file gets it back. Streamed bodies are gone already."""
    secret = token.access_token
    for name, value in response.headers.items(multi=True):
        if secret in value:
            response.headers.set_all(
                name, [v.replace(secret, replacement) for v in response.headers.get_all(name)]
            )
    if response.stream or response.raw_content is None:
        return
    body = response.get_content(strict=False) or b""
    if secret.encode() in body:
        response.set_content(body.replace(secret.encode(), replacement.encode()))
