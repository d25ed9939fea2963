"""The commands that messages advise (`authproxy login NAME`), spelled so that they work as
printed: with `--config FILE` when this process was started with an explicit --config."""

from __future__ import annotations

import shlex

__all__ = ["command", "login", "use_config"]

_config: str | None = None


def use_config(path: str | None) -> None:
    """The --config this process was given (set once by the command line, before it runs)."""
    global _config
    _config = path


def command(*words: str) -> str:
    """`authproxy [--config FILE] WORDS...`, quoted for a shell."""
    head = ["authproxy", *(("--config", _config) if _config else ())]
    return shlex.join([*head, *words])


def login(name: str) -> str:
    return command("login", name)
