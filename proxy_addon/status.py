"""What `authproxy tokens` and the status page say about each credential. Pure: no I/O."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config import CredentialConfig
from .grants.registry import spec_for
from .state import CredentialState, CredentialStatus
from .store import Record
from .tokens import needs_refresh

__all__ = ["STATES", "CredentialView", "describe"]

S = CredentialState
# The states an operator sees for a credential of the config.
STATES = (S.VALID, S.EXPIRING, S.EXPIRED, S.NEEDS_LOGIN, S.NOT_FETCHED, S.FAILING)


@dataclass(frozen=True, slots=True)
class CredentialView:
    name: str
    grant: str
    state: CredentialState  # one of STATES (or DAMAGED, from `authproxy tokens`)
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
            "name": self.name, "grant": self.grant, "state": str(self.state),
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
    spec = spec_for(cfg.grant)
    if not spec.persist:  # the token is in the config: always there, never refreshed
        return CredentialView(cfg.name, cfg.grant, S.VALID, math.inf, (), None, False)
    if record is None:
        state = S.NEEDS_LOGIN if spec.starts_signed_out(cfg) else S.NOT_FETCHED
        view = CredentialView(cfg.name, cfg.grant, state, None, cfg.scopes, None, False)
    else:
        tok = record.token
        if tok.expires_at <= now:
            state = S.EXPIRED
        elif needs_refresh(tok, now, cfg.policy.refresh_leeway):
            state = S.EXPIRING
        else:
            state = S.VALID
        view = CredentialView(
            cfg.name, cfg.grant, state, tok.expires_at - now, tok.scope or cfg.scopes,
            record.updated_at, bool(tok.refresh_token),
        )  # fmt: skip
    if live is not None and live.state in (S.FAILING, S.NEEDS_LOGIN):
        state = live.state
        return CredentialView(
            view.name, view.grant, state, view.expires_in, view.scopes, view.last_refresh,
            view.refresh_token, live.last_error,
        )  # fmt: skip
    return view
