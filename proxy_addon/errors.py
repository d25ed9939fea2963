"""Errors shared by the modules that talk to identity providers."""

from __future__ import annotations

__all__ = ["GrantError"]


class GrantError(Exception):
    """The IdP gave no token. `code` is machine-readable; the message is for people.

    `terminal` says whether trying again with the same input can help (RFC 6749 §5.2's
    invalid_grant cannot; a 503 can). `retry_after` is the IdP's own `Retry-After` in seconds,
    when it sent one. `outcome_unknown` says the request may have reached the IdP and been acted
    on (a timeout after sending): a rotating refresh token may already be spent, so the same
    request must not be sent again.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        terminal: bool,
        retry_after: float | None = None,
        outcome_unknown: bool = False,
    ) -> None:
        super().__init__(message)
        self.code, self.terminal = code, terminal
        self.retry_after, self.outcome_unknown = retry_after, outcome_unknown
