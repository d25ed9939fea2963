"""`authproxy init`: write a starter config where `authproxy run` will look for it.

The starter is the annotated example config, or a provider preset, both shipped in the package
(`proxy_addon/data/`, the same files as `config/` in the repository). The file is created 0600
in a 0700 directory: it will hold client IDs and perhaps secrets.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from .config import config_path

__all__ = ["InitError", "preset_names", "register", "starter_text", "write_private"]


class InitError(Exception):
    """The starter config was not written; the message says why and what to do."""


def _data() -> Traversable:
    return resources.files("proxy_addon") / "data"


def preset_names() -> list[str]:
    return sorted(
        p.name.removesuffix(".yaml")
        for p in (_data() / "providers").iterdir()
        if p.name.endswith(".yaml")
    )


def starter_text(preset: str | None) -> str:
    if preset is None:
        return (_data() / "example.yaml").read_text("utf-8")
    if preset not in preset_names():
        raise InitError(f"no preset {preset!r}; choose one of {', '.join(preset_names())}")
    return (_data() / "providers" / f"{preset}.yaml").read_text("utf-8")


def write_private(path: Path, text: str, *, force: bool) -> None:
    """Write `text` to `path` as 0600, creating its directory 0700. Without `force`, an existing
    file is left alone (checked atomically: the file appears complete or not at all)."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise InitError(f"cannot create {path.parent}: {e.strerror}") from None
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".config-", suffix=".tmp")  # 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        if force:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise InitError(
                    f"{path} already exists; edit it, or add --force to replace it"
                ) from None
    except OSError as e:
        raise InitError(f"cannot write {path}: {e.strerror}") from None
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "init", help="write a starter config (0600) to ~/.config/authproxy/config.yaml"
    )
    p.add_argument(
        "--preset",
        choices=preset_names(),
        help="start from a provider preset instead of the annotated example",
    )
    p.add_argument("--force", action="store_true", help="replace an existing config file")
    p.set_defaults(func=_cmd_init)


def _cmd_init(args: argparse.Namespace) -> int:
    path = config_path(args.config)
    try:
        text = starter_text(args.preset)
        write_private(path, text, force=args.force)
    except InitError as e:
        print(f"authproxy: {e}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    variables = sorted(set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text)))
    if variables:
        print(f"it reads these environment variables: {', '.join(variables)}")
    where = f" --config {args.config}" if args.config else ""
    print(f"next: edit it, then run `authproxy{where} check`")
    return 0
