"""`grant: authorization_code` and `grant: device_code`: a person signs in once (`authproxy
login`, whose flows live in `proxy_addon.login`), and the proxy lives on the refresh token from
then on. Both share this grant; they differ only in the sign-in flow the registry names."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .oauth import OAuthGrant

if TYPE_CHECKING:
    from ..tokens import Token

__all__ = ["LoginGrant"]


class LoginGrant(OAuthGrant):
    def obtain(self, previous: Token | None) -> Token:
        if previous is None or not previous.refresh_token:
            raise self.needs_login()
        return self.refresh(previous.refresh_token, previous)
