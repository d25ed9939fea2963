"""CA bundles: one PEM file out of several, each certificate once. Pure: bytes in, bytes out."""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["PEM_CERT", "pem_bundle"]

PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n.+?-----END CERTIFICATE-----", re.S)


def pem_bundle(parts: Sequence[tuple[str, bytes]]) -> bytes:
    """The certificates of each part under a comment naming it, each certificate once."""
    seen: set[bytes] = set()
    out = [b"# Written by authproxy: the CAs that clients of the proxy trust.\n"]
    for label, data in parts:
        certs = []
        for match in PEM_CERT.finditer(data):
            cert = match.group(0).replace(b"\r\n", b"\n")
            if cert not in seen:
                seen.add(cert)
                certs.append(cert + b"\n")
        if certs:
            out.append(f"\n# {label}\n".encode(errors="replace"))
            out += certs
    return b"".join(out)
