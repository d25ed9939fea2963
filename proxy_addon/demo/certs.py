"""Throwaway TLS certificates for the demo servers, from a private CA (trustme)."""

from __future__ import annotations

import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import trustme

__all__ = ["Pki", "make_pki"]


@dataclass(frozen=True, slots=True)
class Pki:
    """PEM files of a private CA and of one server certificate it issued."""

    ca_cert: Path
    server_cert: Path  # leaf followed by the CA, so clients get the whole chain
    server_key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.server_cert, self.server_key)
        context.set_alpn_protocols(["http/1.1"])
        return context


def make_pki(directory: Path, names: Sequence[str] = ("localhost", "127.0.0.1")) -> Pki:
    """A new CA and a server certificate for `names` (host names, IPs or wildcards)."""
    if not names:
        raise ValueError("a server certificate needs at least one name")
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="authproxy demo CA")
    leaf = ca.issue_cert(*names)
    pki = Pki(directory / "ca.pem", directory / "server-chain.pem", directory / "server-key.pem")
    _write(pki.ca_cert, ca.cert_pem.bytes(), 0o644)
    # trustme's chain stops below the root; the CA is appended so the file is leaf + CA.
    chain = [blob.bytes() for blob in leaf.cert_chain_pems]
    _write(pki.server_cert, b"".join([*chain, ca.cert_pem.bytes()]), 0o644)
    _write(pki.server_key, leaf.private_key_pem.bytes(), 0o600)
    return pki


def _write(path: Path, data: bytes, mode: int) -> None:
    # Created with its final mode, so a private key is never readable by others, even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as file:
        os.fchmod(file.fileno(), mode)  # os.open ignores the mode when the file already existed
        file.write(data)
