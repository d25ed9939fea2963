"""The token a credential holds, and the pure arithmetic of when it is due for refresh."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Token", "fingerprint", "is_usable", "needs_refresh"]


@dataclass(frozen=True, slots=True)
class Token:
    """An OAuth 2 token set. `repr` never shows a secret, so a Token is safe to log by accident."""

    access_token: str = field(repr=False)
    expires_at: float
    obtained_at: float
    token_type: str = "Bearer"
    refresh_token: str | None = field(default=None, repr=False)
    scope: tuple[str, ...] = ()
    # Which configured seed (a refresh token from the config) this token descends from, as a
    # fingerprint: when the config gives a new seed, the stored chain is stale.
    seed_id: str | None = None

    def to_json(self) -> str:
        return json.dumps(
            {
                "access_token": self.access_token,
                "expires_at": self.expires_at,
                "obtained_at": self.obtained_at,
                "token_type": self.token_type,
                "refresh_token": self.refresh_token,
                "scope": list(self.scope),
                "seed_id": self.seed_id,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Token:
        data: dict[str, Any] = json.loads(text)
        return cls(
            access_token=str(data["access_token"]),
            expires_at=float(data["expires_at"]),
            obtained_at=float(data["obtained_at"]),
            token_type=str(data.get("token_type") or "Bearer"),
            refresh_token=data.get("refresh_token"),
            scope=tuple(data.get("scope") or ()),
            seed_id=data.get("seed_id"),
        )


def fingerprint(secret: str) -> str:
    """A short, stable, non-reversible tag for a secret, for logs and redacted headers."""
    return hashlib.sha256(secret.encode()).hexdigest()[:8]


def is_usable(token: Token | None, now: float) -> bool:
    """Still valid at all (may be inside the refresh leeway)."""
    return token is not None and token.expires_at > now


def needs_refresh(token: Token | None, now: float, leeway: float) -> bool:
    """Due for refresh: missing, expired, or expiring within `leeway` seconds.

    The leeway is capped at half the token's lifetime so that short-lived tokens are not
    refreshed on every request.
    """
    if token is None:
        return True
    lifetime = max(token.expires_at - token.obtained_at, 0.0)
    return token.expires_at - now <= min(leeway, lifetime / 2)
