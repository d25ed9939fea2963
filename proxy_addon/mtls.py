"""Mutual TLS to APIs (RFC 8705), per route: the certificate a certificate-bound token needs
on the API call too. mitmproxy's own `client_certs` option is one file (or one per SNI) for
the whole proxy; here a route names `client_certificate_file` and `client_key_file`, and the
addon puts them on the upstream TLS connection of that route's host and port only.

The key must be owner-only and unencrypted, and the certificate the key's (checked at start
and on a reload, before the token store is opened: `runtime.check_route_files`); neither is
ever logged.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .grants.keys import KeyFileError, check_tls_pair, load_tls_pair

if TYPE_CHECKING:
    from .routes import Route

__all__ = ["cert_routes", "check_route_certs", "client_cert_for", "present_client_cert"]


def cert_routes(routes: Iterable[Route]) -> tuple[Route, ...]:
    """The routes that name a client certificate, in file order."""
    return tuple(r for r in routes if r.client_cert is not None)


def check_route_certs(routes: Iterable[Route]) -> None:
    """Raise `KeyFileError` (naming the route) for a route whose files cannot be used."""
    for r in routes:
        if r.client_cert is not None:
            try:
                check_tls_pair(*r.client_cert)
            except KeyFileError as e:
                raise e.under(f"routes[{r.index}]") from None


def client_cert_for(routes: tuple[Route, ...], host: str, port: int) -> tuple[str, str] | None:
    """The first certificate route for this upstream host and port (TLS starts before any
    path is known, so a host and port have one client certificate)."""
    for r in routes:
        if r.matches_host(host, port):
            return r.client_cert
    return None


def present_client_cert(ssl_conn: Any, cert: str, key: str) -> None:
    """Put the client certificate on one pyOpenSSL connection before its handshake."""
    certificate, private_key = load_tls_pair(cert, key)  # cached while the files are unchanged
    ssl_conn.use_certificate(certificate)
    ssl_conn.use_privatekey(private_key)
