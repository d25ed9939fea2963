"""The store backends by name: how each reads its config keys, and how it opens.

Adding a backend: one module with a `TokenStore` (it seals rows with `Sealer` and keeps a lease
per row), one `Backend` line in `BACKENDS` below, and one line in the conformance suite
(tests/test_store_conformance.py). Nothing else names a backend: `config.py` asks this table
which keys `store:` may hold, `runtime.open_store` and `authproxy rotate-key` go through it.

Importing this module loads no backend (no database driver, no network client): `open` and
the parsers import theirs when called.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..config import StoreConfig
    from .base import TokenStore

__all__ = ["BACKENDS", "Backend", "OptionReader", "Parsed", "open_backend"]


class OptionReader(Protocol):
    """The part of the typed reader (yamlconf.Reader) a backend's parser uses (one `store:`
    mapping)."""

    def text(self, name: str, default: str | None = None, *, required: bool = False) -> str | None:
        ...

    def number(self, name: str, default: float, *, minimum: float = 0.0) -> float: ...

    def integer(self, name: str, default: int, *, minimum: int, maximum: int) -> int: ...

    def bool(self, name: str, default: bool) -> bool: ...

    def words(self, name: str) -> tuple[str, ...]: ...

    def error(self, name: str, message: str) -> Exception: ...

    def done(self, allowed_also: tuple[str, ...] = ()) -> None: ...


@dataclass(frozen=True, slots=True)
class Parsed:
    """A backend's own config keys: `path` for file stores, `settings` for the rest."""

    path: Path | None = None
    settings: Any = None


@dataclass(frozen=True, slots=True)
class Backend:
    name: str
    # Reads the backend's keys of `store:` (every key but `backend` and `key_file`); relative
    # paths go through the resolver.
    parse: Callable[[OptionReader, Callable[[str], Path]], Parsed]
    # Opens the store, with its keys (AUTHPROXY_KEY or the key file) for a sealed backend.
    # `create=False` (read-only commands) must neither create a store nor generate a key.
    open: Callable[[StoreConfig, Mapping[str, str], bool], TokenStore]
    # Whether rows leave this process (and so are sealed, and `rotate-key` applies).
    sealed: bool = True
    # Whether members on many machines share it: they must then share a mitmproxy CA too.
    fleet: bool = False
    # Where the rows are, for people (the console, rotate-key); never a password.
    describe: Callable[[StoreConfig, Mapping[str, str]], str] = lambda cfg, env: "this process"


def _parse_nothing(s: OptionReader, resolve: Callable[[str], Path]) -> Parsed:
    s.done(allowed_also=("path",))  # accepted (and ignored) as before backends had their keys
    return Parsed()


def _open_memory(cfg: StoreConfig, env: Mapping[str, str], create: bool) -> TokenStore:
    from .memory import MemoryStore

    return MemoryStore()


def _parse_sqlite(s: OptionReader, resolve: Callable[[str], Path]) -> Parsed:
    path = s.text("path")
    return Parsed(path=resolve(path) if path else None)


def _describe_sqlite(cfg: StoreConfig, env: Mapping[str, str]) -> str:
    from .paths import default_db_path

    return str(cfg.path or default_db_path(env))


def _lazy(module: str, name: str) -> Callable[..., Any]:
    """`module.name`, imported when first called: a backend's driver loads only when used."""

    def call(*args: Any) -> Any:
        return getattr(importlib.import_module(f"{__package__}.{module}"), name)(*args)

    return call


BACKENDS: Mapping[str, Backend] = {
    b.name: b
    for b in (
        Backend("sqlite", _parse_sqlite, _lazy("sqlite", "open_sqlite"), describe=_describe_sqlite),
        Backend("memory", _parse_nothing, _open_memory, sealed=False),
        Backend(
            "redis",
            _lazy("redis_config", "parse"),
            _lazy("redis_store", "open_redis"),
            fleet=True,
            describe=_lazy("redis_config", "describe"),
        ),
    )
}


def open_backend(
    cfg: StoreConfig, env: Mapping[str, str] = os.environ, *, create: bool = True
) -> TokenStore:
    return BACKENDS[cfg.backend].open(cfg, env, create)
