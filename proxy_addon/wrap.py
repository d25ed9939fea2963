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

This module holds the two commands; the work is in `cafiles` (the files), `env_render` (the
variables and their shell syntax, pure) and `tempproxy` (exec's temporary proxy, the command's
environment and the signals it passes on). Their public names are re-exported here.
"""

from __future__ import annotations

import argparse
import functools
import secrets
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from .cafiles import (
    BUNDLE,
    BUNDLE_VARIABLES,
    EXTRA_CA,
    MITMPROXY_CA,
    NODE_PRELOAD,
    TRUSTSTORE,
    WGETRC,
    Files,
    WrapError,
    mitmproxy_confdir,
    prepare_files,
)  # fmt: skip
from .config import Config
from .env_render import (
    NO_PROXY,
    SHELLS,
    client_host,
    covers,
    environment,
    java_options,
    no_proxy_entries,
    proxy_url,
    render,
)  # fmt: skip
from .ownproxy import NotOurProxy, proxy_status
from .tempproxy import (
    ONE_TIME_AUTH_ENV,
    _await_proxy,
    _run_command,
    _Signals,
    _start_proxy,
    _StartFailed,
    _stop,
    hidden_variables,
)  # fmt: skip

__all__ = [
    "BUNDLE", "BUNDLE_VARIABLES", "EXTRA_CA", "MITMPROXY_CA", "NODE_PRELOAD", "NO_PROXY",
    "ONE_TIME_AUTH_ENV", "SHELLS", "TRUSTSTORE", "WGETRC", "Files", "WrapError", "client_host",
    "covers", "environment", "hidden_variables", "java_options", "mitmproxy_confdir",
    "no_proxy_entries", "prepare_files", "proxy_url", "register", "render",
]  # fmt: skip


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
