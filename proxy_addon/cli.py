"""The `authproxy` command."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from . import hints, init_command, token_commands, wrap
from .config import Config, ConfigError, config_path, load_config
from .store import StoreError

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    # SIGTERM ends a command as Ctrl-C does: its `finally` blocks run (the store is closed, a
    # temporary proxy stopped), without a traceback. `run` installs its own handlers.
    signal.signal(signal.SIGTERM, _terminate)
    hints.use_config(args.config)  # advice such as `authproxy login NAME` names it too
    try:
        return int(args.func(args) or 0)
    except (ConfigError, StoreError) as e:
        print(f"authproxy: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return _closed_pipe()


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _closed_pipe() -> int:
    """The reader went away (`authproxy check | head`): stop quietly. Python would still try
    to flush stdout at exit and print a traceback about that; point stdout at /dev/null."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 128 + signal.SIGPIPE


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(
        prog="authproxy",
        description="A forward proxy that adds OAuth 2 Bearer tokens to outgoing API calls.",
    )
    p.add_argument("--config", help=_CONFIG_HELP)
    p.add_argument("--version", action="version", version=f"authproxy {__version__}")
    sub = p.add_subparsers(metavar="COMMAND")

    run = sub.add_parser("run", help="run the proxy")
    run.add_argument(
        "--listen", metavar="[HOST:]PORT",
        help="override the config's listen address (a port alone: 127.0.0.1)",
    )  # fmt: skip
    run.add_argument("-w", "--save-flows", metavar="FILE", help="save flows (redacted) to FILE")
    run.add_argument("-q", "--quiet", action="store_true", help="do not print each request")
    run.add_argument(
        "--web",
        action="store_true",
        help="also serve mitmproxy's web UI (127.0.0.1:8081; --set web_port=N to change)",
    )
    run.add_argument("--audit-log", metavar="FILE", help="append one JSON line per API call")
    run.add_argument(
        "--grace", type=float, default=5.0, metavar="SECONDS",
        help="on SIGTERM/SIGINT, how long requests in flight may take to finish (5)",
    )  # fmt: skip
    run.add_argument(
        "--workers", default="1", metavar="N",
        help="proxy processes sharing the listen address (1; auto: one per core)",
    )  # fmt: skip
    run.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="OPTION=VALUE",
        help="set a mitmproxy option, as with mitmdump --set",
    )
    run.set_defaults(func=_cmd_run)

    check = sub.add_parser("check", help="validate the config and print the route table")
    check.set_defaults(func=_cmd_check)

    reload = sub.add_parser(
        "reload", help="make the running proxy re-read its config and store key (SIGHUP)"
    )
    reload.set_defaults(func=_cmd_reload)

    demo = sub.add_parser(
        "demo", help="run a local OAuth server, a local API and the proxy, and call through it"
    )
    demo.add_argument("--once", action="store_true", help="make the demo call, then stop")
    demo.set_defaults(func=_cmd_demo)

    init_command.register(sub)
    token_commands.register(sub, _load)
    wrap.register(sub, _load)

    rotate = sub.add_parser(
        "rotate-key", help="re-encrypt the token store under a new key (old key kept readable)"
    )
    rotate.set_defaults(func=_cmd_rotate_key)

    completion = sub.add_parser("completion", help="print a shell completion script")
    completion.add_argument("shell", choices=("bash", "zsh", "fish"))
    completion.set_defaults(func=lambda args: _cmd_completion(p, args))

    # --config after the subcommand too (`authproxy check --config FILE`); SUPPRESS keeps a
    # --config given before it.
    for name, parser in sub.choices.items():
        if "--config" not in parser._option_string_actions:
            parser.add_argument("--config", default=argparse.SUPPRESS, help=_CONFIG_HELP)
        if not parser.description:
            parser.description = _help_of(sub, name)
    return p


