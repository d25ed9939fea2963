"""Where tokens are kept between requests and across restarts."""

from .base import Record, RecordMeta, StoreError, TokenStore, VersionConflict
from .keys import Keyring, KeySourceError
from .memory import MemoryStore
from .safety import UnsafePathError
from .sqlite import (
    CorruptRowError,
    CorruptStoreError,
    DamagedRowError,
    MissingStoreError,
    SqliteStore,
    StoreBusyError,
    UndecryptableError,
)

__all__ = [
    "CorruptRowError",
    "CorruptStoreError",
    "DamagedRowError",
    "KeySourceError",
    "Keyring",
    "MemoryStore",
    "MissingStoreError",
    "Record",
    "RecordMeta",
    "SqliteStore",
    "StoreBusyError",
    "StoreError",
    "TokenStore",
    "UndecryptableError",
    "UnsafePathError",
    "VersionConflict",
]
