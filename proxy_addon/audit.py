"""The audit log: one JSON line per API call the proxy authenticated (or refused to).

Never a token or a query value: paths keep their query keys only.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qsl, urlsplit

__all__ = ["AuditLog", "strip_query_values"]

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
