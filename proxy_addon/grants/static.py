"""`grant: static`: a token written in the config. Never refreshed, never stored."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ..tokens import Token

if TYPE_CHECKING:
    from ..config import CredentialConfig

__all__ = ["StaticGrant"]


class StaticGrant:
    refreshable = False
    persist = False  # the token is in the config already: storing it would only copy a secret
    seed_id: str | None = None

    def __init__(self, cfg: CredentialConfig, verify: str | bool = True) -> None:
        self.name = cfg.name
        self._token = Token(access_token=cfg.token or "", expires_at=math.inf, obtained_at=0.0)

    def obtain(self, previous: Token | None) -> Token:
        return self._token
