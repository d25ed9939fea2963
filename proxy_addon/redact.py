"""Turning secrets into fingerprints before a flow is shown, saved or logged."""

from __future__ import annotations

from .tokens import Token, fingerprint

__all__ = ["redacted_authorization"]


def redacted_authorization(credential: str, token: Token) -> str:
    """What the Authorization header says once the request has gone upstream.

    The fingerprint lets a person tell tokens apart (did the retry use a new one?) without
    revealing anything usable.
    """
    return f"{token.token_type} <redacted:{credential}:{fingerprint(token.access_token)[:4]}>"
