"""Sealing rows: what every backend stores instead of a token, and reading it back.

A sealed row is a Fernet ciphertext (AES-128-CBC + HMAC-SHA256) of an envelope naming its row
key (the credential identity `name#identity`, see CredentialConfig.store_key) beside the token.
A row copied onto another credential's key is detected when opened, instead of silently
sending one credential's token for another. Backends keep only this ciphertext (plus metadata
safe to show), so neither the database, nor Redis, its dumps or replicas see a token.

The error texts live here too, so that every backend tells the user the same thing; a backend
names itself through `where` ("/home/u/.local/state/authproxy/tokens.db",
"redis://cache:6379/0").
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cryptography.fernet import InvalidToken

from ..tokens import Token
from .base import StoreError
from .keys import Keyring

__all__ = ["CorruptRowError", "DamagedRowError", "Sealer", "UndecryptableError", "credential_name"]

log = logging.getLogger(__name__)


class UndecryptableError(StoreError):
    """No key in the keyring decrypts a row: the store was written with another key."""


class CorruptRowError(StoreError):
    """A row decrypts but does not hold this credential's token (damaged or swapped)."""


class DamagedRowError(UndecryptableError):
    """No key decrypts this row, yet the key reads the store's other rows: the row is damaged
    (or was written with a key since dropped from the keyring), not the whole store."""


@dataclass(slots=True)
class Sealer:
    """Seals tokens under the keyring's newest key; opens rows sealed under any of its keys.

    With `reread` (how the keyring was loaded), a row no key decrypts makes the sealer load
    the keys again before it gives up: a running proxy follows `authproxy rotate-key` (which
    re-encrypts every row under a new key) instead of failing once its token is due.
    """

    keyring: Keyring
    where: str = "the token store"  # the store, as error messages name it
    reread: Callable[[], Keyring] | None = None

    def at(self, where: str) -> Sealer:
        """The same keys, naming the store `where` in its messages."""
        return Sealer(self.keyring, where, self.reread)

    def seal(self, key: str, token: Token) -> bytes:
        envelope = json.dumps({"credential": key, "token": token.to_json()}, separators=(",", ":"))
        return self.keyring.fernet.encrypt(envelope.encode())

    def open(
        self, key: str, sealed: bytes, others: Callable[[], Iterable[bytes]] = tuple
    ) -> Token:
        """The token sealed in row `key`. `others` yields the store's other sealed rows: read
        only when this one does not decrypt, to tell a damaged row from a wrong key."""
        try:
            plaintext = self.keyring.fernet.decrypt(bytes(sealed))
        except InvalidToken:
            if not self._keys_changed():
                raise self.unreadable(key, others) from None
            try:
                plaintext = self.keyring.fernet.decrypt(bytes(sealed))
            except InvalidToken:
                raise self.unreadable(key, others) from None
        try:
            envelope = json.loads(plaintext)
            if not isinstance(envelope, dict) or envelope.get("credential") != key:
                raise ValueError("credential mismatch")
            return Token.from_json(envelope["token"])
        except (ValueError, KeyError, TypeError):
            # `from None`: the parse error could quote parts of the plaintext.
            raise CorruptRowError(
                f"the stored token of {_describe(key)} in {self.where} is not this "
                "credential's token (the row was damaged or copied from another credential). "
                f"Run `authproxy logout {credential_name(key)}` and log in again"
            ) from None

    def reseal(self, key: str, sealed: bytes) -> bytes:
        """The same row sealed under the newest key (key rotation); the token is unchanged."""
        try:
            return self.keyring.fernet.rotate(bytes(sealed))
        except InvalidToken:
            raise self.unreadable(key, tuple) from None

    def unreadable(self, key: str, others: Callable[[], Iterable[bytes]]) -> StoreError:
        """Why no key decrypts `key`'s row: a damaged row, if the key reads another row;
        otherwise (presumably) a store written with another key."""
        # Never advise deleting a token a key could still open: a key dropped from the keyring,
        # or a store written with another key, is fixed by the key, not by `logout`.
        if self._reads_any(others()):
            return DamagedRowError(
                f"the stored token of {_describe(key)} in {self.where} is damaged, or was "
                "written with a key since removed from the keyring: it cannot be decrypted, "
                f"although the key from {self.keyring.source} reads the store's other rows. "
                "If a key was removed, put it back (as a later line of the key file, or entry "
                f"of AUTHPROXY_KEY); otherwise `authproxy logout {credential_name(key)}` "
                "discards the damaged row"
            )
        return UndecryptableError(
            f"cannot decrypt the stored token of {_describe(key)} in {self.where} with "
            f"any key from {self.keyring.source}: the store was written with a different key. "
            "Use the key this store was written with: restore the key file, or set "
            "AUTHPROXY_KEY to it (a running proxy reads a changed key file by itself)"
        )

    def _keys_changed(self) -> bool:
        """Load the keys again; True when they differ (and are now used)."""
        if self.reread is None:
            return False
        try:
            fresh = self.reread()
        except StoreError as e:
            log.warning("%s: cannot read the token store key again: %s", self.where, e)
            return False
        if fresh.keys == self.keyring.keys:
            return False
        log.info(
            "%s: the token store key changed (%s, %d key(s)); using the new keys",
            self.where, fresh.source, len(fresh.keys),
        )  # fmt: skip
        self.keyring = fresh
        return True

    def _reads_any(self, rows: Iterable[bytes]) -> bool:
        for sealed in rows:
            try:
                self.keyring.fernet.decrypt(bytes(sealed))
            except InvalidToken:
                continue
            return True
        return False


def credential_name(key: str) -> str:
    """The credential name of a row key (`name#identity`, see CredentialConfig.store_key)."""
    return key.partition("#")[0]


def _describe(key: str) -> str:
    name = credential_name(key)
    return repr(name) if name == key else f"{name!r} (row {key!r})"
