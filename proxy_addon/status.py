"""What `authproxy tokens` and the status page say about each credential. Pure: no I/O."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .cache import CredentialStatus
from .config import CredentialConfig
from .store import Record
from .tokens import needs_refresh

__all__ = ["STATES", "CredentialView", "describe", "state_id"]

# What an operator sees; `state_id` gives the form without spaces for metrics labels and CSS.
STATES = ("valid", "expiring", "expired", "needs login", "not fetched", "failing")


def state_id(state: str) -> str:
    """`needs login` -> `needs_login`: a Prometheus label value or a CSS class."""
    return "_".join(state.split())


@dataclass(frozen=True, slots=True)
class CredentialView:
    name: str
    grant: str
    state: str  # valid | expiring | expired | needs login | not fetched | failing
    expires_in: float | None  # seconds; None: unknown; inf: never
    scopes: tuple[str, ...]
    last_refresh: float | None  # epoch seconds of the last stored change
    refresh_token: bool
    last_error: str | None = None

    def as_dict(self) -> dict[str, object]:
        expires = (
            None
            if self.expires_in is None or math.isinf(self.expires_in)
            else round(self.expires_in)
        )
        return {
            "name": self.name, "grant": self.grant, "state": self.state,
            "expires_in": expires, "never_expires": self.expires_in == math.inf,
            "scopes": list(self.scopes), "last_refresh": self.last_refresh,
            "refresh_token": self.refresh_token, "last_error": self.last_error,
        }  # fmt: skip


def describe(
    cfg: CredentialConfig,
    record: Record | None,
    now: float,
    live: CredentialStatus | None = None,
) -> CredentialView:
    """The stored row, with the running proxy's view (failures, last error) when there is one."""
    if cfg.grant == "static":
        return CredentialView(cfg.name, cfg.grant, "valid", math.inf, (), None, False)
    if record is None:
        needs_login = cfg.interactive or (cfg.grant == "refresh_token" and not cfg.refresh_token)
        state = "needs login" if needs_login else "not fetched"
        view = CredentialView(cfg.name, cfg.grant, state, None, cfg.scopes, None, False)
    else:
        tok = record.token
        if tok.expires_at <= now:
            state = "expired"
        elif needs_refresh(tok, now, cfg.policy.refresh_leeway):
            state = "expiring"
        else:
            state = "valid"
        view = CredentialView(
            cfg.name, cfg.grant, state, tok.expires_at - now, tok.scope or cfg.scopes,
            record.updated_at, bool(tok.refresh_token),
        )  # fmt: skip
    if live is not None and live.state in ("failing", "needs_login"):
        state = "needs login" if live.state == "needs_login" else "failing"
        return CredentialView(
            view.name, view.grant, state, view.expires_in, view.scopes, view.last_refresh,
            view.refresh_token, live.last_error,
        )  # fmt: skip
    return view
