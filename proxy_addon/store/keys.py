"""Where the token store's encryption keys come from: AUTHPROXY_KEY, else a key file.

Both hold Fernet keys, newest first: the newest encrypts, all of them decrypt. That is what
makes key rotation possible without a flag day (add a key, re-encrypt, drop the old key).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.fernet import Fernet, MultiFernet

from ..tokens import fingerprint
from .base import StoreError
from .paths import ensure_private_dir, fsync_dir
from .safety import check_dir, open_no_follow

__all__ = ["ENV_VAR", "KeySourceError", "Keyring", "add_key", "load_keys"]

log = logging.getLogger(__name__)

ENV_VAR = "AUTHPROXY_KEY"

_KEY_HELP = "a Fernet key is 44 characters of url-safe base64, as made by Fernet.generate_key()"


class KeySourceError(StoreError):
    """No usable key: missing, malformed, unreadable, or kept in an unsafe place."""


@dataclass(frozen=True, slots=True)
class Keyring:
    """The keys the store may use, newest first, and where they came from (for messages)."""

    fernet: MultiFernet
    keys: tuple[bytes, ...] = field(repr=False)
    source: str

    @classmethod
    def from_keys(cls, keys: Sequence[bytes | str], source: str) -> Keyring:
        """Build a keyring from known-good keys (for tests and callers with their own source)."""
        raw = tuple(k.encode() if isinstance(k, str) else k for k in keys)
        if not raw:
            raise KeySourceError(f"{source} holds no keys; {_KEY_HELP}")
        return cls(MultiFernet([Fernet(k) for k in raw]), raw, source)


def load_keys(
    key_file: Path,
    env: Mapping[str, str] = os.environ,
    *,
    db_path: Path | None = None,
    create: bool = False,
    stored_rows: int = 0,
) -> Keyring:
    """The keyring from $AUTHPROXY_KEY (comma-separated), else from `key_file` (one per line).

    With neither present, `create=True` generates a key file; `create=False` (read-only
    commands) raises KeySourceError instead, since a fresh key could not decrypt anything
    already stored. For the same reason no key is generated while the store holds
    `stored_rows` > 0 rows: a deleted key file must be restored, not silently replaced.
    `db_path` is checked so that the key is never kept beside the database.
    """
    value = env.get(ENV_VAR, "").strip()
    if value:
        keyring = _parse(enumerate(value.split(","), start=1), ENV_VAR, "entry")
        log.info("token store key: %s (%d key(s))", keyring.source, len(keyring.keys))
        return keyring

    _refuse_beside_db(key_file, db_path)
    source = f"key file {key_file}"
    try:
        text = _read_key_file(key_file)
    except FileNotFoundError:
        if stored_rows:
            raise KeySourceError(_lost_key_message(key_file, db_path, stored_rows)) from None
        if not create:
            raise KeySourceError(
                f"no token store key: {ENV_VAR} is not set and {key_file} does not exist. "
                f"Set {ENV_VAR} to the key the store was written with, or start the proxy "
                "once to generate a key file"
            ) from None
        _create_key_file(key_file)
        text = _read_key_file(key_file)
    keyring = _parse(_numbered_lines(text), source, "line")
    log.info("token store key: %s (%d key(s))", keyring.source, len(keyring.keys))
    return keyring


def add_key(key_file: Path, *, db_path: Path | None = None, stored_rows: int = 0) -> str:
    """Put a newly generated key first in `key_file` and describe the result (never the key).

    The old keys stay, so rows not yet re-encrypted remain readable. The file is replaced
    atomically: a crash leaves either the old or the new file, never a half-written one.
    """
    _refuse_beside_db(key_file, db_path)
    try:
        old = _read_key_file(key_file)
    except FileNotFoundError:
        if stored_rows:
            raise KeySourceError(_lost_key_message(key_file, db_path, stored_rows)) from None
        old = ""
    # Refuse to build on a file we could not load afterwards.
    count = len(_parse(_numbered_lines(old), f"key file {key_file}", "line").keys) if old else 0
    new_key = Fernet.generate_key()
    _ensure_key_dir(key_file)
    _write_atomically(key_file, new_key + b"\n" + old.encode(), replace=True)
    return (
        f"new key {fingerprint(new_key.decode())} added to key file {key_file} "
        f"({count + 1} key(s), newest first)"
    )


def _lost_key_message(key_file: Path, db_path: Path | None, rows: int) -> str:
    return (
        f"no token store key: {ENV_VAR} is not set and {key_file} does not exist, but the "
        f"token store {db_path} holds {rows} token(s) encrypted with a key. A new key could "
        "not read them, so none was generated. Restore the key file from a backup (or set "
        f"{ENV_VAR} to the key), or, to start afresh, move {db_path} aside (its tokens are lost)"
    )


def _numbered_lines(text: str) -> Iterable[tuple[int, str]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.lstrip().startswith("#"):
            yield number, line


def _parse(entries: Iterable[tuple[int, str]], source: str, unit: str) -> Keyring:
    keys: list[bytes] = []
    fernets: list[Fernet] = []
    for number, entry in entries:
        entry = entry.strip()
        if not entry:
            continue
        try:
            fernets.append(Fernet(entry.encode()))
        except (ValueError, TypeError):
            # `from None`: the underlying error could quote the bad key, and it may be a
            # real key with a typo.
            raise KeySourceError(
                f"{source}, {unit} {number}: not a valid key ({_KEY_HELP})"
            ) from None
        keys.append(entry.encode())
    if not keys:
        raise KeySourceError(f"{source} holds no keys; {_KEY_HELP}")
    return Keyring(MultiFernet(fernets), tuple(keys), source)


def _refuse_beside_db(key_file: Path, db_path: Path | None) -> None:
    if db_path is None:
        return
    state_dir = db_path.resolve().parent
    if state_dir == key_file.resolve().parent or state_dir in key_file.resolve().parents:
        raise KeySourceError(
            f"the key file {key_file} is in the same directory as the token store {db_path}, "
            "or below it, "
            "so anyone who copies that directory can decrypt the tokens. Move the key file "
            f"to another directory (and point the config at it), or set {ENV_VAR}"
        )


def _read_key_file(key_file: Path) -> str:
    """The key file's text; raises FileNotFoundError if it is missing, and refuses it (and its
    directory) when another user could have read, planted or swapped it."""
    try:
        check_dir(key_file.parent, "key file")
    except FileNotFoundError:
        raise FileNotFoundError(key_file) from None
    except OSError as e:
        raise KeySourceError(f"cannot read key file {key_file}: {e.strerror}") from None
    try:
        fd = open_no_follow(key_file, "key file")
    except FileNotFoundError:
        raise
    except OSError as e:
        raise KeySourceError(f"cannot read key file {key_file}: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        data = f.read()
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise KeySourceError(
            f"key file {key_file} is not a text file of keys ({_KEY_HELP})"
        ) from None


def _ensure_key_dir(key_file: Path) -> None:
    try:
        ensure_private_dir(key_file.parent)
        check_dir(key_file.parent, "key file")
    except OSError as e:
        raise KeySourceError(
            f"cannot create the directory of key file {key_file}: {e.strerror} ({e.filename})"
        ) from e


def _create_key_file(key_file: Path) -> None:
    _ensure_key_dir(key_file)
    _write_atomically(key_file, Fernet.generate_key() + b"\n", replace=False)
    log.warning(
        "generated a new token store key in %s: back it up, without it the stored tokens "
        "cannot be read",
        key_file,
    )


def _write_atomically(path: Path, data: bytes, *, replace: bool) -> None:
    """Write via a synced 0600 temp file in the same directory, then rename or link it in.

    `replace=False` links instead of renaming, which fails if the file appeared meanwhile:
    two proxies starting at once then agree on one key instead of overwriting each other.
    """
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                log.info("key file %s was created by another process; using it", path)
    except OSError as e:
        raise KeySourceError(f"cannot write key file {path}: {e.strerror}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    fsync_dir(path.parent)
