"""The files `authproxy env` and `exec` point programs at: a CA bundle trusting the system's CAs,
the user's own CA files, the config's private CAs and the proxy's CA; NODE_EXTRA_CA_CERTS' file,
a wgetrc, the Node preload and a Java truststore. Written under authproxy's XDG state directory
(`~/.local/state/authproxy/clients/<tag>/`), one directory per proxy CA and set of the user's own
CA files, so that two shells with different CA settings never rewrite each other's bundle.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import ssl
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .config import Config
from .pem import PEM_CERT, pem_bundle
from .store.paths import ensure_private_dir

__all__ = [
    "BUNDLE",
    "BUNDLE_VARIABLES",
    "EXTRA_CA",
    "MITMPROXY_CA",
    "NODE_PRELOAD",
    "TRUSTSTORE",
    "TRUSTSTORE_PASSWORD",
    "WGETRC",
    "Files",
    "WrapError",
    "files_dir",
    "mitmproxy_confdir",
    "prepare_files",
    "user_ca_files",
]  # fmt: skip

MITMPROXY_CA = "mitmproxy-ca-cert.pem"
BUNDLE = "authproxy-ca-bundle.pem"
EXTRA_CA = "authproxy-extra-ca.pem"
WGETRC = "authproxy-wgetrc"
NODE_PRELOAD = "authproxy-node-proxy.cjs"
TRUSTSTORE = "authproxy-truststore.p12"
# Not a secret: a truststore holds public certificates; Java only insists on a password.
TRUSTSTORE_PASSWORD = "changeit"
# The variables that hold the CA bundle: OpenSSL (Python's ssl, Ruby, ...), requests and httpie,
# curl, git, the AWS CLI and SDKs.
BUNDLE_VARIABLES = (
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "AWS_CA_BUNDLE",
)


class WrapError(Exception):
    """`env` or `exec` cannot go on; str() says why and what to do."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code

@dataclass(frozen=True, slots=True)
class Files:
    """What the environment points at, all in one directory of authproxy's state dir."""

    proxy_ca: Path
    bundle: Path
    extra_ca: Path
    wgetrc: Path
    node_preload: Path
    truststore: Path | None = None  # None: this Python cannot write a Java truststore


def user_ca_files(current: Mapping[str, str], variables: Sequence[str]) -> list[Path]:
    """The CA files the user's own environment names, ours left out (a shell where
    `authproxy env` ran already), each once, in the order of `variables`."""
    out: list[Path] = []
    for name in variables:
        value = current.get(name, "")
        if not value:
            continue
        path = Path(value)
        if path.name in (BUNDLE, EXTRA_CA) or not path.is_file() or path in out:
            continue
        out.append(path)
    return out


def files_dir(config: Config, user_cas: Sequence[Path], env: Mapping[str, str]) -> Path:
    """authproxy's state dir, a directory per proxy CA and set of the user's CA files (two
    shells with different CA settings never rewrite each other's bundle)."""
    from .store.paths import default_db_path

    confdir = mitmproxy_confdir(config).resolve()
    key = "\n".join([str(confdir), *(str(p.resolve()) for p in user_cas)])
    tag = hashlib.sha256(key.encode()).hexdigest()[:16]
    return default_db_path(env).parent / "clients" / tag


def mitmproxy_confdir(config: Config) -> Path:
    return config.confdir or Path("~/.mitmproxy").expanduser()

