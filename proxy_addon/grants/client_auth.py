"""How a client proves who it is to the token endpoint (RFC 6749 §2.3): one place for every
request that authenticates the client — the proxy's grants, `authproxy login`'s code and device
flows, and revocation.

A method is a pure function `(cfg, endpoint) -> ClientAuthentication`: what to add to one
request to `endpoint` (the token, device or revocation endpoint — a signed assertion names it
as its audience). `METHODS` is the table `client_auth:` chooses from; each entry also says
which extra config keys the method reads, so a new method (private_key_jwt, client_secret_jwt,
tls_client_auth) is one function plus one line here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol
from urllib.parse import quote_plus

from .base import resolve

if TYPE_CHECKING:
    from ..config import CredentialConfig

__all__ = ["METHODS", "ClientAuthentication", "MethodSpec", "authenticate"]


@dataclass(frozen=True, slots=True)
class ClientAuthentication:
    """What one request carries to authenticate the client."""

    basic: tuple[str, str] | None = field(default=None, repr=False)  # HTTP Basic (id, secret)
    form: Mapping[str, str] = field(default_factory=dict, repr=False)  # body parameters
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    cert: tuple[str, str] | None = None  # (certificate file, key file) for mutual TLS


class Method(Protocol):
    def __call__(self, cfg: CredentialConfig, endpoint: str) -> ClientAuthentication: ...


@dataclass(frozen=True, slots=True)
class MethodSpec:
    function: str  # "module:function" (a Method), imported when first used
    required: tuple[str, ...] = ()  # config keys the method needs (e.g. a key file)
    optional: tuple[str, ...] = ()
    secret: tuple[str, ...] = ()  # of those, the ones never to show


def basic(cfg: CredentialConfig, endpoint: str) -> ClientAuthentication:
    """HTTP Basic with a secret (client_secret_basic); a public client sends its id in the body."""
    if not cfg.client_secret:
        return post(cfg, endpoint)
    # RFC 6749 §2.3.1: id and secret are form-encoded before Basic encoding.
    return ClientAuthentication(
        basic=(quote_plus(cfg.client_id or ""), quote_plus(cfg.client_secret))
    )


def post(cfg: CredentialConfig, endpoint: str) -> ClientAuthentication:
    """Id and secret in the body (client_secret_post); a public client: the id only."""
    form = {"client_id": cfg.client_id or ""}
    if cfg.client_secret:
        form["client_secret"] = cfg.client_secret
    return ClientAuthentication(form=form)


METHODS: dict[str, MethodSpec] = {
    "basic": MethodSpec(".client_auth:basic"),
    "post": MethodSpec(".client_auth:post"),
}


def authenticate(cfg: CredentialConfig, endpoint: str) -> ClientAuthentication:
    method: Method = resolve(METHODS[cfg.client_auth].function)
    return method(cfg, endpoint)
