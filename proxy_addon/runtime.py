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
from .config import Config, ConfigError, StoreConfig
from .dpop_keys import attach_dpop_key
from .grants import make_grant, spec_for
from .grants.base import KeyFileError
from .pem import pem_bundle
from .store import MemoryStore, TokenStore
from .store.registry import open_backend
from .store.sealer import CorruptRowError, DamagedRowError

__all__ = [
    "Runtime",
    "check_route_files",
    "check_rows",
    "load_grant_keys",
    "open_store",
    "trust_bundle",
]

log = logging.getLogger(__name__)

logger = logging.getLogger(__name__)


@dataclass
class Runtime:
    config: Config
    store: TokenStore
    caches: dict[str, CredentialCache]
    ca_bundle: str | None  # a PEM file of the system CAs plus the config's ca_certs, if any

    @classmethod
    def build(
        cls,
        config: Config,
        env: Mapping[str, str] = os.environ,
        *,
        check_store: bool = True,
        load_keys: bool = True,
    ) -> Runtime:
        """`load_keys`: read and check every key, certificate and service-account file of the
        credentials and routes now (a bad one is a ConfigError before the store is touched);
        without it, each grant reads its own at first use (a command about one credential
        must not fail for another's file)."""
        ca_bundle = trust_bundle(config.ca_certs, config.source)
        grants = {name: make_grant(cred, ca_bundle or True)
                  for name, cred in config.credentials.items()}  # fmt: skip
        if load_keys:
            for name, grant in grants.items():
                load_grant_keys(config, name, grant)
            check_route_files(config)
        store = open_store(config.store, env) if config.credentials else MemoryStore()
        try:
            if check_store:
                check_rows(config, store)
        except BaseException:
            store.close()
            raise
        caches = {}
        for name, cred in config.credentials.items():
            grant = grants[name]
            attach_dpop_key(grant, cred, store)  # DPoP credentials: their key, from the store
            # A grant that does not persist (static) has its token in the config already.
            caches[name] = CredentialCache(
                name, grant, store if grant.persist else None, cred.policy,
                store_key=cred.store_key,
                # Only a grant without shared secret state may refresh during a store outage.
                refresh_without_store=cred.grant == "client_credentials",
            )  # fmt: skip
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


def load_grant_keys(config: Config, name: str, grant: object) -> None:
    """Have a credential's grant read and check its key, certificate and service-account files
    (once: it keeps what it loaded for every request), or raise the ConfigError that names
    the config file, the credential's key, the file and what is wrong with it. A grant that
    reads no files has no `load_keys`."""
    load = getattr(grant, "load_keys", None)
    if load is None:
        return
    try:
        load()
    except KeyFileError as e:
        raise ConfigError(config.source, f"credentials.{name}.{e.key}", e.detail) from None


def check_route_files(config: Config) -> None:
    """The ConfigError naming the route, its key and the file, for a route whose client
    certificate or key cannot be used (mutual TLS to the API)."""
    from .mtls import check_route_certs

    try:
        check_route_certs(config.routes)
    except KeyFileError as e:
        raise ConfigError(config.source, e.key, e.detail) from None


def open_store(
    cfg: StoreConfig, env: Mapping[str, str] = os.environ, *, create: bool = True
) -> TokenStore:
    """The configured backend's store (store/registry.py)."""
    return open_backend(cfg, env, create=create)


def check_rows(config: Config, store: TokenStore) -> None:
    """At start: refuse a key that reads none of the rows; report a damaged row and go on.

    A damaged row (or one copied from another credential) stops only its credential, which
    answers 502 with the reason until `authproxy logout NAME` discards the row. Rows written
    under the bare name by versions before credential identities are never served (they
    cannot be tied to an IdP and client); a hint says so once.
    """
    stored = set(store.keys())
    for name, cred in config.credentials.items():
        if not spec_for(cred.grant).persist:  # static: the token is in the config
            continue
        try:
            store.get(cred.store_key)
        except (DamagedRowError, CorruptRowError) as e:
            # A warning, not an error: mitmproxy's ErrorCheck ends the start on any error logged,
            # and the other credentials are to start.
            log.warning("credential %s: %s", name, e)
        if name in stored and cred.store_key not in stored:
            log.warning(
                "credential %s: the token store holds a token that an older authproxy stored "
                "under the bare name %r; it is not used, since it cannot be tied to this "
                "config's IdP and client, and a new token is obtained instead (run `authproxy "
                "login %s` if it needs a sign-in). `authproxy logout %s` removes the old row",
                name, name, name, name,
            )  # fmt: skip


def trust_bundle(ca_certs: tuple[Path, ...], source: str = "config") -> str | None:
    """One PEM file with the usual public CAs and the configured private ones.

    Both requests (for the IdP) and mitmproxy (for APIs) take a single CA file, and a private
    CA must be trusted alongside, not instead of, the public ones. Raises ConfigError (one
    line, no traceback) when it cannot be read or written: a full disk, a file-size limit.
    """
    if not ca_certs:
        return None
    try:
        parts = [("public CAs (certifi)", Path(certifi.where()).read_bytes())]
        for p in ca_certs:
            parts.append((str(p), p.read_bytes()))
    except OSError as e:
        raise ConfigError(source, "ca_certs", f"cannot read {e.filename}: {e.strerror}") from None
    directory = None
    try:
        directory = tempfile.mkdtemp(prefix="authproxy-ca-")
        atexit.register(shutil.rmtree, directory, True)
        path = Path(directory) / "ca-bundle.pem"
        path.write_bytes(pem_bundle(parts))
    except OSError as e:
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)
        raise ConfigError(
            source,
            "ca_certs",
            f"cannot write the combined CA bundle to {tempfile.gettempdir()}: {e.strerror} "
            "(free some disk space there, raise the file-size limit, or set TMPDIR to another "
            "directory)",
        ) from None
    return str(path)
