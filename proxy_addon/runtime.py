"""Everything a loaded config turns into: the store, the trust bundle, one cache per credential.

Built once per (re)configuration by the addon, and by the command-line tools that need the
store without a proxy.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import certifi

from .cache import CredentialCache
from .config import Config, StoreConfig
from .grants import make_grant
from .store import MemoryStore, TokenStore
from .store.keys import load_keys
from .store.paths import default_db_path, default_key_file
from .store.sqlite import SqliteStore

__all__ = ["Runtime", "open_store", "trust_bundle"]

logger = logging.getLogger(__name__)


@dataclass
class Runtime:
    config: Config
    store: TokenStore
    caches: dict[str, CredentialCache]
    ca_bundle: str | None  # a PEM file of the system CAs plus the config's ca_certs, if any

    @classmethod
    def build(
        cls, config: Config, env: Mapping[str, str] = os.environ, *, check_store: bool = True
    ) -> Runtime:
        ca_bundle = trust_bundle(config.ca_certs)
        store = open_store(config.store, env) if config.credentials else MemoryStore()
        caches = {}
        for name, cred in config.credentials.items():
            if check_store and cred.grant != "static":
                # Fail at start, not on the first request, when the key cannot read a row.
                store.get(name)
            grant = make_grant(cred, ca_bundle or True)
            # Static tokens are in the config already; persisting them would only copy a secret.
            caches[name] = CredentialCache(
                name, grant, None if cred.grant == "static" else store, cred.policy
            )
        return cls(config, store, caches, ca_bundle)

    def close(self, timeout: float | None = None) -> None:
        """Stop refreshing, let a refresh in flight commit its token (bounded), close the store.

        Without the wait, a token the IdP has just returned (and with it a rotated refresh
        token, the only valid one now) would be thrown away with the closed store. `timeout`
        defaults to the longest `drain_timeout` of the credentials.
        """
        caches = list(self.caches.values())
        for cache in caches:
            cache.close()
        if timeout is None:
            timeout = max((c.drain_timeout for c in caches), default=0.0)
        deadline = time.monotonic() + timeout
        for cache in caches:
            if not cache.drain(max(deadline - time.monotonic(), 0.0)):
                logger.warning(
                    "credential %s: a token refresh was still running after %.1fs; "
                    "closing the store anyway, its result is lost", cache.name, timeout,
                )  # fmt: skip
        self.store.close()


def open_store(
    cfg: StoreConfig, env: Mapping[str, str] = os.environ, *, create: bool = True
) -> TokenStore:
    if cfg.backend == "memory":
        return MemoryStore()
    db_path = cfg.path or default_db_path(env)
    key_file = cfg.key_file or default_key_file(env)
    keyring = load_keys(key_file, env, db_path=db_path, create=create)
    return SqliteStore(db_path, keyring, create=create)


def trust_bundle(ca_certs: tuple[Path, ...]) -> str | None:
    """One PEM file with the usual public CAs and the configured private ones.

    Both requests (for the IdP) and mitmproxy (for APIs) take a single CA file, and a private
    CA must be trusted alongside, not instead of, the public ones.
    """
    if not ca_certs:
        return None
    directory = tempfile.mkdtemp(prefix="authproxy-ca-")
    atexit.register(shutil.rmtree, directory, True)
    path = Path(directory) / "ca-bundle.pem"
    parts = [Path(certifi.where()).read_text()]
    parts += [p.read_text() for p in ca_certs]
    path.write_text("\n".join(parts))
    return str(path)
