"""Where tokens are kept between requests and across restarts.

- `base`: the `TokenStore` contract and its error types (imports nothing else of ours);
- `sealer`: the encryption every backend uses (rows bound to the credential identity);
- `keys`: where the keys come from (AUTHPROXY_KEY, a key file); `lease`: the refresh lease;
- `registry`: the backends by name (`memory`, `sqlite`, ...), how each is configured and opened;
- one module per backend.

Anything may import this package; its names load their module on first use (PEP 562), so
importing it (or `registry`) loads no database driver or network client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .base import (
        MissingStoreError,
        Record,
        StoreError,
        StoreUnavailableError,
        TokenStore,
        VersionConflict,
    )
    from .keys import Keyring, KeySourceError
    from .memory import MemoryStore
    from .safety import UnsafePathError
    from .sealer import CorruptRowError, DamagedRowError, Sealer, UndecryptableError
    from .sqlite import CorruptStoreError, SqliteStore, StoreBusyError

_WHERE = {
    "CorruptRowError": "sealer",
    "CorruptStoreError": "sqlite",
    "DamagedRowError": "sealer",
    "KeySourceError": "keys",
    "Keyring": "keys",
    "MemoryStore": "memory",
    "MissingStoreError": "base",
    "Record": "base",
    "Sealer": "sealer",
    "SqliteStore": "sqlite",
    "StoreBusyError": "sqlite",
    "StoreError": "base",
    "StoreUnavailableError": "base",
    "TokenStore": "base",
    "UndecryptableError": "sealer",
    "UnsafePathError": "safety",
    "VersionConflict": "base",
}

__all__ = [
    "CorruptRowError",
    "CorruptStoreError",
    "DamagedRowError",
    "KeySourceError",
    "Keyring",
    "MemoryStore",
    "MissingStoreError",
    "Record",
    "Sealer",
    "SqliteStore",
    "StoreBusyError",
    "StoreError",
    "StoreUnavailableError",
    "TokenStore",
    "UndecryptableError",
    "UnsafePathError",
    "VersionConflict",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
