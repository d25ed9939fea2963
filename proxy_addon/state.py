"""The one list of states a credential can be in, and the cache's snapshot of one.

A bottom module: it imports nothing of the project, so any module (the cache, the status views,
the metrics, the CLI) may import it without loading the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["CredentialState", "CredentialStatus"]


class CredentialState(StrEnum):
    """The value is what a person reads (`authproxy tokens`, the status page, its JSON);
    `id` is the same word without spaces, for metrics labels and CSS classes."""

    VALID = "valid"
    EXPIRING = "expiring"
    EXPIRED = "expired"
    NEEDS_LOGIN = "needs login"
    NOT_FETCHED = "not fetched"
    FAILING = "failing"
    EMPTY = "empty"  # the running cache holds no token yet (it has not been asked for one)
    DAMAGED = "damaged"  # the stored row cannot be read (`authproxy tokens` only)

    @property
    def id(self) -> str:
        return self.value.replace(" ", "_")

    @property
    def healthy(self) -> bool:
        """A request that needs this credential gets a token now."""
        return self in (CredentialState.VALID, CredentialState.EXPIRING)

    @classmethod
    def parse(cls, text: str) -> CredentialState | None:
        """The state a label or an id names (`needs login` or `needs_login`); None if none."""
        try:
            return cls(text.replace("_", " "))
        except ValueError:
            return None


@dataclass(frozen=True, slots=True)
class CredentialStatus:
    """What the running proxy's cache knows of one credential."""

    name: str
    state: CredentialState  # VALID | EXPIRING | EMPTY | FAILING | NEEDS_LOGIN
    expires_at: float | None
    last_error: str | None
    refreshes: int
    failures: int
