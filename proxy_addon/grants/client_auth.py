"""How a client proves who it is to the token endpoint (RFC 6749 §2.3): one place for every
request that authenticates the client — the proxy's grants, `authproxy login`'s code and device
flows, and revocation.

A method is a function `(cfg) -> Authenticate`: it reads and checks what it needs (a key
file, a certificate) once, when the grant is built at start, and returns a function
`(endpoint) -> ClientAuthentication`: what to add to one request to `endpoint` (the token,
device or revocation endpoint — a signed assertion names it as its audience). `METHODS` is the
table `client_auth:` chooses from; each entry also says which extra config keys the method
reads, so a new method (private_key_jwt, client_secret_jwt, tls_client_auth) is one function
plus one line here.

Mutual TLS (RFC 8705 §2): `tls_client_auth` / `self_signed_tls_client_auth` send the client
certificate (`client_certificate_file`, `client_key_file`) on the connection itself; the key
file must be owner-only and unencrypted, and the certificate must be the key's.

Signed assertions (RFC 7523 §2.2, OIDC Core §9): `private_key_jwt` signs with a key file
(RS256/PS256/ES256/EdDSA; `key_id` names it in `kid`; `certificate_file` adds the `x5t#S256`
Microsoft Entra wants for certificate credentials), `client_secret_jwt` with the secret (HS256).
Each request gets a fresh `jti` and a one-minute life; the audience is the endpoint, or the
issuer with `assertion_audience: issuer` (or any URL given there).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol
from urllib.parse import quote_plus

from ..errors import GrantError
from .base import KeyFileError, resolve

if TYPE_CHECKING:
    from ..config import CredentialConfig

__all__ = [
    "ASSERTION_TYPE",
    "METHODS",
    "Authenticate",
    "ClientAuthentication",
    "MethodSpec",
    "authenticate",
    "prepare",
]

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME = 60.0  # seconds: long enough for clock skew, too short to be worth stealing


@dataclass(frozen=True, slots=True)
class ClientAuthentication:
    """What one request carries to authenticate the client."""

    basic: tuple[str, str] | None = field(default=None, repr=False)  # HTTP Basic (id, secret)
    form: Mapping[str, str] = field(default_factory=dict, repr=False)  # body parameters
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    cert: tuple[str, str] | None = None  # (certificate file, key file) for mutual TLS


Authenticate = Callable[[str], ClientAuthentication]  # endpoint -> what one request adds


class Method(Protocol):
    """Reads what the method needs (a key file, a certificate) once, when the grant is built,
    and returns what authenticates each request: a key file is not read per request."""

    def __call__(self, cfg: CredentialConfig) -> Authenticate: ...


@dataclass(frozen=True, slots=True)
class MethodSpec:
    function: str  # "module:function" (a Method), imported when first used
    required: tuple[str, ...] = ()  # config keys the method needs (e.g. a key file)
    optional: tuple[str, ...] = ()
    secret: tuple[str, ...] = ()  # of those, the ones never to show
    # Does the method prove the client without a client_secret (a signed assertion, a
    # certificate)? Otherwise a grant that needs an authenticated client needs the secret.
    proves: bool = False


def _always(auth: ClientAuthentication) -> Authenticate:
    return lambda endpoint: auth


def basic(cfg: CredentialConfig) -> Authenticate:
    """HTTP Basic with a secret (client_secret_basic); a public client sends its id in the body."""
    if not cfg.client_secret:
        return post(cfg)
    # RFC 6749 §2.3.1: id and secret are form-encoded before Basic encoding.
    return _always(
        ClientAuthentication(basic=(quote_plus(cfg.client_id or ""), quote_plus(cfg.client_secret)))
    )


def post(cfg: CredentialConfig) -> Authenticate:
    """Id and secret in the body (client_secret_post); a public client: the id only."""
    form = {"client_id": cfg.client_id or ""}
    if cfg.client_secret:
        form["client_secret"] = cfg.client_secret
    return _always(ClientAuthentication(form=form))


def _audience(cfg: CredentialConfig) -> Callable[[str], str]:
    """The assertion's `aud` for a request to an endpoint."""
    wanted = cfg.options.get("assertion_audience") or "token_endpoint"
    if wanted == "token_endpoint":
        return lambda endpoint: endpoint
    if wanted == "issuer":
        if not cfg.issuer:
            raise KeyFileError("assertion_audience", "'issuer' needs issuer: in the credential")
        issuer = cfg.issuer
        return lambda endpoint: issuer
    return lambda endpoint: wanted


