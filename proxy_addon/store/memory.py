"""A store that lives and dies with the process: for tests and `store: {backend: memory}`."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from ..tokens import Token
from .base import Record, RecordMeta, VersionConflict


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

    def list(self) -> list[RecordMeta]:
        with self._guard:
            return [
                RecordMeta(r.credential, r.token.expires_at, r.updated_at, r.version)
                for r in sorted(self._rows.values(), key=lambda r: r.credential)
            ]

    def close(self) -> None:
        pass
