"""`grant: password`. Legacy (RFC 6749 §4.3; dropped by OAuth 2.1): only for providers that
still need it. Refreshes while it can, else asks with the password again."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import GrantError
from .oauth import OAuthGrant

if TYPE_CHECKING:
    from ..tokens import Token
    from .base import Grant

__all__ = ["PasswordGrant", "sign_in"]


class PasswordGrant(OAuthGrant):
    def obtain(self, previous: Token | None) -> Token:
        if previous is not None and previous.refresh_token:
            try:
                return self.refresh(previous.refresh_token, previous)
            except GrantError as e:
                if not e.terminal:
                    raise
        form = {
            "grant_type": "password",
            "username": self.cfg.username or "",
            "password": self.cfg.password or "",
            **self.scope_param(),
        }
        sent = (previous.access_token, previous.refresh_token) if previous else ()
        return self.call("password token request", form, sent=sent)


def sign_in(
    grant: Grant,
    *,
    no_browser: bool,
    timeout: float,
    out: Callable[[str], None],
    read: Callable[[str], str],
) -> Token:
    """`authproxy login` for a password credential: fetch a token now, with nobody to ask."""
    return grant.obtain(None)
