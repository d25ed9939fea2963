"""The `authproxy` command."""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .config import Config, ConfigError, CredentialConfig, config_path, load_config
from .store import StoreError

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ConfigError, StoreError) as e:
        print(f"authproxy: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="authproxy",
        description="A forward proxy that adds OAuth 2 Bearer tokens to outgoing API calls.",
    )
    p.add_argument(
        "--config",
        help="configuration file (default: $AUTHPROXY_CONFIG, else "
        "~/.config/authproxy/config.yaml)",
    )
    sub = p.add_subparsers(metavar="COMMAND")

    run = sub.add_parser("run", help="run the proxy")
    run.add_argument("--listen", metavar="HOST:PORT", help="override the config's listen address")
    run.add_argument("-w", "--save-flows", metavar="FILE", help="save flows (redacted) to FILE")
    run.add_argument("-q", "--quiet", action="store_true", help="do not print each request")
    run.add_argument(
        "--web",
        action="store_true",
        help="also serve mitmproxy's web UI (127.0.0.1:8081; --set web_port=N to change)",
    )
    run.add_argument("--audit-log", metavar="FILE", help="append one JSON line per API call")
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

    demo = sub.add_parser(
        "demo", help="run a local OAuth server, a local API and the proxy, and call through it"
    )
    demo.add_argument("--once", action="store_true", help="make the demo call, then stop")
    demo.set_defaults(func=_cmd_demo)

    login = sub.add_parser("login", help="sign in for a credential and store its tokens")
    login.add_argument("name", help="the credential")
    login.add_argument(
        "--no-browser",
        action="store_true",
        help="do not listen for the redirect: paste the final URL instead (SSH sessions)",
    )
    login.add_argument("--timeout", type=float, default=300.0, help="seconds to wait (300)")
    login.set_defaults(func=_cmd_login)

    logout = sub.add_parser("logout", help="delete a credential's stored tokens (and revoke them)")
    logout.add_argument("name")
    logout.set_defaults(func=_cmd_logout)

    refresh = sub.add_parser("refresh", help="refresh a credential's token now")
    refresh.add_argument("name")
    refresh.set_defaults(func=_cmd_refresh)

    tokens = sub.add_parser("tokens", help="list credentials and their token state (no secrets)")
    tokens.add_argument("--json", action="store_true", help="machine-readable output")
    tokens.set_defaults(func=_cmd_tokens)

    rotate = sub.add_parser(
        "rotate-key", help="re-encrypt the token store under a new key (old key kept readable)"
    )
    rotate.set_defaults(func=_cmd_rotate_key)
    return p


def _load(args: argparse.Namespace) -> tuple[Path, Config]:
    path = config_path(args.config)
    return path, load_config(path)


def _cmd_run(args: argparse.Namespace) -> int:
    from .runner import RunOptions, StartupError, run

    path, config = _load(args)
    listen = None
    if args.listen:
        host, _, port = args.listen.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError("--listen", "", f"expected HOST:PORT, got {args.listen!r}")
        listen = (host.strip("[]"), int(port))
    try:
        return run(
            RunOptions(
                path,
                config,
                listen,
                save_flows=args.save_flows,
                quiet=args.quiet,
                web=args.web,
                audit_log=args.audit_log,
                sets=tuple(args.sets),
            )
        )
    except StartupError as e:
        print(f"authproxy: {e}", file=sys.stderr)
        return 2


def _cmd_check(args: argparse.Namespace) -> int:
    path, config = _load(args)
    print(f"{path}: OK")
    print(f"listen: {config.listen_host}:{config.listen_port}")
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


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo.run import run_demo

    return run_demo(once=args.once)


def _cmd_rotate_key(args: argparse.Namespace) -> int:
    from .store.keys import add_key, load_keys
    from .store.paths import default_db_path, default_key_file
    from .store.sqlite import SqliteStore

    _, config = _load(args)
    db_path = config.store.path or default_db_path()
    key_file = config.store.key_file or default_key_file()
    import os

    if os.environ.get("AUTHPROXY_KEY"):
        print(
            "authproxy: AUTHPROXY_KEY is set: put a new key first in that variable (comma-"
            "separated, newest first), then run rotate-key again with it",
            file=sys.stderr,
        )
    else:
        print(f"added a new key to {add_key(key_file, db_path=db_path)}")
    keyring = load_keys(key_file, db_path=db_path)
    with SqliteStore(db_path, keyring, create=False) as store:
        n = store.rotate(keyring)
    print(f"re-encrypted {n} credential(s) in {db_path} under the newest key")
    return 0


