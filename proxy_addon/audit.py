"""The audit log: one JSON line per API call the proxy authenticated (or refused to).

Never a token or a query value: paths keep their query keys only.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qsl, urlsplit

from mitmproxy import ctx, exceptions
from mitmproxy.addonmanager import Loader

__all__ = ["Audit", "AuditLog", "strip_query_values"]

logger = logging.getLogger(__name__)


def strip_query_values(path: str) -> str:
    """`/v1/items?user=alice&page=2` -> `/v1/items?user=&page=` (values may be personal)."""
    parts = urlsplit(path)
    if not parts.query:
        return parts.path
    keys = [k for k, _ in parse_qsl(parts.query, keep_blank_values=True)]
    return parts.path + "?" + "&".join(f"{k}=" for k in keys)


class AuditLog:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.path = path
        self._file: IO[str] = os.fdopen(fd, "a", buffering=1, encoding="utf-8")

    def write(self, **record: Any) -> None:
        record = {"time": round(time.time(), 3), **record}
        try:
            self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        except OSError as e:
            logger.error("cannot write the audit log %s: %s", self.path, e)

    def close(self) -> None:
        self._file.close()


class Audit:
    """The audit log as a small mitmproxy addon: it owns the `authproxy_audit_log` option (which
    overrides the config's `audit_log`) and the file. The proxy calls `record` for each API call
    it authenticated or refused; nothing else writes the file."""

    def __init__(self, configured: Callable[[], Path | None]) -> None:
        self._configured = configured  # the config's audit_log, read on each (re)configure
        self.log: AuditLog | None = None

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "authproxy_audit_log", str | None, None,  # type: ignore[arg-type]  # mitmproxy takes unions
            "Append one JSON line per authenticated API call to this file (overrides the "
            "config's audit_log).",
        )  # fmt: skip

    def configure(self, updated: set[str]) -> None:
        if "authproxy_config" not in updated and "authproxy_audit_log" not in updated:
            return
        path = ctx.options.authproxy_audit_log or self._configured()
        if self.log is not None and (path is None or Path(path) != self.log.path):
            self.log.close()
            self.log = None
        if path and self.log is None:
            try:
                self.log = AuditLog(Path(path))
            except OSError as e:
                raise exceptions.OptionsError(f"cannot open the audit log {path}: {e}") from None

    def done(self) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None

    def record(self, **fields: Any) -> None:
        if self.log is not None:
            self.log.write(**fields)
