"""Where the token store and its key live by default (XDG), and making those places private."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["default_db_path", "default_key_file", "ensure_private_dir", "fsync_dir"]


def _xdg_dir(env: Mapping[str, str], var: str, fallback: tuple[str, ...]) -> Path:
    # The XDG spec says a relative value is invalid and must be ignored, not resolved
    # against whatever the working directory happens to be.
    value = env.get(var, "")
    if value and os.path.isabs(value):
        return Path(value)
    home = env.get("HOME") or str(Path.home())
    return Path(home, *fallback)


def default_db_path(env: Mapping[str, str] = os.environ) -> Path:
    """`$XDG_STATE_HOME/authproxy/tokens.db`, else `~/.local/state/authproxy/tokens.db`."""
    return _xdg_dir(env, "XDG_STATE_HOME", (".local", "state")) / "authproxy" / "tokens.db"


def default_key_file(env: Mapping[str, str] = os.environ) -> Path:
    """`$XDG_CONFIG_HOME/authproxy/store.key`, else `~/.config/authproxy/store.key`.

    Deliberately a different directory from the database: a backup or copy of the state
    directory alone must not carry the key that decrypts it.
    """
    return _xdg_dir(env, "XDG_CONFIG_HOME", (".config",)) / "authproxy" / "store.key"


def ensure_private_dir(path: Path) -> None:
    """Create `path` and its missing parents with mode 0700.

    Only directories we create are chmod-ed: an existing one is the user's to manage. The
    explicit chmod is needed because mkdir's mode is filtered through the umask (a umask of 0
    would otherwise leave world-writable parents, which the store then refuses).
    """
    missing = [p for p in (path, *path.parents) if not p.is_dir()]
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            if directory.is_dir():
                continue  # another process made it between our check and mkdir
            raise
        os.chmod(directory, 0o700)


def fsync_dir(path: Path) -> None:
    """Make a rename or link inside `path` durable (POSIX needs the directory fsync-ed too)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
