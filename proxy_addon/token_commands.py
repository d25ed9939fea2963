"""The commands about credentials and their tokens: login, logout, refresh, tokens."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .cache import CredentialCache
from .config import Config, ConfigError, CredentialConfig, unavailable
from .state import CredentialState
from .status import CredentialView
from .store import StoreError, TokenStore

__all__ = ["register"]

Loader = Callable[..., tuple[Path, Config]]  # (args, *, need_secrets=True)

# `authproxy login` of a credential that has no sign-in (a usage error, as argparse's).
NO_SIGN_IN = 2


def register(sub: argparse._SubParsersAction, load: Loader) -> None:  # type: ignore[type-arg]
    """Add the commands; each finds the config through `args.load(args)`."""
    login = sub.add_parser("login", help="sign in for a credential and store its tokens")
    login.add_argument("name", help="the credential")
    login.add_argument(
        "--no-browser",
        action="store_true",
        help="do not listen for the redirect: paste the final URL instead (SSH sessions)",
    )
    login.add_argument("--timeout", type=float, default=300.0, help="seconds to wait (300)")
    login.set_defaults(func=_cmd_login, load=load)

    logout = sub.add_parser("logout", help="delete a credential's stored tokens (and revoke them)")
    logout.add_argument("name")
    logout.set_defaults(func=_cmd_logout, load=load)

    refresh = sub.add_parser("refresh", help="refresh a credential's token now")
    refresh.add_argument("name")
    refresh.set_defaults(func=_cmd_refresh, load=load)

    tokens = sub.add_parser("tokens", help="list credentials and their token state (no secrets)")
    tokens.add_argument("--json", action="store_true", help="machine-readable output")
    tokens.set_defaults(func=_cmd_tokens, load=load)


def _credential(config: Config, name: str) -> CredentialConfig:
    if name not in config.credentials:
        known = ", ".join(sorted(config.credentials)) or "none"
        raise ConfigError(
            config.source, "credentials", f"no credential named {name!r} (known: {known})"
        )
    return config.credentials[name]


@contextmanager
def _opened(
    args: argparse.Namespace, *, need_secrets: bool = True
) -> Iterator[tuple[CredentialCache, CredentialConfig]]:
    """The named credential's cache (its grant, its store), closed afterwards, and its config.
    Only the commands that talk to the IdP need the config's secrets."""
    from .runtime import Runtime, load_grant_keys

    _, config = args.load(args, need_secrets=need_secrets)
    cred = _credential(config, args.name)
    # No up-front decryption check: logout must work on a row the key can no longer read.
    # Key files: only this credential's, and only where its secrets are (a passphrase).
    runtime = Runtime.build(config, check_store=False, load_keys=False)
    try:
        if need_secrets:
            load_grant_keys(config, args.name, runtime.caches[args.name].grant)
        yield runtime.caches[args.name], cred
    finally:
        runtime.close()


def _cmd_login(args: argparse.Namespace) -> int:
    from .grants.registry import sign_in_for
    from .login import LoginError, login

    _, config = args.load(args, need_secrets=False)
    cred = _credential(config, args.name)
    if sign_in_for(cred.grant) is None:
        # One answer (and exit code) for every credential without a sign-in: static tokens,
        # client_credentials, ...
        print(
            f"authproxy: {args.name} uses grant {cred.grant}, which needs no sign-in: the "
            f"proxy gets its tokens by itself (`authproxy refresh {args.name}` gets one now)",
            file=sys.stderr,
        )
        return NO_SIGN_IN
    with _opened(args) as (cache, _):
        try:
            token = login(
                cache.grant, cache.store,  # type: ignore[arg-type]  # _opened opens a store
                no_browser=args.no_browser, timeout=args.timeout,
            )  # fmt: skip
        except LoginError as e:
            print(f"authproxy: login {args.name}: {e}", file=sys.stderr)
            return 1
    scopes = " ".join(token.scope) or "(none given)"
    print(
        f"Signed in: {args.name} now has a token (scopes: {scopes}); a running proxy uses it "
        "within seconds."
    )
    return 0


def _cmd_logout(args: argparse.Namespace) -> int:
    from .login import revoke

    with _opened(args, need_secrets=False) as (cache, cred):
        if cache.store is None:
            print(f"{args.name}: a static token is in the config, not in the store")
            return 0
        key = cache.store_key
        # A row an older authproxy stored under the bare name is never served; logout is how
        # it goes away (it cannot be revoked: nothing ties it to this config's IdP).
        legacy = key != args.name and cache.store.delete(args.name)
        if legacy:
            print(f"{args.name}: deleted the token an older authproxy stored under this name")
        try:
            record = cache.store.get(key)
        except StoreError as e:
            cache.store.delete(key)
            print(f"{args.name}: stored tokens deleted without revoking them ({e})")
            return 0
        if record is None:
            if not legacy:
                print(f"{args.name}: no stored tokens")
            return 0
        if missing := [k for k in ("client_secret", "password") if unavailable(cred.value(k))]:
            note = (
                f"not revoked at the provider (its {missing[0]} is not available here: the "
                "config's variable or file for it is missing)"
            )
        else:
            note = revoke(cache.grant, record.token)
        cache.store.delete(key)
    print(f"{args.name}: stored tokens deleted; {note}")
    return 0


