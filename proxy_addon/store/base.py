"""The token store interface. The cache and the addon only ever talk to this."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from ..tokens import Token

__all__ = ["Record", "RecordMeta", "StoreError", "TokenStore", "VersionConflict"]


class StoreError(Exception):
    """The store cannot be used (wrong key, corrupt file, ...). The message says what to do."""


class VersionConflict(StoreError):
    """A compare-and-set update found a newer row than the one it was based on."""


@dataclass(frozen=True, slots=True)
class Record:
    credential: str
    token: Token
    version: int  # increases by one with every update of this credential's row
    updated_at: float


@dataclass(frozen=True, slots=True)
class RecordMeta:
    """What is safe to show about a row without decrypting it."""

    credential: str
    expires_at: float | None
    updated_at: float
    version: int


class TokenStore(Protocol):
    def get(self, credential: str) -> Record | None:
        """The current row, or None if there is none."""
        ...

    def lock(self, credential: str, timeout: float = 60.0) -> AbstractContextManager[None]:
        """Hold the per-credential refresh lock, across threads and processes.

        Waits up to `timeout` seconds (raises TimeoutError after). A lock left by a killed
        holder expires on its own.
        """
        ...

    def put(self, credential: str, token: Token, expected_version: int | None) -> Record:
        """Store `token` durably, if the row is still at `expected_version` (None: no row yet).

        Returns the new row; raises VersionConflict when another writer got there first. The
        change is committed before this returns.
        """
        ...

    def delete(self, credential: str) -> bool: ...

    def list(self) -> list[RecordMeta]: ...

    def close(self) -> None: ...
