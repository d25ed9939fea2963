"""Each DPoP credential's key pair, kept in the token store: encrypted at rest like its
tokens, bound to the credential's identity (the row is `<store_key>#dpop`, so a credential
whose IdP or client changes gets a new key), surviving restarts, and shared by every proxy
that shares the store (made once, under the row's lock)."""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING

from . import hints
from .dpop import DpopKey
from .tokens import Token

if TYPE_CHECKING:
    from .config import CredentialConfig
    from .store.base import TokenStore

__all__ = ["KEY_ROW_SUFFIX", "attach_dpop_key", "dpop_key_for"]

logger = logging.getLogger(__name__)

KEY_ROW_SUFFIX = "#dpop"
KEY_TYPE = "DPoP-key"  # the token_type of the row: it holds a key, never sent anywhere


def dpop_key_for(store: TokenStore, cfg: CredentialConfig, timeout: float = 30.0) -> DpopKey:
    """The credential's DPoP key: the stored one, or a new one stored now."""
    row = cfg.store_key + KEY_ROW_SUFFIX
    record = store.get(row)
    if record is None:
        with store.lock(row, timeout=timeout):
            record = store.get(row)  # another process may have made it meanwhile
            if record is None:
                key = DpopKey.generate()
                stored = Token(
                    access_token=key.to_pem().decode(),
                    expires_at=math.inf,
                    obtained_at=time.time(),
                    token_type=KEY_TYPE,
                )
                store.put(row, stored, None)
                _warn_if_orphaned(store, cfg, key)
                return key
    return DpopKey.from_pem(record.token.access_token.encode())


def attach_dpop_key(grant: object, cfg: CredentialConfig, store: TokenStore) -> None:
    """Give a DPoP credential's grant its key (a grant without DPoP support is left alone)."""
    inner = getattr(grant, "wrapped", grant)
    if cfg.dpop and hasattr(inner, "dpop_key"):
        inner.dpop_key = dpop_key_for(store, cfg)


def _warn_if_orphaned(store: TokenStore, cfg: CredentialConfig, key: DpopKey) -> None:
    """A new key beside a stored DPoP token: the key those tokens are bound to is gone (a row
    deleted, a store restored in part), so the IdP and the APIs will refuse them."""
    try:
        record = store.get(cfg.store_key)
    except Exception:  # a damaged row is reported at start by runtime.check_rows
        return
    if record is not None and record.token.token_type.lower() == "dpop":
        logger.warning(
            "credential %s: the token store held a DPoP-bound token but not its DPoP key; a new "
            "key (thumbprint %s...) was made, and the tokens bound to the lost one will be "
            "refused: if the refresh fails, sign in again (`%s`)",
            cfg.name, key.thumbprint[:12], hints.login(cfg.name),
        )  # fmt: skip
