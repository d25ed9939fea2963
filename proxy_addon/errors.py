"""The errors shared across the project: why the IdP gave no token (`GrantError`) and why a
request gets none (`TokenUnavailable`).

A bottom module: it imports nothing of the project, so the replies, the cache, the grants and the
CLI can all share these types without importing each other.
"""

from __future__ import annotations

__all__ = ["GrantError", "TokenUnavailable"]


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


class TokenUnavailable(Exception):
    """No valid token can be had for a credential right now. `code` is machine-readable
    (`needs_login`, `invalid_grant`, `refresh_in_progress`, ...); `retry_after` is in seconds."""

    def __init__(
        self, credential: str, code: str, message: str, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.credential, self.code, self.retry_after = credential, code, retry_after
