"""The token store interface. The cache and the addon only ever talk to this."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ..tokens import Token

if TYPE_CHECKING:
    from .sealer import Sealer

__all__ = [
    "MissingStoreError",
    "Record",
    "StoreError",
    "StoreUnavailableError",
    "TokenStore",
    "VersionConflict",
]


class StoreError(Exception):
    """The store cannot be used (wrong key, corrupt file, ...). The message says what to do."""


class MissingStoreError(StoreError):
    """There is no store yet and the caller asked not to create one."""


class StoreUnavailableError(StoreError):
    """The store cannot be reached right now (a network store down or refusing us); it may
    come back by itself, unlike a wrong key or a damaged file."""


class VersionConflict(StoreError):
    """A compare-and-set update found a newer row than the one it was based on."""


@dataclass(frozen=True, slots=True)
class Record:
    credential: str
    token: Token
    version: int  # increases by one with every update of this credential's row
    updated_at: float


class TokenStore(Protocol):
    """One row per credential identity (`name#identity`), under a per-row lock.

    Every backend must pass tests/test_store_conformance.py. A sealed backend (one that keeps
    rows outside this process) stores only what `Sealer.seal` returns for a token, never the
    token itself, and opens rows with the same Sealer.
    """

    def get(self, credential: str) -> Record | None:
        """The current row, or None if there is none."""
        ...

    def lock(self, credential: str, timeout: float = 60.0) -> AbstractContextManager[None]:
        """Hold the per-credential refresh lock, across threads and processes.

        The contract every backend keeps:
        - One holder per credential at a time, among all threads and processes using the store;
          other credentials and readers (`get`) are never blocked by it.
        - The lock is a lease that stays held for as long as the block runs, however long the
          refresh takes (backends renew it while held); it is released on exit, and a release
          only ever drops the caller's own lease.
        - A holder that dies loses it: at once when it is seen dead (same host, its process is
          gone), else when its lease runs out unrenewed (a backend's TTL, seconds to tens of
          seconds). Wall-clock steps neither extend nor cut a lease short where a backend can
          measure it with a clock that does not step.
        - Waits up to `timeout` seconds, then raises TimeoutError, promptly (within about a
          tenth of a second more); `timeout=0` tries once. Callers on a request path pass a
          short timeout and answer the client themselves rather than queue.
        - A store that cannot be reached raises StoreUnavailableError (any other failure of
          the store, StoreError) instead of waiting: the caller decides whether it may go on
          without the lock (see CredentialCache._without_store).
        - Only a holder stalled for longer than the lease (a stopped process) can lose it while
          still inside the block, so writes made under the lock still use `put`'s
          compare-and-set.
        """
        ...

    def put(self, credential: str, token: Token, expected_version: int | None) -> Record:
        """Store `token` durably, if the row is still at `expected_version` (None: no row yet).

        Returns the new row; raises VersionConflict when another writer got there first. The
        change is committed before this returns.
        """
        ...

    def delete(self, credential: str) -> bool:
        """Remove the row; False if there was none."""
        ...

    def keys(self) -> list[str]:
        """Every row key, sorted (no decryption)."""
        ...

    def reseal(self, sealer: Sealer) -> int:
        """Re-encrypt every row under `sealer`'s newest key and use `sealer` from now on;
        returns how many rows. Versions are unchanged (the tokens are), so a refresher's
        compare-and-set based on the current version still succeeds. A backend that keeps no
        ciphertext returns its row count."""
        ...

    def close(self) -> None: ...
