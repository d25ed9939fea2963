"""`grant: refresh_token` (RFC 6749 §6): a refresh token from the config seeds the store."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import hints
from ..errors import GrantError
from .oauth import OAuthGrant

if TYPE_CHECKING:
    from ..config import CredentialConfig
    from ..tokens import Token

__all__ = ["RefreshTokenGrant"]


class RefreshTokenGrant(OAuthGrant):
    def __init__(self, cfg: CredentialConfig, verify: str | bool) -> None:
        super().__init__(cfg, verify)
        self.seed_id = cfg.seed_id

    def obtain(self, previous: Token | None) -> Token:
        # A refresh token stored from an older seed is stale once the config names a new one.
        stored = previous.refresh_token if previous and previous.seed_id == self.seed_id else None
        refresh_token = stored or self.cfg.refresh_token
        if not refresh_token:
            raise GrantError(
                "needs_login",
                f"credential {self.name!r} has no refresh token: set refresh_token in its config "
                f"or run `{hints.login(self.name)}`",
                terminal=True,
            )
        return self.refresh(refresh_token, previous)
