"""`authproxy env` and `authproxy exec`: point other programs at the proxy.

`env` prints shell lines that set the proxy variables and a CA bundle trusting the system's CAs,
the proxy's CA and the config's private CAs, in the spelling each common tool reads (curl, wget,
git, Python requests/httpie, Node, the AWS SDKs). `exec` runs one command with that environment,
through the configured proxy if it is listening, else through a temporary proxy of its own that
it stops afterwards.

The files the environment points at are written under authproxy's XDG state directory
(`~/.local/state/authproxy/clients/<tag>/`, one directory per proxy CA and set of the user's
own CA files): `authproxy-ca-bundle.pem`, `authproxy-extra-ca.pem` (the proxy CA and the private
CAs, for NODE_EXTRA_CA_CERTS), `authproxy-wgetrc` (wget 1.21 ignores SSL_CERT_FILE),
`authproxy-node-proxy.cjs` (Node before 22.21 ignores HTTP(S)_PROXY; see `NODE_PRELOAD`) and
`authproxy-truststore.p12` (JVM tools, through JAVA_TOOL_OPTIONS).

The user's own settings are extended, not replaced: CA files already named by the bundle
variables stay trusted (they join the bundle), and NO_PROXY keeps the user's entries, except
those that would send a routed host around the proxy.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import ipaddress
import os
import re
import secrets
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import IO
from urllib.parse import quote

from .config import Config, load_config
from .ownproxy import NotOurProxy, proxy_status
from .store.paths import ensure_private_dir

__all__ = [
    "ONE_TIME_AUTH_ENV", "SHELLS", "WrapError", "environment", "hidden_variables", "prepare_files",
    "register", "render",
]  # fmt: skip

SHELLS = ("sh", "fish", "powershell")
NO_PROXY = "localhost,127.0.0.1,::1"
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
# How exec hands its temporary proxy the one-time proxy password (`authproxy run` reads it).
ONE_TIME_AUTH_ENV = "AUTHPROXY_ONE_TIME_PROXY_AUTH"
_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 10.0
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n.+?-----END CERTIFICATE-----", re.S)


class WrapError(Exception):
    """`env` or `exec` cannot go on; str() says why and what to do."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# --- the environment ---------------------------------------------------------------------------


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


def client_host(listen_host: str) -> str:
    """Where a client on this machine reaches a proxy listening on `listen_host`."""
    if listen_host in ("", "0.0.0.0"):  # noqa: S104 (a comparison, not a bind)
        return "127.0.0.1"
    if listen_host == "::":
        return "::1"
    return listen_host


