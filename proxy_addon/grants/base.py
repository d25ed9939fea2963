"""The contract every grant keeps, and what the registry says about each. Imports nothing heavy.

A grant turns configuration (and the token it replaces) into a `Token`:

- `obtain(previous) -> Token` runs in a worker thread (blocking I/O allowed). `previous` is the
  stored token, or None: a grant that can refresh uses `previous.refresh_token`. Every failure
  is a `GrantError`; `terminal=True` says the same input cannot succeed (a revoked sign-in, a
  wrong secret): the cache then stops asking until the config or the store changes. A grant that
  needs a person to sign in first raises `GrantError("needs_login", ..., terminal=True)`.
- `refreshable`: can a new token be had when the API rejects the current one? (False for a
  token written in the config.)
- `seed_id`: a fingerprint of the first token source named in the config (a refresh token);
  a stored token from another seed is stale. None when the grant has no seed.
- `persist`: are its tokens kept in the store? (A static token is in the config already:
  storing it would only copy a secret.)
- `load_keys()` (only a grant that reads files: key, certificate, service account): read and
  check them once and keep what was loaded. The runtime calls it at start, so a bad file stops
  the start with a `KeyFileError` (turned into a `ConfigError` naming the config file and key);
  a grant built by a command-line tool loads them at first use instead.

What the registry adds about a grant, without building one: which config keys it reads
(`ConfigRules`), whether its tokens come only from a person signing in (`interactive`), and the
sign-in flow `authproxy login` runs for it (`sign_in`). Factories and flows are named as
"module:attribute" and imported when used, so reading the config loads no HTTP machinery.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..config import CredentialConfig
    from ..tokens import Token

__all__ = ["ConfigRules", "Grant", "GrantSpec", "KeyFileError", "SignIn", "resolve"]


class KeyFileError(ValueError):
    """A key, certificate or service-account file that cannot be used: `key` is the config key
    that names it (`private_key_file`), `path` the file (None for a problem of another key,
    such as `signing_alg`), `problem` what is wrong and what to do. str(): "key: path: problem".
    The runtime turns it into a `ConfigError` naming the config file and the full key path.
    (Here, not in `keys`, so that modules the config imports can catch it without PyJWT.)"""

    def __init__(self, key: str, problem: str, path: str | None = None) -> None:
        self.key, self.problem, self.path = key, problem, path
        super().__init__(f"{key}: {self.detail}")

    @property
    def detail(self) -> str:
        """The file and what is wrong with it: "path: problem" (the problem alone without one)."""
        return f"{self.path}: {self.problem}" if self.path else self.problem

    def at(self, path: str) -> KeyFileError:
        """The same problem, naming the file it was found in (if it names none yet)."""
        return self if self.path else KeyFileError(self.key, self.problem, path)

    def under(self, prefix: str) -> KeyFileError:
        """The same problem, its key under `prefix` (`routes[2]`)."""
        return KeyFileError(f"{prefix}.{self.key}", self.problem, self.path)


class Grant(Protocol):
    name: str
    refreshable: bool  # can a new token be had when the API rejects the current one?
    seed_id: str | None  # fingerprint of the configured seed; a stored token of another is stale
    persist: bool  # are its tokens kept in the store?

    def obtain(self, previous: Token | None) -> Token: ...


class SignIn(Protocol):
    """A sign-in flow of `authproxy login`: asks a person, returns the first token."""

    def __call__(
        self,
        grant: Grant,
        *,
        no_browser: bool,
        timeout: float,
        out: Callable[[str], None],
        read: Callable[[str], str],
    ) -> Token: ...


@dataclass(frozen=True, slots=True)
class ConfigRules:
    """Which keys of a credential's config a grant reads, besides `grant`, `preset` and the
    token policy keys that every grant takes. Any other key is refused as unknown.

    `oauth`: the grant talks to a token endpoint, so it reads the endpoint keys (`token_url` or
    `issuer`, `tenant`, the other endpoint URLs), the client keys (`client_id` required,
    `client_secret`, `client_auth` and that method's own keys) and `scopes`/`params`.
    `required`: keys that must be given and not empty; a key `oauth` already reads (such as
    `client_secret`) is then required "for grant <name>". `optional`: more keys it reads.
    `secret`: those of its keys whose values must never be shown (scrubbed from IdP text).
    `endpoint`: an endpoint key it cannot do without, unless an `issuer` lets it be discovered.
    `seed`: a key whose value is the grant's first token source; without it, and with no
    stored token, the credential needs a sign-in.
    `confidential`: the client must prove who it is (a secret, or a `client_auth` method that
    proves without one, such as private_key_jwt). `client`: False when `client_id` may be left
    out (a JWT-bearer grant whose signed assertion alone says who asks).
    `lists`: of its keys, those that take a list of strings (kept space-separated).
    `identity`: of its keys, those that decide whose token it is (a service account, an app
    installation): they enter the credential's store identity.
    `endpoint_from`: a key that can stand in for `token_url` (a service-account file names its
    token endpoint).
    `one_of`: groups of its keys of which at least one must be given whole (a service-account
    file, or a key file and an issuer).
    """

    oauth: bool = True
    required: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    secret: tuple[str, ...] = ()
    endpoint: str | None = None
    seed: str | None = None
    confidential: bool = False
    client: bool = True
    lists: tuple[str, ...] = ()
    identity: tuple[str, ...] = ()
    endpoint_from: str | None = None
    one_of: tuple[tuple[str, ...], ...] = ()


@dataclass(frozen=True, slots=True)
class GrantSpec:
    """One registry entry: how to check a grant's config, build it, and sign in with it."""

    factory: str  # "module:Class" relative to this package; called as Class(cfg, verify)
    rules: ConfigRules = ConfigRules()
    persist: bool = True  # tokens kept in the store
    interactive: bool = False  # tokens come only from a person signing in (`authproxy login`)
    sign_in: str | None = None  # "module:function" (a SignIn) for `authproxy login`, if any

    def starts_signed_out(self, cfg: CredentialConfig) -> bool:
        """With nothing stored yet, does this credential need `authproxy login` first?"""
        seed = self.rules.seed
        return self.interactive or (seed is not None and not cfg.value(seed))


def resolve(ref: str) -> Any:
    """The object a "module:attribute" reference names; a leading dot is this package."""
    module, _, attribute = ref.partition(":")
    return getattr(importlib.import_module(module, __package__), attribute)