def _credential(config: Config, name: str) -> CredentialConfig:
    if name not in config.credentials:
        known = ", ".join(sorted(config.credentials)) or "none"
        raise ConfigError(
            config.source, "credentials", f"no credential named {name!r} (known: {known})"
        )
    return config.credentials[name]


def _cmd_login(args: argparse.Namespace) -> int:
    from .grants import make_grant
    from .login import LoginError, login
    from .runtime import Runtime

    _, config = _load(args)
    cred = _credential(config, args.name)
    runtime = Runtime.build(config)
    try:
        grant = make_grant(cred, runtime.ca_bundle or True)
        token = login(grant, runtime.store, no_browser=args.no_browser, timeout=args.timeout)  # type: ignore[arg-type]
    except LoginError as e:
        print(f"authproxy: login {args.name}: {e}", file=sys.stderr)
        return 1
    finally:
        runtime.close()
    scopes = " ".join(token.scope) or "(none given)"
    print(
        f"Signed in: {args.name} now has a token (scopes: {scopes}); a running proxy uses it "
        "within seconds."
    )
    return 0


def _cmd_logout(args: argparse.Namespace) -> int:
    from .grants import make_grant
    from .login import revoke
    from .runtime import Runtime

    _, config = _load(args)
    cred = _credential(config, args.name)
    runtime = Runtime.build(config)
    try:
        record = runtime.store.get(args.name)
        if record is None:
            print(f"{args.name}: no stored tokens")
            return 0
        note = ""
        if cred.grant != "static":
            note = revoke(make_grant(cred, runtime.ca_bundle or True), record.token)  # type: ignore[arg-type]
        runtime.store.delete(args.name)
    finally:
        runtime.close()
    print(f"{args.name}: stored tokens deleted; {note}")
    return 0


def _cmd_refresh(args: argparse.Namespace) -> int:
    import asyncio

    from .cache import TokenUnavailable
    from .runtime import Runtime

    _, config = _load(args)
    _credential(config, args.name)
    runtime = Runtime.build(config)
    try:
        token = asyncio.run(runtime.caches[args.name].force_refresh())
    except TokenUnavailable as e:
        print(f"authproxy: refresh {args.name}: {e}", file=sys.stderr)
        return 1
    finally:
        runtime.close()
    print(f"{args.name}: refreshed; expires in {token.expires_at - time.time():.0f}s")
    return 0


def _cmd_tokens(args: argparse.Namespace) -> int:
    import json

    from .runtime import open_store
    from .status import describe
    from .store.sqlite import MissingStoreError

    _, config = _load(args)
    try:
        store = open_store(config.store, create=False)
    except MissingStoreError:
        store = None
    now = time.time()
    try:
        views = [
            describe(c, store.get(name) if store else None, now)
            for name, c in config.credentials.items()
        ]
    finally:
        if store is not None:
            store.close()
    if args.json:
        print(json.dumps([v.as_dict() for v in views], indent=1))
        return 0
    columns = "{:<16} {:<19} {:<12} {:>10}  {:<7} {:<19} {}"
    print(
        columns.format("NAME", "GRANT", "STATE", "EXPIRES IN", "REFRESH", "LAST REFRESH", "SCOPES")
    )
    for v in views:
        if v.expires_in is None:
            expires = "-"
        else:
            expires = "never" if math.isinf(v.expires_in) else _duration(v.expires_in)
        last = (
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(v.last_refresh))
            if v.last_refresh
            else "-"
        )
        refresh = "yes" if v.refresh_token else "no"
        print(
            columns.format(
                v.name, v.grant, v.state, expires, refresh, last, " ".join(v.scopes) or "-"
            )
        )
        if v.last_error:
            print(f"  last error: {v.last_error}")
    return 0


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 0:
        return "expired"
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"