_CONFIG_HELP = (
    "configuration file (default: $AUTHPROXY_CONFIG, else ~/.config/authproxy/config.yaml); "
    "before or after the command"
)


def _help_of(sub: argparse._SubParsersAction, name: str) -> str | None:  # type: ignore[type-arg]
    for action in sub._choices_actions:
        if action.dest == name and action.help:
            return action.help[0].upper() + action.help[1:] + "."
    return None


def _cmd_completion(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from .completion import script

    sys.stdout.write(script(parser, args.shell))
    return 0


def parse_listen(value: str) -> tuple[str, int]:
    """--listen: HOST:PORT, [IPv6]:PORT, or a PORT alone (loopback)."""
    if value.isdigit():
        host, port = "127.0.0.1", value
    else:
        host, _, port = value.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        elif ":" in host:
            raise ConfigError(
                "--listen", "", f"write an IPv6 address in brackets, e.g. [::1]:8080, not {value!r}"
            )
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError("--listen", "", f"expected [HOST:]PORT, got {value!r}")
    return host, int(port)


def host_port(host: str, port: int) -> str:
    """host:port as a person writes it: an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _load(args: argparse.Namespace, *, need_secrets: bool = True) -> tuple[Path, Config]:
    """The config of --config (else the default); see load_config for `need_secrets`."""
    path = config_path(args.config)
    return path, load_config(path, need_secrets=need_secrets)


def _cmd_run(args: argparse.Namespace) -> int:
    from .portcheck import effective_listen, listen_problem
    from .runner import RunOptions, StartupError, run

    path, config = _load(args)
    listen = parse_listen(args.listen) if args.listen else None
    # Before anything opens or creates the token store: a start that cannot listen changes nothing.
    if problem := listen_problem(*effective_listen(listen, config, args.sets)):
        print(f"authproxy: {problem}", file=sys.stderr)
        return 2
    from .supervisor import supervise

    try:
        return supervise(
            args.workers,
            run,
            RunOptions(
                path,
                config,
                listen,
                save_flows=args.save_flows,
                quiet=args.quiet,
                web=args.web,
                audit_log=args.audit_log,
                sets=tuple(args.sets),
                grace=args.grace,
            )
        )
    except StartupError as e:
        print(f"authproxy: {e}", file=sys.stderr)
        return 2


def _cmd_check(args: argparse.Namespace) -> int:
    import os

    from .config_lint import bypass_warnings, config_warnings

    path, config = _load(args)
    _check_like_run(config)  # raises what `run` would refuse at start
    for warning in config_warnings(config) + bypass_warnings(config, os.environ):
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{path}: OK")
    print(f"listen: {host_port(config.listen_host, config.listen_port)}")
    _print_store(config)
    print("credentials:")
    for c in config.credentials.values():
        where = f" via {c.token_url}" if c.token_url else ""
        scopes = f" scopes={' '.join(c.scopes)}" if c.scopes else ""
        print(f"  {c.name}: {c.grant}{where}{scopes}")
    print("routes (first match wins):")
    if not config.routes:
        print("  (none: nothing will be authenticated)")
    for r in config.routes:
        extra = "" if r.existing_authorization == "replace" else f" ({r.existing_authorization}"
        extra += " client Authorization)" if extra else ""
        print(f"  {r.index}: {r.describe():<50} -> {r.credential}{extra}")
    return 0


def _cmd_reload(args: argparse.Namespace) -> int:
    import os
    import signal

    from .env_render import client_host
    from .netutil import host_for_url
    from .ownproxy import NotOurProxy, proxy_status

    path, config = _load(args)
    host, port = client_host(config.listen_host), config.listen_port
    where = f"{host_for_url(host)}:{port}"
    try:
        status = proxy_status(host, port, config.proxy_auth, timeout=5.0)
    except NotOurProxy as e:
        print(f"authproxy: not reloading {where}: it is not your authproxy ({e})", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"authproxy: no proxy answers at {where} ({e.strerror or e}): nothing to reload "
              "(start it with `authproxy run`)", file=sys.stderr)  # fmt: skip
        return 1
    found = status.get("proxy")
    proxy: dict[str, object] = found if isinstance(found, dict) else {}
    pid = proxy.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        print(f"authproxy: the proxy at {where} is too old to be reloaded; restart it instead",
              file=sys.stderr)  # fmt: skip
        return 1
    running = proxy.get("config")
    if running and Path(str(running)).resolve() != path.resolve():
        print(f"authproxy: note: the proxy at {where} runs with {running}, which it re-reads",
              file=sys.stderr)  # fmt: skip
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as e:
        print(f"authproxy: cannot signal the proxy (pid {pid}): {e.strerror}", file=sys.stderr)
        return 1
    print(f"asked the proxy at {where} (pid {pid}) to reload {running or path}; its log says "
          "whether the new config was taken")  # fmt: skip
    return 0


def _check_like_run(config: Config) -> None:
    """What `run` checks beyond the file itself, without creating or changing anything: the
    CA bundle it builds, the key, certificate and service-account files of the credentials
    and routes, and the token store with its key (the rows must decrypt)."""
    from .grants import make_grant
    from .runtime import check_route_files, check_rows, load_grant_keys, open_store, trust_bundle
    from .store import MissingStoreError
    from .store.paths import default_db_path

    trust_bundle(config.ca_certs, config.source)
    for name, cred in config.credentials.items():
        load_grant_keys(config, name, make_grant(cred, True))  # reads files, sends nothing
    check_route_files(config)
    if not config.credentials:
        return
    if config.store.backend == "sqlite" and not (config.store.path or default_db_path()).exists():
        return  # the first `run` creates the store and its key
    try:
        store = open_store(config.store, create=False)
    except MissingStoreError:
        return
    try:
        check_rows(config, store)
    finally:
        store.close()


def _print_store(config: Config) -> None:
    import os

    from .store.registry import BACKENDS

    backend = BACKENDS[config.store.backend]
    print(f"store: {config.store.backend}: {backend.describe(config.store, os.environ)}")
    if backend.fleet and config.confdir is None:
        print(
            f"warning: the {config.store.backend} store is shared by a fleet, but this member "
            "uses its own mitmproxy CA (~/.mitmproxy): set confdir to the fleet's CA files "
            "(deployed as a secret) so that clients trust one CA for every member",
            file=sys.stderr,
        )


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo.run import run_demo

    return run_demo(once=args.once)


def _cmd_rotate_key(args: argparse.Namespace) -> int:
    import os

    from .runtime import open_store
    from .store.keys import ENV_VAR, add_key, load_keys
    from .store.paths import default_key_file
    from .store.registry import BACKENDS
    from .store.sealer import Sealer

    _, config = _load(args)
    backend = BACKENDS[config.store.backend]
    where = backend.describe(config.store, os.environ)
    if not backend.sealed:
        print(f"the {config.store.backend} store keeps nothing encrypted: nothing to re-encrypt")
        return 0
    # Opened with the current keys first: a missing key file over stored rows is lost, not
    # empty, and opening says so instead of starting a new one.
    store = open_store(config.store, create=False)
    try:
        key_file = config.store.key_file or default_key_file()
        if os.environ.get(ENV_VAR):
            print(
                f"authproxy: {ENV_VAR} is set: put a new key first in that variable (comma-"
                "separated, newest first), then run rotate-key again with it",
                file=sys.stderr,
            )
        else:
            print(add_key(key_file, db_path=config.store.path))
        n = store.reseal(Sealer(load_keys(key_file, db_path=config.store.path)))
    finally:
        store.close()
    print(f"re-encrypted {n} credential(s) in {where} under the new key")
    print("running proxies read the new key when they next open a stored token; the old key "
          "stays in the key file until you remove it")  # fmt: skip
    return 0
