"""Endpoints from an issuer: OpenID Connect discovery or RFC 8414 metadata, fetched once.

Blocking I/O: callers run it in a worker thread (the proxy) or at the command line.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit

from .config import CredentialConfig
from .errors import GrantError
from .idp_http import exchange
from .sanitize import clean

__all__ = ["Endpoints", "endpoints_for", "off_issuer"]

logger = logging.getLogger(__name__)

# Which discovered endpoint each grant cannot do without, besides the token endpoint.
_NEEDS = {"authorization_code": "authorization_url", "device_code": "device_authorization_url"}


@dataclass(frozen=True, slots=True)
class Endpoints:
    token_url: str | None = None
    authorization_url: str | None = None
    device_authorization_url: str | None = None
    revocation_url: str | None = None
    # RFC 9207: the server says it puts `iss` in every authorization response.
    iss_required: bool = False


_cache: dict[str, Endpoints] = {}
_cache_lock = threading.Lock()


def endpoints_for(cfg: CredentialConfig, verify: str | bool) -> Endpoints:
    """The credential's endpoints: what it names itself, the rest from its issuer.

    A discovered endpoint must be on the issuer's own origin (https, same host and port): a
    metadata document that sends token requests elsewhere is refused unless the config names
    that endpoint itself."""
    if cfg.issuer is None:
        return Endpoints(
            cfg.token_url, cfg.authorization_url, cfg.device_authorization_url, cfg.revocation_url
        )
    found = discover(cfg.issuer, verify, cfg.policy.idp_timeout)
    chosen: dict[str, str | None] = {}
    for name in ("token_url", "authorization_url", "device_authorization_url", "revocation_url"):
        own, discovered = getattr(cfg, name), getattr(found, name)
        if own is None and discovered is not None and off_issuer(discovered, cfg.issuer):
            if name == "token_url" or _NEEDS.get(cfg.grant) == name:
                raise GrantError(
                    "endpoint_off_issuer",
                    f"credential {cfg.name!r}: the issuer's metadata puts its {name} at "
                    f"{clean(discovered)}, not on the issuer's host {_origin(cfg.issuer)}; if "
                    f"that is right, set {name} in the credential's config",
                    terminal=True,
                )
            logger.warning(
                "credential %s: ignoring the discovered %s (%s), not on the issuer's host; set "
                "%s in the config to use it",
                cfg.name, name, clean(discovered), name,
            )  # fmt: skip
            discovered = None
        chosen[name] = own or discovered
    return Endpoints(**chosen, iss_required=found.iss_required)


def off_issuer(url: str, issuer: str) -> bool:
    """Is `url` anywhere but https on the issuer's host and port?"""
    return _origin(url) != _origin(issuer) or urlsplit(url).scheme != "https"


def _origin(url: str) -> tuple[str, str, int | None] | str:
    parts = urlsplit(url)
    try:
        port = parts.port or {"https": 443, "http": 80}.get(parts.scheme)
    except ValueError:
        return "invalid"
    return parts.scheme, (parts.hostname or "").lower(), port


def metadata_urls(issuer: str) -> list[str]:
    """OIDC appends to the issuer; RFC 8414 inserts the well-known part before its path."""
    base = issuer.rstrip("/")
    parts = urlsplit(base)
    rfc8414 = f"{parts.scheme}://{parts.netloc}/.well-known/oauth-authorization-server{parts.path}"
    return [f"{base}/.well-known/openid-configuration", rfc8414]


def discover(issuer: str, verify: str | bool, timeout: float) -> Endpoints:
    with _cache_lock:
        if issuer in _cache:
            return _cache[issuer]
    last: str = "no metadata document found"
    for url in metadata_urls(issuer):
        try:
            r = exchange("GET", url, what=f"discovery at {url}", timeout=timeout, verify=verify)
        except GrantError as e:
            raise GrantError("discovery_failed", str(e), terminal=False) from None
        if r.status == 404:
            last = f"{url} answered 404"
            continue
        if r.status != 200:
            raise GrantError(
                "discovery_failed", f"{url} answered HTTP {r.status}", terminal=r.status < 500
            )
        try:
            doc = json.loads(r.body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise GrantError("discovery_failed", f"{url} is not JSON", terminal=True) from None
        named = doc.get("issuer") if isinstance(doc, dict) else None
        if not isinstance(named, str) or named.rstrip("/") != issuer.rstrip("/"):
            # RFC 8414 §3.3: a document for another issuer must not be used (mix-up attacks).
            shown = clean(repr(named), limit=120)
            raise GrantError(
                "discovery_failed", f"{url} describes issuer {shown}, not {issuer!r}", terminal=True
            )
        endpoints = Endpoints(
            _https(doc.get("token_endpoint")),
            _https(doc.get("authorization_endpoint")),
            _https(doc.get("device_authorization_endpoint")),
            _https(doc.get("revocation_endpoint")),
            iss_required=doc.get("authorization_response_iss_parameter_supported") is True,
        )
        with _cache_lock:
            _cache[issuer] = endpoints
        return endpoints
    raise GrantError("discovery_failed", f"issuer {issuer}: {last}", terminal=True)


def _https(value: object) -> str | None:
    return value if isinstance(value, str) and value.startswith("https://") else None