def _assertion(client_id: str, token: str) -> ClientAuthentication:
    return ClientAuthentication(
        form={
            "client_id": client_id,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": token,
        }
    )


def private_key_jwt(cfg: CredentialConfig) -> Authenticate:
    """A JWT signed with the client's private key (OIDC Core §9 `private_key_jwt`)."""
    from . import keys  # PyJWT and cryptography load when a key is first used, not with config

    key, alg = keys.load_signing_key(
        cfg.options["private_key_file"],
        key="private_key_file",
        passphrase=cfg.options.get("private_key_passphrase"),
        wanted=cfg.options.get("signing_alg"),
    )
    headers: dict[str, str] = {}
    if kid := cfg.options.get("key_id"):
        headers["kid"] = kid
    if cert := cfg.options.get("certificate_file"):
        headers["x5t#S256"] = keys.cert_thumbprint(cert, key="certificate_file")
    client_id, audience = cfg.client_id or "", _audience(cfg)

    def authenticate(endpoint: str) -> ClientAuthentication:
        claims = keys.fresh_claims(client_id, client_id, audience(endpoint), ASSERTION_LIFETIME)
        return _assertion(client_id, keys.sign(claims, key, alg, headers=headers))

    return authenticate


def client_secret_jwt(cfg: CredentialConfig) -> Authenticate:
    """A JWT MACed with the client secret (OIDC Core §9 `client_secret_jwt`, HS256)."""
    from . import keys

    client_id, secret, audience = cfg.client_id or "", cfg.client_secret or "", _audience(cfg)

    def authenticate(endpoint: str) -> ClientAuthentication:
        claims = keys.fresh_claims(client_id, client_id, audience(endpoint), ASSERTION_LIFETIME)
        return _assertion(client_id, keys.sign(claims, secret, "HS256"))

    return authenticate


def tls(cfg: CredentialConfig) -> Authenticate:
    """Mutual TLS (RFC 8705 §2): the client's certificate proves it, its id goes in the body.
    `tls_client_auth` (a CA-issued certificate the IdP knows by subject) and
    `self_signed_tls_client_auth` (one it knows by its key) differ only at the IdP. The pair
    is checked once; the TLS library reads the files when it connects."""
    from . import keys

    cert = keys.check_tls_pair(
        cfg.options["client_certificate_file"], cfg.options["client_key_file"]
    )
    return _always(ClientAuthentication(form={"client_id": cfg.client_id or ""}, cert=cert))


_TLS_FILES = ("client_certificate_file", "client_key_file")
_KEY_OPTIONS = ("private_key_passphrase", "signing_alg", "key_id", "certificate_file")

METHODS: dict[str, MethodSpec] = {
    "basic": MethodSpec(".client_auth:basic"),
    "post": MethodSpec(".client_auth:post"),
    "private_key_jwt": MethodSpec(
        ".client_auth:private_key_jwt",
        required=("private_key_file",),
        optional=(*_KEY_OPTIONS, "assertion_audience"),
        secret=("private_key_passphrase",),
        proves=True,
    ),
    "client_secret_jwt": MethodSpec(
        ".client_auth:client_secret_jwt",
        required=("client_secret",),
        optional=("assertion_audience",),
        proves=True,
    ),
    "tls_client_auth": MethodSpec(".client_auth:tls", required=_TLS_FILES, proves=True),
    "self_signed_tls_client_auth": MethodSpec(".client_auth:tls", required=_TLS_FILES, proves=True),
}


def prepare(cfg: CredentialConfig) -> Authenticate:
    """The credential's client authentication, its files read and checked now (a
    `KeyFileError` says what is wrong). A grant without a client (a JWT-bearer grant whose
    assertion alone says who asks) adds nothing."""
    if not cfg.client_id:
        return _always(ClientAuthentication())
    method: Method = resolve(METHODS[cfg.client_auth].function)
    return method(cfg)


def authenticate(cfg: CredentialConfig, endpoint: str) -> ClientAuthentication:
    """What to add to one request to `endpoint`, the files read now: for one-off requests.
    A grant prepares its authentication once (`prepare`) and reuses it."""
    try:
        return prepare(cfg)(endpoint)
    except KeyFileError as e:
        raise GrantError("bad_client_key", f"credential {cfg.name!r}: {e}", terminal=True) from None
