"""Errors shared by the modules that talk to identity providers."""

from __future__ import annotations

__all__ = ["GrantError"]


class GrantError(Exception):
    """The IdP gave no token. `code` is machine-readable; the message is for people.

    `terminal` says whether trying again with the same input can help (RFC 6749 §5.2's
    invalid_grant cannot; a 503 can).
    """

    def __init__(self, code: str, message: str, *, terminal: bool) -> None:
        super().__init__(message)
        self.code, self.terminal = code, terminal
