"""A store that lives and dies with the process: for tests and `store: {backend: memory}`."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ..tokens import Token
from .base import Record, VersionConflict

if TYPE_CHECKING:
    from .sealer import Sealer


class MemoryStore:
    def __init__(self) -> None:
        self._rows: dict[str, Record] = {}
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    def get(self, credential: str) -> Record | None:
        with self._guard:
            return self._rows.get(credential)

    @contextmanager
    def lock(self, credential: str, timeout: float = 60.0) -> Iterator[None]:
        # One process: a holder cannot die without leaving the block, so a plain lock is the
        # whole lease. threading refuses negative and huge timeouts; the contract takes both.
        with self._guard:
            lk = self._locks.setdefault(credential, threading.Lock())
        if not lk.acquire(timeout=min(max(timeout, 0.0), threading.TIMEOUT_MAX)):
            raise TimeoutError(f"timed out waiting for the refresh lock of {credential!r}")
        try:
            yield
        finally:
            lk.release()

    def put(self, credential: str, token: Token, expected_version: int | None) -> Record:
        with self._guard:
            current = self._rows.get(credential)
            if (current.version if current else None) != expected_version:
                raise VersionConflict(f"{credential!r} was updated by another writer")
            rec = Record(credential, token, (current.version if current else 0) + 1, time.time())
            self._rows[credential] = rec
            return rec

    def delete(self, credential: str) -> bool:
        with self._guard:
            return self._rows.pop(credential, None) is not None

    def keys(self) -> list[str]:
        with self._guard:
            return sorted(self._rows)

    def reseal(self, sealer: Sealer) -> int:
        # Rows never leave this process, so nothing is sealed: nothing to re-encrypt.
        with self._guard:
            return len(self._rows)

    def close(self) -> None:
        pass
