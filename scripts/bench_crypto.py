"""The cost of the signatures the proxy makes: one client assertion (private_key_jwt, per
algorithm, and client_secret_jwt), one JWT-bearer assertion, one GitHub App JWT, and one DPoP
proof, in microseconds (median of repeated batches, key loading excluded: keys are cached).

Run: `.venv/bin/python scripts/bench_crypto.py` (or `--n 2000`)."""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from proxy_addon.config import CredentialConfig
from proxy_addon.dpop import DpopKey, proof
from proxy_addon.grants.client_auth import prepare
from proxy_addon.grants.github_app import app_jwt_claims
from proxy_addon.grants.keys import sign

ENDPOINT = "https://idp.example/token"


def per_call_us(fn: Callable[[], object], n: int, batches: int = 5) -> float:
    fn()  # warm the key cache
    times = []
    for _ in range(batches):
        started = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - started) / n * 1e6)
    return statistics.median(times)


def write_key(directory: Path, name: str, key: object) -> str:
    path = directory / name
    pem = key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )  # fmt: skip
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=500, help="calls per batch")
    n = parser.parse_args().n
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    keys = {
        "RS256": rsa_key,
        "PS256": rsa_key,
        "ES256": ec.generate_private_key(ec.SECP256R1()),
        "EdDSA": ed25519.Ed25519PrivateKey.generate(),
    }
    rows: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for alg, key in keys.items():
            path = write_key(Path(tmp), f"{alg}.pem", key)
            cfg = CredentialConfig(
                "bench", "client_credentials", token_url=ENDPOINT, client_id="bench",
                client_auth="private_key_jwt",
                options={"private_key_file": path, "signing_alg": alg},
            )  # fmt: skip
            # As a grant does: the key read once (at start), an assertion per request.
            authenticate = prepare(cfg)
            rows.append((f"client assertion private_key_jwt {alg}", per_call_us(
                lambda auth=authenticate: auth(ENDPOINT), n)))  # fmt: skip
        secret_cfg = CredentialConfig(
            "bench", "client_credentials", token_url=ENDPOINT, client_id="bench",
            client_secret="s" * 32, client_auth="client_secret_jwt",
        )  # fmt: skip
        secret_auth = prepare(secret_cfg)
        rows.append(("client assertion client_secret_jwt HS256",
                     per_call_us(lambda: secret_auth(ENDPOINT), n)))  # fmt: skip
    rows.append(("GitHub App JWT RS256",
                 per_call_us(lambda: sign(app_jwt_claims("1"), rsa_key, "RS256"), n)))  # fmt: skip
    dpop_key = DpopKey.generate()
    rows.append(("DPoP proof ES256 (resource request, with ath)", per_call_us(
        lambda: proof(dpop_key, "GET", "https://api.example/v1/items?q=1",
                      access_token="x" * 40, nonce="n-1"), n)))  # fmt: skip
    for name, us in rows:
        print(f"{name:<48} {us:9.1f} µs")


if __name__ == "__main__":
    main()