def prepare_files(config: Config, current: Mapping[str, str] = os.environ) -> Files:
    """Write (or refresh) the bundle, wgetrc, Node preload and Java truststore; needs the
    proxy's CA. `current` is the user's environment: the CA files it names stay trusted."""
    confdir = mitmproxy_confdir(config)
    proxy_ca = confdir / MITMPROXY_CA
    if not proxy_ca.is_file():
        raise WrapError(
            f"no proxy CA at {proxy_ca}: mitmproxy creates it when the proxy first starts; "
            "run `authproxy run` once (or use `authproxy exec`)"
        )
    user_cas = user_ca_files(current, (*BUNDLE_VARIABLES, "NODE_EXTRA_CA_CERTS"))
    user_extra = user_ca_files(current, ("NODE_EXTRA_CA_CERTS",))
    where = files_dir(config, user_cas, current)
    try:
        ensure_private_dir(where)
    except OSError as e:
        raise WrapError(f"cannot create {where}: {e.strerror}") from None
    files = Files(
        proxy_ca, where / BUNDLE, where / EXTRA_CA, where / WGETRC, where / NODE_PRELOAD,
        where / TRUSTSTORE if _java_truststore_supported() else None,
    )  # fmt: skip
    own_ca = proxy_ca.read_bytes()
    private = [(str(p), p.read_bytes()) for p in config.ca_certs]
    system = _system_cafile(confdir)
    parts = [(f"system CAs ({system})", system.read_bytes())] if system else []
    parts += [(f"your CA file {p}", _read(p)) for p in user_cas]
    parts += [(f"private CA {name} (ca_certs)", data) for name, data in private]
    parts.append((f"the proxy's CA ({proxy_ca})", own_ca))
    bundle = pem_bundle(parts)
    _write_if_changed(files.bundle, bundle)
    _write_if_changed(
        files.extra_ca,
        pem_bundle(
            [(f"the proxy's CA ({proxy_ca})", own_ca)]
            + [(n, d) for n, d in private]
            + [(f"your CA file {p}", _read(p)) for p in user_extra]
        ),
    )
    if files.truststore is not None:
        _write_truststore(files.truststore, bundle)
    if "\n" in str(files.bundle):
        raise WrapError(f"{files.bundle}: wget cannot read a path with a line break")
    wgetrc = (
        "# Written by authproxy: wget reads this through $WGETRC, as it does not read\n"
        "# SSL_CERT_FILE. While WGETRC is set, wget does not read ~/.wgetrc.\n"
        f"ca_certificate = {files.bundle}\n"
    )
    _write_if_changed(files.wgetrc, wgetrc.encode())
    _write_if_changed(
        files.node_preload, resources.files("proxy_addon").joinpath("node_proxy.cjs").read_bytes()
    )
    return files

def _java_truststore_supported() -> bool:
    from cryptography.hazmat.primitives.serialization import pkcs12

    return hasattr(pkcs12, "serialize_java_truststore")  # cryptography >= 45


def _write_truststore(path: Path, bundle: bytes) -> None:
    """A PKCS12 truststore of the bundle's certificates, rewritten only when they change."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import BestAvailableEncryption, pkcs12

    digest = hashlib.sha256(bundle).hexdigest()
    marker = path.with_name(path.name + ".sha256")
    with contextlib.suppress(OSError):
        if path.is_file() and marker.read_text() == digest:
            return
    certs = []
    for i, match in enumerate(PEM_CERT.finditer(bundle)):
        try:
            with warnings.catch_warnings():  # a system CA with an odd serial: not our news
                warnings.simplefilter("ignore")
                cert = x509.load_pem_x509_certificate(match.group(0))
        except ValueError:
            continue  # one odd certificate must not cost the others
        certs.append(pkcs12.PKCS12Certificate(cert, f"authproxy-{i}".encode()))
    data = pkcs12.serialize_java_truststore(
        certs, BestAvailableEncryption(TRUSTSTORE_PASSWORD.encode())
    )
    _write_if_changed(path, data)
    _write_if_changed(marker, digest.encode())


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise WrapError(f"cannot read the CA file {path}: {e.strerror}") from None

def _system_cafile(confdir: Path) -> Path | None:
    """The system's CA file; never one of ours (SSL_CERT_FILE may already point at it)."""
    paths = ssl.get_default_verify_paths()
    candidates = [
        paths.cafile,
        paths.openssl_cafile,
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/cert.pem",
    ]
    for candidate in candidates:
        if not candidate:
            continue
        path = Path(candidate)
        if path.name in (BUNDLE, EXTRA_CA) or not path.is_file():
            continue
        return path
    try:
        import certifi
    except ImportError:
        return None
    return Path(certifi.where())


def _write_if_changed(path: Path, data: bytes) -> None:
    with contextlib.suppress(OSError):
        if path.read_bytes() == data:
            return
    path.parent.mkdir(parents=True, exist_ok=True)
    # Replaced in one step, so a client starting meanwhile never reads half a bundle.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
