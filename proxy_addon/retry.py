"""When a 401 from the API earns one refresh and one re-send. Pure decision, no I/O."""

from __future__ import annotations

import re

__all__ = ["retry_decision"]

_ERROR_PARAM = re.compile(r'error\s*=\s*"?([A-Za-z_]+)"?', re.IGNORECASE)


def retry_decision(
    *,
    status: int,
    www_authenticate: str | None,
    already_retried: bool,
    refreshable: bool,
    request_streamed: bool,
    response_streamed: bool,
) -> tuple[bool, str]:
    """(retry?, why). The reason is logged either way, so a person can see what happened."""
    if status != 401:
        return False, "not a 401"
    if already_retried:
        return False, "already retried once"
    if not refreshable:
        return False, "this credential cannot be refreshed"
    m = _ERROR_PARAM.search(www_authenticate or "")
    if m and m.group(1).lower() == "insufficient_scope":
        return False, "insufficient_scope: a new token would have the same scopes"
    if request_streamed:
        return False, "the request body was streamed and not kept, so it cannot be re-sent"
    if response_streamed:
        return False, "the 401 was already streamed to the client"
    return True, "the API rejected the token"
