"""Making text from an identity provider (or any other outside party) safe to show and log.

An IdP's error text may quote a token it was sent, carry terminal escape sequences, or put
anything at all in its `error` code. Everything we show a person or a client, or log, goes
through `clean`; machine-readable codes go through `safe_code`. Pure functions, no imports of
ours, so any module may use them.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

__all__ = ["REDACTED", "clean", "safe_code", "strip_controls"]

REDACTED = "<redacted>"
MAX_TEXT = 300

# CSI (ESC [ ... final), OSC (ESC ] ... BEL or ESC \), and any other two-byte ESC sequence.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]?")
_CODE = re.compile(r"[a-z_]{1,64}")


def strip_controls(text: str) -> str:
    """Drop ANSI escape sequences and every control or format character (C0, C1, DEL, bidi
    overrides, zero-width marks); tabs and line breaks become spaces so a log line stays one."""
    text = _ANSI.sub("", text)
    out = []
    for ch in text:
        if ch in "\t\r\n":
            out.append(" ")
        elif unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co", "Cn"):
            out.append(ch)
    return "".join(out)


def clean(text: str, secrets: Iterable[str | None] = (), *, limit: int = MAX_TEXT) -> str:
    """`text` with every secret (also URL-encoded) replaced, control characters removed, and
    clipped to `limit` characters."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        for form in {secret, quote(secret, safe=""), quote_plus(secret)}:
            text = text.replace(form, REDACTED)
    text = strip_controls(text)
    # A secret split by control characters is whole again once they are gone: scrub again.
    for secret in {s for s in secrets if s}:
        text = text.replace(secret, REDACTED)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def safe_code(code: object, default: str = "idp_error") -> str:
    """A machine-readable code as we pass it on: `[a-z_]+`, else `default`."""
    return code if isinstance(code, str) and _CODE.fullmatch(code) else default