def _cmd_refresh(args: argparse.Namespace) -> int:
    import asyncio

    from .errors import TokenUnavailable

    with _opened(args) as (cache, _):
        try:
            token = asyncio.run(cache.force_refresh())
        except TokenUnavailable as e:
            print(f"authproxy: refresh {args.name}: {e}", file=sys.stderr)
            return 1
    print(f"{args.name}: refreshed; expires in {token.expires_at - time.time():.0f}s")
    return 0


def _cmd_tokens(args: argparse.Namespace) -> int:
    import json

    from .runtime import open_store
    from .store import MissingStoreError
    from .store.keys import ENV_VAR
    from .store.paths import default_db_path, default_key_file

    _, config = args.load(args, need_secrets=False)
    if not config.credentials:
        print("no credentials in the config yet: add one (see `authproxy init`)")
        return 0
    fresh = (
        config.store.backend == "sqlite"
        and not (config.store.path or default_db_path()).exists()
        and not os.environ.get(ENV_VAR)
        and not (config.store.key_file or default_key_file()).exists()
    )
    store: TokenStore | None = None
    if not fresh:  # on a fresh machine there is no store, nor a key: nothing to tell about
        try:
            store = open_store(config.store, create=False)
        except MissingStoreError:
            fresh = True
    now = time.time()
    try:
        views = [_stored_view(c, store, now) for c in config.credentials.values()]
        # Rows an older authproxy stored under a bare name: never used, only worth a note.
        legacy = set(store.keys()) & set(config.credentials) if store else set()
    finally:
        if store is not None:
            store.close()
    views = [_with_live_state(v, live) for v in views] if (live := _live_status(config)) else views
    # As `gh auth status`: non-zero when a credential cannot give a token without help.
    code = 1 if any(v.state in ("failing", "needs login", "damaged") for v in views) else 0
    if args.json:
        print(json.dumps([v.as_dict() for v in views], indent=1))
        return code
    if fresh:
        print(
            "no tokens stored yet: the proxy fetches them on first use; credentials that "
            "need a sign-in say so below (`authproxy login NAME`)"
        )
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
        if v.name in legacy:
            print(
                "  note: a token an older authproxy stored under this name is not used; "
                f"`authproxy logout {v.name}` removes it"
            )
    return code


def _stored_view(cfg: CredentialConfig, store: TokenStore | None, now: float) -> CredentialView:
    """What the store says about one credential; a damaged row affects only its own line."""
    from .grants import spec_for
    from .status import describe
    from .store import CorruptRowError, DamagedRowError

    if store is None or not spec_for(cfg.grant).persist:  # static: nothing stored
        return describe(cfg, None, now)
    try:
        return describe(cfg, store.get(cfg.store_key), now)
    except (DamagedRowError, CorruptRowError) as e:
        view = describe(cfg, None, now)
        return dataclasses.replace(view, state=CredentialState.DAMAGED, last_error=str(e))


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 0:
        return "expired"
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _live_status(config: Config) -> dict[str, dict[str, object]]:
    """What a running proxy for this config knows (failures, last errors), if one is running
    and it is this user's (checked before the proxy credentials are sent)."""
    from .env_render import client_host
    from .ownproxy import NotOurProxy, proxy_status

    host = client_host(config.listen_host)
    try:
        status = proxy_status(host, config.listen_port, config.proxy_auth, timeout=2.0)
    except NotOurProxy as e:
        print(
            f"authproxy: not asking {host}:{config.listen_port} for live state: it is not your "
            f"authproxy ({e})",
            file=sys.stderr,
        )
        return {}
    except OSError:
        return {}
    entries = status.get("credentials") or []
    return {str(e["name"]): e for e in entries if isinstance(e, dict) and "name" in e}


def _with_live_state(view: CredentialView, live: dict[str, dict[str, object]]) -> CredentialView:
    entry = live.get(view.name)
    state = CredentialState.parse(str(entry.get("state"))) if entry else None
    if not entry or state not in (CredentialState.FAILING, CredentialState.NEEDS_LOGIN):
        return view
    return dataclasses.replace(view, state=state, last_error=str(entry.get("last_error") or ""))
