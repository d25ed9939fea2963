"""THE table of grants: name -> how its config is checked, how it is built, how one signs in.

Adding a grant is one module (a class keeping the `Grant` contract of `base`) plus one line
here. `config` asks this table which grants exist and which keys each reads; the runtime,
`status` and `authproxy login` ask it (or the grant) instead of comparing names. Factories and
sign-in flows are imported only when a grant is built or a sign-in runs.

Adding a grant (say `jwt_bearer`):
1. `grants/jwt_bearer.py`: a class taking `(cfg, verify)` with `name`, `refreshable`,
   `seed_id`, `persist` and `obtain(previous)` (see `base.Grant`); an OAuth grant subclasses
   `oauth.OAuthGrant` and calls `self.call(what, form)`. Its own config keys arrive in
   `cfg.options` (or `cfg.value(key)`); IdP failures are `GrantError`s. Files it reads (a
   signing key) are read in `load_keys()` (an OAuth grant: `_load_keys`), once, at start.
2. One line below: `"jwt_bearer": GrantSpec(".jwt_bearer:JwtBearerGrant", ConfigRules(
   required=("issuer_claim", "private_key_file"), secret=(...)))`.
Config checking, `authproxy tokens`, the status page, the store and `authproxy login` follow.
A client authentication method (private_key_jwt) is one function plus one line in
`client_auth.METHODS`; a proof on every token request (DPoP) is `OAuthGrant.prepare`/`again`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import ConfigRules, GrantSpec, resolve

if TYPE_CHECKING:
    from ..config import CredentialConfig
    from .base import Grant, SignIn

__all__ = ["GRANTS", "make_grant", "sign_in_for", "spec_for"]

GRANTS: dict[str, GrantSpec] = {
    "client_credentials": GrantSpec(
        ".client_credentials:ClientCredentialsGrant", ConfigRules(confidential=True)
    ),
    "refresh_token": GrantSpec(
        ".refresh_token:RefreshTokenGrant",
        ConfigRules(optional=("refresh_token",), secret=("refresh_token",), seed="refresh_token"),
    ),
    "authorization_code": GrantSpec(
        ".interactive:LoginGrant",
        ConfigRules(endpoint="authorization_url"),
        interactive=True,
        sign_in="..login:code_sign_in",
    ),
    "device_code": GrantSpec(
        ".interactive:LoginGrant",
        ConfigRules(endpoint="device_authorization_url"),
        interactive=True,
        sign_in="..login:device_sign_in",
    ),
    "password": GrantSpec(
        ".password:PasswordGrant",
        ConfigRules(required=("username", "password"), secret=("password",)),
        sign_in=".password:sign_in",
    ),
    "jwt_bearer": GrantSpec(
        ".jwt_bearer:JwtBearerGrant",
        ConfigRules(
            client=False,
            optional=(
                "service_account_file",
                "private_key_file",
                "private_key_passphrase",
                "signing_alg",
                "key_id",
                "assertion_issuer",
                "assertion_subject",
                "assertion_audience",
            ),
            secret=("private_key_passphrase",),
            identity=(
                "service_account_file",
                "assertion_issuer",
                "assertion_subject",
                "assertion_audience",
            ),
            endpoint_from="service_account_file",
            one_of=(("service_account_file",), ("private_key_file", "assertion_issuer")),
        ),
    ),
    "github_app": GrantSpec(
        ".github_app:GitHubAppGrant",
        ConfigRules(
            oauth=False,
            required=("installation_id", "private_key_file"),
            optional=(
                "app_id",
                "client_id",
                "api_url",
                "repositories",
                "permissions",
                "private_key_passphrase",
            ),
            secret=("private_key_passphrase",),
            lists=("repositories", "permissions"),
            identity=("app_id", "installation_id", "api_url", "repositories", "permissions"),
            one_of=(("app_id",), ("client_id",)),
        ),
    ),
    "static": GrantSpec(
        ".static:StaticGrant",
        ConfigRules(oauth=False, required=("token",), secret=("token",)),
        persist=False,
    ),
}


def spec_for(grant: str) -> GrantSpec:
    """The registry entry; a name the config let through is always in the table."""
    try:
        return GRANTS[grant]
    except KeyError:
        raise ValueError(f"unknown grant {grant!r}; known: {', '.join(GRANTS)}") from None


def make_grant(cfg: CredentialConfig, verify: str | bool) -> Grant:
    grant: Grant = resolve(spec_for(cfg.grant).factory)(cfg, verify)
    return grant


def sign_in_for(grant: str) -> SignIn | None:
    """The flow `authproxy login` runs for this grant, or None when it needs no sign-in."""
    ref = spec_for(grant).sign_in
    flow: SignIn | None = resolve(ref) if ref else None
    return flow
