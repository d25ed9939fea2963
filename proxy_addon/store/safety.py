"""Refusing store and key files that another local user could read, plant or swap.

The rules (each refusal says how to fix it):
- a file (key file, database, its -wal/-shm/-journal) must be a regular file, not a symbolic
  link, owned by the user running authproxy, and open to nobody else (no group/other bits);
- the directory holding it must be owned by that user (or root) and writable by nobody else,
  since whoever can write a directory can plant or swap the files in it;
- every directory above must be owned by that user or root, and not writable by everyone
  unless it has the sticky bit (as /tmp has): otherwise another user could rename the
  directories below it and put his own in their place. Group-writable parents are accepted,
  because a user-private group (umask 002) makes many home directories so.

Nothing here changes a mode or an owner: a file that was open to others may already have been
read or replaced, and that is for its owner to judge.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from .base import StoreError

__all__ = ["UnsafePathError", "check_dir", "check_file_stat", "check_sidecar", "open_no_follow"]


class UnsafePathError(StoreError):
    """A store or key file, or a directory above it, is open to another user."""


def _euid() -> int | None:
    return os.geteuid() if hasattr(os, "geteuid") else None


def check_dir(path: Path, what: str) -> None:
    """Refuse `path` (the directory holding `what`) or a parent that another user controls."""
    euid = _euid()
    if euid is None:
        return  # no POSIX ownership to check (Windows)
    real = Path(os.path.realpath(path))
    st = os.stat(real)
    if st.st_uid not in (euid, 0):
        raise UnsafePathError(
            f"the directory {path} of the {what} belongs to another user (uid {st.st_uid}), "
            f"who could replace the files in it. Use a directory of your own, or, if it is "
            f"yours, run: chown {euid} {path}"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        raise UnsafePathError(
            f"the directory {path} of the {what} can be written by other users (mode "
            f"{mode:03o}), who could plant or swap files in it; run: chmod go-w {path}"
        )
    for parent in real.parents:
        pst = os.stat(parent)
        pmode = stat.S_IMODE(pst.st_mode)
        if pst.st_uid not in (euid, 0):
            raise UnsafePathError(
                f"{parent}, a parent directory of the {what}, belongs to another user (uid "
                f"{pst.st_uid}), who could swap the directories below it. Keep the {what} "
                "in a directory tree of your own"
            )
        if pmode & 0o002 and not pmode & stat.S_ISVTX:
            raise UnsafePathError(
                f"{parent}, a parent directory of the {what}, can be written by every user "
                f"(mode {pmode:03o}) and has no sticky bit, so another user could swap the "
                f"directories below it; run: chmod o-w {parent} (or chmod +t {parent}), or "
                f"keep the {what} elsewhere"
            )


def open_no_follow(path: Path, what: str) -> int:
    """Open `path` read-only without following a symbolic link, and check it (fd returned).

    Raises FileNotFoundError if it does not exist, UnsafePathError if it is unsafe.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0))
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UnsafePathError(_link_message(path, what)) from None
        raise
    try:
        check_file_stat(os.fstat(fd), path, what)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_sidecar(path: Path, what: str) -> None:
    """Check a file SQLite opens by itself (the database, -wal, -shm, -journal), if it exists.

    By lstat only: a descriptor we opened and closed on a SQLite file would drop the locks of
    this process's SQLite connections to it.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePathError(_link_message(path, what))
    check_file_stat(st, path, what)


def check_file_stat(st: os.stat_result, path: Path, what: str) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePathError(f"the {what} {path} is not a regular file")
    euid = _euid()
    if euid is None:
        return
    if st.st_uid != euid:
        raise UnsafePathError(
            f"the {what} {path} belongs to another user (uid {st.st_uid}), not to you (uid "
            f"{euid}), so it may have been planted. Remove it if you do not know where it came "
            f"from; if it is yours, run: chown {euid} {path}"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise UnsafePathError(
            f"the {what} {path} is open to other users (mode {mode:03o}); run: chmod 600 {path}"
        )


def _link_message(path: Path, what: str) -> str:
    return (
        f"the {what} {path} is a symbolic link, which authproxy does not follow (another user "
        "could point it elsewhere). Put the file itself there, or point the config at the real "
        "path"
    )