def proxy_url(config: Config, host: str, port: int, auth: str | None = None) -> str:
    """The proxy URL, with `auth` ("user:password", else the config's proxy_auth) in it."""
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    auth = auth or config.proxy_auth
    if auth:
        user, _, password = auth.partition(":")
        netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{netloc}"
    return f"http://{netloc}"


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
    bundle = _pem_bundle(parts)
    _write_if_changed(files.bundle, bundle)
    _write_if_changed(
        files.extra_ca,
        _pem_bundle(
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


def environment(
    config: Config,
    host: str,
    port: int,
    files: Files,
    current: Mapping[str, str] = os.environ,
    auth: str | None = None,
) -> dict[str, str]:
    """The variables to set, in a stable order. `current` supplies NO_PROXY, NODE_OPTIONS and
    JAVA_TOOL_OPTIONS to extend; `auth` replaces the config's proxy_auth in the proxy URL."""
    url = proxy_url(config, host, port, auth)
    bypass = no_proxy_entries(config, current)
    env = {
        "HTTP_PROXY": url,
        "HTTPS_PROXY": url,
        "http_proxy": url,
        "https_proxy": url,
        "NO_PROXY": ",".join(bypass),
        "no_proxy": ",".join(bypass),
    }
    env.update(dict.fromkeys(BUNDLE_VARIABLES, str(files.bundle)))
    env["NODE_EXTRA_CA_CERTS"] = str(files.extra_ca)
    env["WGETRC"] = str(files.wgetrc)
    # Node >= 22.21 / 24.5 honours HTTP(S)_PROXY itself under this; older Node gets the preload.
    env["NODE_USE_ENV_PROXY"] = "1"
    env["NODE_OPTIONS"] = _node_options(current.get("NODE_OPTIONS", ""), files.node_preload)
    if files.truststore is not None:
        env["JAVA_TOOL_OPTIONS"] = java_options(
            current.get("JAVA_TOOL_OPTIONS", ""), host, port, bypass, files.truststore
        )
    return env


def no_proxy_entries(config: Config, current: Mapping[str, str]) -> list[str]:
    """The user's NO_PROXY (and no_proxy) entries and loopback, minus every entry that covers
    a routed host: a client must never call a routed host around the proxy."""
    entries: list[str] = []
    for raw in (current.get("NO_PROXY", ""), current.get("no_proxy", ""), NO_PROXY):
        for entry in raw.split(","):
            entry = entry.strip()
            if entry and entry not in entries:
                entries.append(entry)
    return [e for e in entries if not any(covers(e, r.host) for r in config.routes)]


def covers(entry: str, route_host: str) -> bool:
    """Would a client skip the proxy for some host of `route_host` (a route's normalized host
    or `*.` pattern) because of the NO_PROXY `entry`? Read as curl, Python, Go and Node read
    it: `*` for all, a name for itself and the names below it, an address, a CIDR range."""
    entry = entry.strip().lower()
    if entry == "*":
        return True
    wildcard = route_host.startswith("*.")
    base = route_host.removeprefix("*.")
    with contextlib.suppress(ValueError):
        net = ipaddress.ip_network(entry.strip("[]"), strict=False)
        with contextlib.suppress(ValueError):
            return ipaddress.ip_address(base) in net
        return False
    name = entry.removeprefix("*").removeprefix(".")
    if name.count(":") == 1:  # host:port
        name = name.rpartition(":")[0]
    name = name.rstrip(".")
    if not name:
        return False
    if base == name or base.endswith("." + name):
        return True
    return wildcard and name.endswith("." + base)  # a name below a routed wildcard


def java_options(existing: str, host: str, port: int, bypass: Sequence[str], store: Path) -> str:
    """JAVA_TOOL_OPTIONS: the proxy and the truststore as system properties, ahead of the
    user's own options (a later -D wins, so the user's still can override ours)."""
    hosts = "|".join(
        ("*" + e if e.startswith(".") else e).replace("[", "").replace("]", "") for e in bypass
    )
    props = {
        "http.proxyHost": host, "http.proxyPort": str(port),
        "https.proxyHost": host, "https.proxyPort": str(port),
        # Set even when empty: Java's own default leaves out localhost, where routes may be.
        "http.nonProxyHosts": hosts,
        "javax.net.ssl.trustStore": str(store),
        "javax.net.ssl.trustStoreType": "PKCS12",
        "javax.net.ssl.trustStorePassword": TRUSTSTORE_PASSWORD,
    }  # fmt: skip
    ours = " ".join(_java_quote(f"-D{k}={v}") for k, v in props.items())
    if ours in existing:
        return existing
    return f"{ours} {existing}".strip()


def _java_quote(option: str) -> str:
    # The JVM splits JAVA_TOOL_OPTIONS on white space, and takes '...' or "..." as one.
    return f'"{option}"' if re.search(r"\s|'", option) else option


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
    for i, match in enumerate(_PEM_CERT.finditer(bundle)):
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


def render(env: Mapping[str, str], shell: str) -> str:
    if shell == "sh":
        head = '# eval "$(authproxy env)"'
        lines = [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
    elif shell == "fish":
        head = "# authproxy env --shell fish | source"
        lines = [f"set -gx {k} {_fish_quote(v)}" for k, v in env.items()]
    elif shell == "powershell":
        head = "# authproxy env --shell powershell | Out-String | Invoke-Expression"
        lines = [f"$env:{k} = {_powershell_quote(v)}" for k, v in env.items()]
    else:
        raise ValueError(f"unknown shell {shell!r}")
    return "\n".join([head, *lines]) + "\n"


def _fish_quote(value: str) -> str:
    # In fish's single quotes only \\ and \' are escapes.
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _powershell_quote(value: str) -> str:
    # PowerShell takes the typographic single quotes as quotes too; doubling escapes each.
    return "'" + re.sub("(['\u2018\u2019\u201a\u201b])", r"\1\1", value) + "'"


def _node_options(existing: str, preload: Path) -> str:
    if str(preload) in existing:
        return existing
    path = str(preload)
    if re.search(r'[\s"\\]', path):
        path = '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'
        option = f"--require {path}"
    else:
        option = f"--require={path}"
    return f"{option} {existing}".strip()


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


def _pem_bundle(parts: Sequence[tuple[str, bytes]]) -> bytes:
    """The certificates of each part under a comment naming it, each certificate once."""
    seen: set[bytes] = set()
    out = [b"# Written by authproxy: the CAs that clients of the proxy trust.\n"]
    for label, data in parts:
        certs = []
        for match in _PEM_CERT.finditer(data):
            cert = match.group(0).replace(b"\r\n", b"\n")
            if cert not in seen:
                seen.add(cert)
                certs.append(cert + b"\n")
        if certs:
            out.append(f"\n# {label}\n".encode(errors="replace"))
            out += certs
    return b"".join(out)


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


# --- the commands -------------------------------------------------------------------------------


Loader = Callable[..., tuple[Path, Config]]  # (args, *, need_secrets=True)


def register(sub: argparse._SubParsersAction, load: Loader) -> None:  # type: ignore[type-arg]
    """Add `env` and `exec` to the `authproxy` command's subcommands."""
    env = sub.add_parser(
        "env",
        help="print shell commands that point programs at the proxy",
        description="Print shell commands that set HTTP(S)_PROXY and a CA bundle trusting the "
        'proxy (for curl, wget, git, Python, Node, ...). Use: eval "$(authproxy env)"; '
        "authproxy env --shell fish | source; authproxy env --shell powershell | Out-String | "
        "Invoke-Expression.",
    )
    env.add_argument("--shell", choices=SHELLS, default="sh", help="output syntax (sh)")
    env.set_defaults(func=functools.partial(_cmd_env, load=load))

    run = sub.add_parser(
        "exec",
        help="run a command through the proxy (starting one for it if none is running)",
        description="Run CMD with the environment of `authproxy env`. If the configured proxy "
        "is not listening, a temporary one is started for the command and stopped after it. "
        "Exits with CMD's status (128+N if a signal N ended it).",
    )
    run.add_argument("command", nargs=argparse.REMAINDER, metavar="[--] CMD [ARG ...]")
    run.set_defaults(func=functools.partial(_cmd_exec, load=load))


def _cmd_env(args: argparse.Namespace, load: Loader) -> int:
    _, config = load(args, need_secrets=False)  # it only talks to the proxy
    try:
        files = prepare_files(config)
    except WrapError as e:
        print(f"authproxy: {e}", file=sys.stderr)
        return e.exit_code
    host = client_host(config.listen_host)
    try:
        proxy_status(host, config.listen_port, config.proxy_auth)
    except NotOurProxy as e:
        print(
            f"authproxy: {host}:{config.listen_port} is not your authproxy: {e}. Not pointing "
            "programs at it; stop what listens there, or give the proxy another listen port",
            file=sys.stderr,
        )
        return 2
    except OSError:
        pass  # not running yet: the settings hold for when it is
    sys.stdout.write(render(environment(config, host, config.listen_port, files), args.shell))
    return 0


def _cmd_exec(args: argparse.Namespace, load: Loader) -> int:
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        print("authproxy exec: a command to run is required", file=sys.stderr)
        return 2
    # A temporary proxy reads the config (and needs its secrets) itself.
    path, config = load(args, need_secrets=False)
    try:
        with _Signals() as signals:
            return _exec(path, config, command, signals)
    except WrapError as e:
        print(f"authproxy: {e}", file=sys.stderr)
        return e.exit_code


def _exec(path: Path, config: Config, command: list[str], signals: _Signals) -> int:
    hidden = hidden_variables(path)
    host = client_host(config.listen_host)
    try:
        proxy_status(host, config.listen_port, config.proxy_auth)
    except NotOurProxy as e:
        print(
            f"authproxy exec: {host}:{config.listen_port} is not your authproxy ({e}); "
            "using a temporary proxy",
            file=sys.stderr,
        )
    except OSError:
        pass  # nothing answers there: a temporary proxy
    else:
        try:
            files = prepare_files(config)
        except WrapError as e:
            raise WrapError(
                f"something listens on {host}:{config.listen_port}, but {e}", exit_code=2
            ) from None
        env = environment(config, host, config.listen_port, files)
        return _run_command(command, env, signals, hidden)

    # A password for the command alone: other users can neither read nor guess it, and the
    # temporary proxy (authproxy_peer_check=strict) still refuses their connections.
    auth = f"authproxy:{secrets.token_urlsafe(24)}"
    with tempfile.TemporaryFile() as log:
        proxy, port = _start_proxy(path, log, signals, auth)
        try:
            ca = mitmproxy_confdir(config) / MITMPROXY_CA
            interrupted = _await_proxy(proxy, port, ca, signals, auth)
            if interrupted is not None:
                return 128 + interrupted
            files = prepare_files(config)
            env = environment(config, "127.0.0.1", port, files, auth=auth)
            return _run_command(command, env, signals, hidden)
        except _StartFailed as e:
            _stop(proxy)
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace"))
            raise WrapError(f"the temporary proxy did not start: {e}", exit_code=2) from None
        finally:
            _stop(proxy)


# Read by many configs for paths, never secret, and needed by most commands.
_NOT_SECRET = frozenset({"HOME", "USER", "LOGNAME", "PATH", "PWD", "SHELL", "TMPDIR", "LANG"})


class _Recording(Mapping[str, str]):
    """An environment that remembers which variables were read from it."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env
        self.read: set[str] = set()

    def __getitem__(self, name: str) -> str:
        value = self._env[name]
        self.read.add(name)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._env)

    def __len__(self) -> int:
        return len(self._env)


def hidden_variables(path: Path, env: Mapping[str, str] = os.environ) -> set[str]:
    """What `exec` keeps from the command: AUTHPROXY_KEY and each variable the config
    interpolates (${VAR}: client secrets, refresh tokens), but for plain paths like HOME."""
    recording = _Recording(env)
    load_config(path, recording, need_secrets=False)
    used = {n for n in recording.read if n not in _NOT_SECRET and not n.startswith("XDG_")}
    return {"AUTHPROXY_KEY", ONE_TIME_AUTH_ENV} | used


class _StartFailed(Exception):
    pass


def _our_proxy(host: str, port: int, auth: str) -> bool:
    try:
        proxy_status(host, port, auth)
    except OSError:
        return False  # not listening yet
    except NotOurProxy as e:
        raise _StartFailed(f"127.0.0.1:{port} answers, but {e}") from None
    return True


def _start_proxy(
    path: Path, log: IO[bytes], signals: _Signals, auth: str
) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    argv = [
        sys.executable, "-m", "proxy_addon", "--config", str(path),
        "run", "-q", "--listen", f"127.0.0.1:{port}", "--set", "authproxy_peer_check=strict",
    ]  # fmt: skip
    parent = os.getpid()

    def setup() -> None:  # in the child, between fork and exec (exec has no other threads)
        signals.child_setup()
        # Should exec die without cleaning up (SIGKILL), the proxy goes too (Linux).
        if _prctl is not None:
            _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() != parent:
                os._exit(1)

    posix = os.name == "posix"
    proxy = subprocess.Popen(
        argv,
        env={**os.environ, ONE_TIME_AUTH_ENV: auth},  # not in argv: every user can read that
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        # Its own session: a Ctrl-C on the terminal is for the command, not for the proxy.
        start_new_session=posix,
        preexec_fn=setup if posix else None,
    )
    return proxy, port


def _await_proxy(
    proxy: subprocess.Popen[bytes], port: int, ca: Path, signals: _Signals, auth: str
) -> int | None:
    """Until the proxy answers and has its CA; a signal number if one came first. Another
    user may have taken the port first: it must be this user's authproxy answering."""
    deadline = time.monotonic() + _START_TIMEOUT
    while True:
        if proxy.poll() is not None:
            raise _StartFailed(f"it exited with status {proxy.returncode}")
        if ca.is_file() and _our_proxy("127.0.0.1", port, auth):
            return None
        if time.monotonic() > deadline:
            raise _StartFailed(f"it did not listen on 127.0.0.1:{port} within {_START_TIMEOUT:g}s")
        got = signals.wait(0.05)  # the pause between polls, cut short by a signal
        if got is not None and got[0] in _FORWARDED:
            return got[0]


def _stop(proxy: subprocess.Popen[bytes]) -> None:
    if proxy.poll() is None:
        proxy.terminate()
        try:
            proxy.wait(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proxy.kill()
            proxy.wait()


def _run_command(
    command: list[str], env_vars: Mapping[str, str], signals: _Signals, hidden: set[str]
) -> int:
    env = {k: v for k, v in os.environ.items() if k not in hidden} | dict(env_vars)
    try:
        child = subprocess.Popen(
            command, env=env, preexec_fn=signals.child_setup if signals.blocking else None
        )
    except FileNotFoundError:
        print(f"authproxy exec: {command[0]}: command not found", file=sys.stderr)
        return 127
    except OSError as e:
        print(f"authproxy exec: {command[0]}: {e.strerror or e}", file=sys.stderr)
        return 126
    while (code := child.poll()) is None:
        got = signals.wait(1.0)  # SIGCHLD ends the wait as soon as the command exits
        if got is None or got[0] not in _FORWARDED:
            continue
        signum, from_terminal = got
        # The terminal signals its whole foreground process group, the command included:
        # passing that on again would make it see one Ctrl-C twice.
        if not from_terminal:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signum)
    return 128 - code if code < 0 else code


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- signals ------------------------------------------------------------------------------------

_FORWARDED = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)
_SI_KERNEL = 0x80  # si_code of a signal the kernel sent, e.g. the terminal's Ctrl-C
_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


_prctl = _load_prctl()


class _Signals:
    """SIGINT, SIGTERM and SIGHUP (and SIGCHLD) as events exec waits for, from start to end.

    Where the platform has sigtimedwait (Linux) they are blocked and collected with the sender's
    si_code, so a signal arriving at any moment is neither lost nor runs a handler midway; the
    children get the original mask back (`child_setup`). Elsewhere, handlers queue them.
    """

    def __init__(self) -> None:
        self.blocking = hasattr(signal, "sigtimedwait") and hasattr(signal, "SIGCHLD")
        self._watched = set(_FORWARDED)
        self._pending: list[int] = []
        self._handlers: dict[int, object] = {}
        self._mask: set[signal.Signals] = set()
        self._chld: object = None

    def __enter__(self) -> _Signals:
        if hasattr(signal, "SIGCHLD"):
            # An ignored SIGCHLD (inherited) would reap the command before we read its status.
            self._chld = signal.getsignal(signal.SIGCHLD)
            if self._chld == signal.SIG_IGN:
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        if self.blocking:
            self._watched.add(signal.SIGCHLD)
            self._mask = signal.pthread_sigmask(signal.SIG_BLOCK, self._watched)
        else:
            for signum in _FORWARDED:
                self._handlers[signum] = signal.signal(signum, self._queue)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.blocking:
            while signal.sigtimedwait(self._watched, 0) is not None:
                pass  # drained: nothing left to fire when unblocked
            signal.pthread_sigmask(signal.SIG_SETMASK, self._mask)
        else:
            for signum, handler in self._handlers.items():
                signal.signal(signum, handler)  # type: ignore[arg-type]
        if self._chld == signal.SIG_IGN:
            signal.signal(signal.SIGCHLD, signal.SIG_IGN)

    def child_setup(self) -> None:
        """In a child between fork and exec: the signal mask exec found."""
        if self.blocking:
            signal.pthread_sigmask(signal.SIG_SETMASK, self._mask)

    def wait(self, timeout: float) -> tuple[int, bool] | None:
        """The next signal (number, sent by the kernel?), or None after `timeout` seconds."""
        if self.blocking:
            info = signal.sigtimedwait(self._watched, timeout)
            return None if info is None else (info.si_signo, info.si_code == _SI_KERNEL)
        deadline = time.monotonic() + timeout
        while not self._pending and time.monotonic() < deadline:
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        return (self._pending.pop(0), False) if self._pending else None

    def _queue(self, signum: int, frame: object) -> None:
        self._pending.append(signum)
