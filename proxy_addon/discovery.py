"""Endpoints from an issuer: OpenID Connect discovery or RFC 8414 metadata, fetched once.

Blocking I/O: callers run it in a worker thread (the proxy) or at the command line.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests

from .config import CredentialConfig
from .errors import GrantError

__all__ = ["Endpoints", "endpoints_for"]


@dataclass(frozen=True, slots=True)
class Endpoints:
    token_url: str | None = None
    authorization_url: str | None = None
    device_authorization_url: str | None = None
    revocation_url: str | None = None


_cache: dict[str, Endpoints] = {}
_cache_lock = threading.Lock()


def endpoints_for(cfg: CredentialConfig, verify: str | bool) -> Endpoints:
    """The credential's endpoints: what it names itself, the rest from its issuer."""
    own = Endpoints(
        cfg.token_url, cfg.authorization_url, cfg.device_authorization_url, cfg.revocation_url
    )
    if cfg.issuer is None:
        return own
    found = discover(cfg.issuer, verify, cfg.policy.idp_timeout)
    return Endpoints(
        own.token_url or found.token_url,
        own.authorization_url or found.authorization_url,
        own.device_authorization_url or found.device_authorization_url,
        own.revocation_url or found.revocation_url,
    )


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
    with requests.Session() as session:
        session.trust_env = False  # never via our own proxy
        for url in metadata_urls(issuer):
            try:
                r = session.get(url, timeout=timeout, verify=verify)
            except requests.RequestException as e:
                raise GrantError(
                    "discovery_failed", f"cannot fetch {url}: {type(e).__name__}", terminal=False
                ) from None
            if r.status_code == 404:
                last = f"{url} answered 404"
                continue
            if r.status_code != 200:
                raise GrantError(
                    "discovery_failed",
                    f"{url} answered HTTP {r.status_code}",
                    terminal=r.status_code < 500,
                )
            try:
                doc = r.json()
            except ValueError:
                raise GrantError("discovery_failed", f"{url} is not JSON", terminal=True) from None
            named = doc.get("issuer") if isinstance(doc, dict) else None
            if not isinstance(named, str) or named.rstrip("/") != issuer.rstrip("/"):
                # RFC 8414 §3.3: a document for another issuer must not be used (mix-up attacks).
                raise GrantError(
                    "discovery_failed",
                    f"{url} describes issuer {named!r}, not {issuer!r}",
                    terminal=True,
                )
            endpoints = Endpoints(
                _https(doc.get("token_endpoint")),
                _https(doc.get("authorization_endpoint")),
                _https(doc.get("device_authorization_endpoint")),
                _https(doc.get("revocation_endpoint")),
            )
            with _cache_lock:
                _cache[issuer] = endpoints
            return endpoints
    raise GrantError("discovery_failed", f"issuer {issuer}: {last}", terminal=True)


def _https(value: object) -> str | None:
    return value if isinstance(value, str) and value.startswith("https://") else None
