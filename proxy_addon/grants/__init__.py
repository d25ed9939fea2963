"""Grants: how each kind of credential gets a token from its identity provider.

`base` holds the contract every grant keeps (`Grant`, `GrantSpec`, `ConfigRules`); `registry`
the one table name -> entry; `client_auth` how a client authenticates to the token endpoint;
`oauth` the token-endpoint machinery OAuth grants share; then one module per grant. Blocking
I/O: callers run `obtain` in a worker thread.

Who may import what: `config` imports `registry` and `client_auth` (both light: grant modules
are imported only when a grant is built); the runtime, the cache, `login` and the command-line
tools import from here. Nothing in this package imports the addon, the cache or the store.
"""

from __future__ import annotations

from ..errors import GrantError
from .base import ConfigRules, Grant, GrantSpec
from .registry import GRANTS, make_grant, sign_in_for, spec_for

__all__ = [
    "GRANTS",
    "ConfigRules",
    "Grant",
    "GrantError",
    "GrantSpec",
    "make_grant",
    "sign_in_for",
    "spec_for",
]
