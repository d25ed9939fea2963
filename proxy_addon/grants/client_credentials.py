"""`grant: client_credentials` (RFC 6749 §4.4): the client's own token, asked for anew."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .oauth import OAuthGrant

if TYPE_CHECKING:
    from ..tokens import Token

__all__ = ["ClientCredentialsGrant"]


class ClientCredentialsGrant(OAuthGrant):
    def obtain(self, previous: Token | None) -> Token:
        form = {"grant_type": "client_credentials", **self.scope_param()}
        sent = (previous.access_token,) if previous else ()
        return self.call("client_credentials token request", form, sent=sent)
