"""The configuration file: locating it, and turning it into typed, checked settings (the schema).

Reading YAML, `${VAR}` references and typed access with key paths are `yamlconf`'s, which knows
nothing of authproxy. Everything here is pure apart from `load_config` (reads a file) and
`config_path` (looks at the environment), so that the rules are easy to test. Every error names
the file, the key path (``routes[2].host``) and what was expected.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .grants.base import ConfigRules
from .grants.client_auth import METHODS as CLIENT_AUTH_METHODS
from .grants.registry import GRANTS as GRANT_SPECS
from .netutil import MIN_PROXY_PASSWORD, is_loopback
from .present import BEARER, parse_present
from .providers import PRESETS
from .routes import Route, RouteTable, normalize_host
from .tokens import fingerprint
from .yamlconf import (
    ConfigError,
    Reader,
    Unavailable,
    UniqueKeyLoader,
    Verbatim,
    kind_of,
    load_yaml,
    missing_error,
    missing_variables,
    unavailable,
)

__all__ = [
    "Config",
    "ConfigError",
    "CredentialConfig",
    "StoreConfig",
    "TokenPolicy",
    "config_path",
    "load_config",
    "parse_config",
    "unavailable",
]

# The YAML loader, here too for tests that check which parser reads the config.
_UniqueKeyLoader = UniqueKeyLoader

STORE_KEY_SEPARATOR = "#"
# Authorization parameters that change the sign-in page, not the token: left out of identity.
_UI_ONLY_PARAMS = frozenset({"prompt", "login_hint", "ui_locales", "display", "max_age"})
EXISTING_AUTH = ("replace", "keep", "reject")
REFRESH_TIMEOUT_FACTOR = 3  # refresh-token requests get this many times idp_timeout


@dataclass(frozen=True, slots=True)
class TokenPolicy:
    refresh_leeway: float = 60.0  # refresh this long before expiry
    default_lifetime: float = 3600.0  # when the IdP gives no expires_in; inf: never expires
    idp_timeout: float = 10.0
    retry_attempts: int = 3  # per refresh, on 5xx / timeouts / connection errors
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    # How long shutdown or a reload waits for a refresh in flight to commit its token;
    # None: idp_timeout + 2 s (one IdP call, then the store write).
    drain_timeout: float | None = None
    # At most one 401-triggered refresh per credential this often. 5 s is longer than a request
    # round trip, so a token refused again right after it replaced a refused one is caught (an
    # API that always says 401 cannot make the proxy storm the IdP), and short enough that a
    # real revocation a little later is still handled at once.
    reject_grace: float = 5.0

    @property
    def refresh_timeout(self) -> float:
        """Total deadline of a refresh-token request. Longer than `idp_timeout`: abandoning
        one whose answer is slow may cost the sign-in (a rotated token spent on a lost answer)."""
        return self.idp_timeout * REFRESH_TIMEOUT_FACTOR


@dataclass(frozen=True, slots=True)
class CredentialConfig:
    name: str
    grant: str  # a name in the grant registry
    token_url: str | None = None  # None with an issuer: found by discovery
    issuer: str | None = None
    authorization_url: str | None = None
    device_authorization_url: str | None = None
    revocation_url: str | None = None
    authorization_params: Mapping[str, str] = field(default_factory=dict)
    redirect_port: int = 0  # 0: any free port, for the loopback redirect of `authproxy login`
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    client_id: str | None = field(default=None, repr=False)
    client_secret: str | None = field(default=None, repr=False)
    client_auth: str = "basic"  # a name in the client authentication registry
    scopes: tuple[str, ...] = ()
    params: Mapping[str, str] = field(default_factory=dict)
    refresh_token: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    policy: TokenPolicy = field(default_factory=TokenPolicy)
    # Keys a grant or client authentication method reads that have no field of their own.
    options: Mapping[str, str] = field(default_factory=dict, repr=False)
    dpop: bool = False  # sender-constrained tokens (RFC 9449): a key pair kept in the store

    @property
    def seed_id(self) -> str | None:
        """Fingerprint of the configured refresh token (a new one in the config beats the store)."""
        return fingerprint(self.refresh_token) if self.refresh_token else None

    def secrets(self) -> list[str]:
        found = [self.client_secret, self.refresh_token, self.token, self.password]
        spec = GRANT_SPECS.get(self.grant)
        method = CLIENT_AUTH_METHODS.get(self.client_auth)
        for key in (*(spec.rules.secret if spec else ()), *(method.secret if method else ())):
            found.append(self.options.get(key))
        return [s for s in found if s]

    def value(self, key: str) -> str | None:
        """A grant's config key: its own field, or one of `options`."""
        if key in _OWN_FIELDS:
            own = getattr(self, key)
            return own if isinstance(own, str) else None
        return self.options.get(key)

    @property
    def interactive(self) -> bool:
        """Do its tokens come only from a person signing in (`authproxy login`)?"""
        return GRANT_SPECS[self.grant].interactive

    @property
    def identity(self) -> str:
        """16 hex digits naming what a token of this credential is valid for.

        Two configs may both call a credential `svc` while meaning different IdPs, clients or
        APIs; the store keeps their tokens apart by this digest. It covers what decides who
        issued a token and to whom (grant, token URL or issuer, client id, scopes, audience and
        the other token parameters, the user of a password grant), never a secret, and nothing
        that only tunes behaviour (timings, client_auth, the redirect port): changing those
        must not orphan a login.
        """
        auth_params = {
            k: v for k, v in self.authorization_params.items() if k not in _UI_ONLY_PARAMS
        }
        parts: dict[str, object] = {
            "grant": self.grant,
            "token_url": self.token_url,
            "issuer": self.issuer,
            "client_id": self.client_id,
            "scopes": sorted(set(self.scopes)),
            "params": dict(sorted(self.params.items())),
            "authorization_params": dict(sorted(auth_params.items())),
            "username": self.username,  # only a grant that reads it (password) has one
        }
        spec = GRANT_SPECS.get(self.grant)
        # Whose token it is, for grants that say (a service account, an app installation);
        # absent otherwise, so the identity of every other credential stays as it was.
        own = {
            k: self.options[k] for k in (spec.rules.identity if spec else ()) if k in self.options
        }
        if own:
            parts["grant_keys"] = dict(sorted(own.items()))
        if self.dpop:  # DPoP-bound tokens are useless without the key: never mixed with others
            parts["dpop"] = True
        canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def store_key(self) -> str:
        """The row of the token store that holds this credential's tokens: `name#identity`.

        `#` cannot occur in a credential name, so a key never collides with a bare name (the
        rows of authproxy versions before identities existed, which are never served).
        """
        return f"{self.name}{STORE_KEY_SEPARATOR}{self.identity}"


# The string-valued keys of the config that CredentialConfig keeps as fields of their own.
_OWN_FIELDS = frozenset(
    {"username", "password", "client_id", "client_secret", "refresh_token", "token"}
)


@dataclass(frozen=True, slots=True)
class StoreConfig:
    backend: str = "sqlite"  # a name of store.registry.BACKENDS
    path: Path | None = None  # a file backend's file; None: its default (XDG)
    key_file: Path | None = None
    settings: Any = None  # a backend's own parsed keys (store.registry.Parsed.settings)


@dataclass(frozen=True, slots=True)
class Config:
    source: str
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    proxy_auth: str | None = field(default=None, repr=False)
    ca_certs: tuple[Path, ...] = ()
    confdir: Path | None = None
    audit_log: Path | None = None
    store: StoreConfig = field(default_factory=StoreConfig)
    credentials: Mapping[str, CredentialConfig] = field(default_factory=dict)
    routes: RouteTable = field(default_factory=lambda: RouteTable(()))

    def secrets(self) -> list[str]:
        found = [s for c in self.credentials.values() for s in c.secrets()]
        if self.proxy_auth:
            found.append(self.proxy_auth)
        if password := getattr(self.store.settings, "password", None):  # a network store's
            found.append(password)
        return found


def config_path(cli_value: str | None, env: Mapping[str, str] = os.environ) -> Path:
    """--config, else $AUTHPROXY_CONFIG, else ~/.config/authproxy/config.yaml (XDG honoured)."""
    if cli_value:
        return Path(cli_value).expanduser()
    if env.get("AUTHPROXY_CONFIG"):
        return Path(env["AUTHPROXY_CONFIG"]).expanduser()
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "authproxy" / "config.yaml"


def load_config(
    path: Path, env: Mapping[str, str] = os.environ, *, need_secrets: bool = True
) -> Config:
    """The config at `path`. `need_secrets=False` (commands that only talk to a running proxy
    or the store: env, exec, tokens, logout): a credential's secret whose variable or file is
    missing is left unavailable (see `unavailable`) instead of an error."""
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            source, "", "no such file (pass --config, set AUTHPROXY_CONFIG, or create it)"
        ) from None
    except OSError as e:
        raise ConfigError(source, "", f"cannot read: {e.strerror}") from None
    data = load_yaml(text, source)
    return parse_config(data, source, env, base_dir=path.parent, need_secrets=need_secrets)


# --- secrets -----------------------------------------------------------------------------------


def _is_secret_key(key: str) -> bool:
    last = key.rpartition(".")[2]
    return last in _SECRET_KEYS or last.removesuffix("_file") in _SECRET_KEYS


# Keys of a credential whose value is a secret; each may instead be read from a file,
# `<key>_file:` (/run/secrets/..., $CREDENTIALS_DIRECTORY/... of systemd).
_SECRET_KEYS = frozenset(
    {"client_secret", "password", "refresh_token", "token"}
    | {k for spec in GRANT_SPECS.values() for k in spec.rules.secret}
    | {k for method in CLIENT_AUTH_METHODS.values() for k in method.secret}
)
MAX_SECRET_FILE = 64 * 1024


def _secrets_from_files(r: Reader, keys: frozenset[str], resolve: Callable[[str], Path]) -> Reader:
    """`r` with each `<key>_file:` replaced by `<key>:` holding the file's text."""
    files = [k for k in keys if f"{k}_file" in r.data]
    if not files:
        return r
    data = dict(r.data)
    for key in sorted(files):
        file_key = f"{key}_file"
        if r.data.get(key) is not None:
            raise r.error(file_key, f"give either {key} or {file_key}, not both")
        try:
            path = resolve(r.text(file_key, required=True) or "")
            data[key] = Verbatim(read_secret_file(path, r.source, r.key(file_key)))
        except ConfigError:
            if key not in r.lenient_keys:
                raise
            data[key] = Unavailable(f"<{key} not available>")
        del data[file_key]
    return r.with_data(data)


def read_secret_file(path: Path, source: str, key: str) -> str:
    """A secret kept in a file, without its final line break. Refused when other users could
    change it, or (for a file of this user's, who can fix it) read it."""
    try:
        with path.open("rb") as f:
            st = os.fstat(f.fileno())
            data = f.read(MAX_SECRET_FILE + 1)
    except OSError as e:
        raise ConfigError(source, key, f"cannot read {path}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(source, key, f"{path} is not a regular file")
    if st.st_mode & 0o022:
        raise ConfigError(
            source, key, f"{path} can be changed by other users (mode {st.st_mode & 0o777:o}); "
            f"run chmod 600 {path}",
        )  # fmt: skip
    # A file of another owner (root's /run/secrets/... of a container) is as its owner made it.
    if st.st_uid == os.getuid() and st.st_mode & 0o077:
        raise ConfigError(
            source, key, f"{path} can be read by other users (mode {st.st_mode & 0o777:o}); "
            f"run chmod 600 {path}",
        )  # fmt: skip
    if len(data) > MAX_SECRET_FILE:
        raise ConfigError(source, key, f"{path} is larger than {MAX_SECRET_FILE} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(source, key, f"{path} is not UTF-8 text") from None
    text = text.removesuffix("\n").removesuffix("\r")
    if not text:
        raise ConfigError(source, key, f"{path} is empty")
    return text


# --- the schema --------------------------------------------------------------------------------


def parse_config(
    data: Any,
    source: str,
    env: Mapping[str, str] = os.environ,
    base_dir: Path | None = None,
    *,
    need_secrets: bool = True,
) -> Config:
    if data is None:
        data = {}
    missing = missing_variables(data, env, source)
    if not need_secrets:
        missing = [v for v in missing if not _is_secret_key(v.key)]
    if missing:
        raise missing_error(source, missing)
    # Without need_secrets, a secret whose variable or file is missing is left Unavailable.
    lenient = frozenset() if need_secrets else _SECRET_KEYS
    top = Reader(data, source, "", env, lenient_keys=lenient)
    resolve = _path_resolver(base_dir)
    top = _secrets_from_files(top, frozenset({"proxy_auth"}), resolve)

    listen_host, listen_port = _parse_listen(top)
    proxy_auth = top.text("proxy_auth")
    if proxy_auth is not None and ":" not in proxy_auth:
        raise top.error("proxy_auth", "expected 'user:password'")
    if not is_loopback(listen_host) and not proxy_auth:
        raise top.error(
            "listen",
            f"{listen_host!r} is reachable from other machines; set proxy_auth: 'user:password' "
            "to require proxy authentication, or listen on 127.0.0.1",
        )
    if proxy_auth is not None:
        user, _, password = proxy_auth.partition(":")
        if not user or not password:
            raise top.error("proxy_auth", "expected 'user:password' with both parts non-empty")
        if not is_loopback(listen_host) and len(password) < MIN_PROXY_PASSWORD:
            raise top.error(
                "proxy_auth",
                f"the password is shorter than {MIN_PROXY_PASSWORD} characters, too weak for a "
                f"proxy reachable from other machines ({listen_host!r}); use a longer one",
            )
    ca_certs = tuple(resolve(p) for p in top.words("ca_certs"))
    for i, p in enumerate(ca_certs):
        _check_pem(p, source, f"ca_certs[{i}]")

    store = _parse_store(top.section("store"), resolve)
    tokens = top.section("tokens")
    policy = _parse_policy(tokens, TokenPolicy())
    tokens.done()
    credentials = {
        name: _with_file_paths(cred, resolve)
        for name, cred in _parse_credentials(top.section("credentials"), policy, resolve).items()
    }
    routes = _parse_routes(top, credentials, resolve)
    confdir = top.text("confdir")
    audit_log = top.text("audit_log")
    top.done()
    return Config(
        source=source,
        listen_host=listen_host,
        listen_port=listen_port,
        proxy_auth=proxy_auth,
        ca_certs=ca_certs,
        confdir=resolve(confdir) if confdir else None,
        audit_log=resolve(audit_log) if audit_log else None,
        store=store,
        credentials=credentials,
        routes=routes,
    )


def _path_resolver(base_dir: Path | None) -> Callable[[str], Path]:
    def resolve(value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() or base_dir is None else base_dir / p

    return resolve


def _parse_listen(top: Reader) -> tuple[str, int]:
    value = top.text("listen", "127.0.0.1:8080") or ""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise top.error("listen", f"expected 'host:port' such as 127.0.0.1:8080, got {value!r}")
    return host, int(port)


def _parse_store(s: Reader, resolve: Callable[[str], Path]) -> StoreConfig:
    # The backend parses its own keys (store/registry.py); the key file is common to all.
    from .store.registry import BACKENDS

    backend = s.choice("backend", tuple(BACKENDS), "sqlite")
    key_file = s.text("key_file")
    parsed = BACKENDS[backend].parse(s, resolve)
    s.done()
    if parsed.path is not None or backend == "sqlite":
        _refuse_key_beside_store(s, resolve(key_file) if key_file else None, parsed.path)
    return StoreConfig(
        backend=backend,
        path=parsed.path,
        key_file=resolve(key_file) if key_file else None,
        settings=parsed.settings,
    )


def _refuse_key_beside_store(s: Reader, key_file: Path | None, db_path: Path | None) -> None:
    """What the store refuses at start, refused here already (so `check` says it too)."""
    from .store.keys import ENV_VAR, KeySourceError, _refuse_beside_db
    from .store.paths import default_db_path, default_key_file

    if s.env.get(ENV_VAR, "").strip():
        return  # the key comes from the environment; no key file is read
    try:
        _refuse_beside_db(key_file or default_key_file(s.env), db_path or default_db_path(s.env))
    except KeySourceError as e:
        raise s.error("key_file", str(e)) from None


def _parse_policy(s: Reader, base: TokenPolicy) -> TokenPolicy:
    return TokenPolicy(
        refresh_leeway=s.number("refresh_leeway", base.refresh_leeway),
        default_lifetime=(
            math.inf
            if s.raw("default_lifetime") == "never"
            else s.number("default_lifetime", base.default_lifetime, minimum=1)
        ),
        idp_timeout=s.number("idp_timeout", base.idp_timeout, minimum=0.1),
        retry_attempts=s.integer("retry_attempts", base.retry_attempts, minimum=1, maximum=10),
        backoff_initial=s.number("backoff_initial", base.backoff_initial),
        backoff_max=s.number("backoff_max", base.backoff_max),
        drain_timeout=s.number("drain_timeout", base.drain_timeout or 0.0)
        if s.has("drain_timeout")
        else base.drain_timeout,
        reject_grace=s.number("reject_grace", base.reject_grace),
    )


_POLICY_KEYS = tuple(TokenPolicy.__dataclass_fields__)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _parse_credentials(
    s: Reader, policy: TokenPolicy, resolve: Callable[[str], Path]
) -> dict[str, CredentialConfig]:
    out: dict[str, CredentialConfig] = {}
    for name in s.data:
        if not isinstance(name, str) or not _NAME.match(name):
            raise s.error(
                str(name), "credential names use letters, digits, '.', '_' and '-' (at most 64)"
            )
        out[name] = _parse_credential(name, s.section(name), policy, resolve)
    return out


def _parse_credential(
    name: str, c: Reader, policy: TokenPolicy, resolve: Callable[[str], Path]
) -> CredentialConfig:
    c = _secrets_from_files(c, _SECRET_KEYS, resolve)
    preset = c.text("preset")
    if preset is not None:
        if preset not in PRESETS:
            raise c.error("preset", f"expected one of {', '.join(sorted(PRESETS))}, got {preset!r}")
        c = c.with_defaults(PRESETS[preset])
    grants = tuple(GRANT_SPECS)  # the registry says which grants exist
    grant = c.choice("grant", grants, "") if c.has("grant") else None
    if grant is None:
        raise c.error("grant", f"is required: one of {', '.join(grants)}")
    rules = GRANT_SPECS[grant].rules
    cred_policy = _parse_policy(c, policy)
    if not rules.oauth:
        own = _grant_keys(c, grant, rules, {})
        c.done(_POLICY_KEYS)
        return CredentialConfig(name, grant, policy=cred_policy, **own)

    tenant = c.text("tenant", "") or ""
    allow_http = c.bool("allow_http", False)
    issuer = _https_url(c, "issuer", tenant, allow_http)
    token_url = _https_url(c, "token_url", tenant, allow_http)
    if (
        token_url is None
        and issuer is None
        and not (rules.endpoint_from and c.has(rules.endpoint_from))
    ):
        raise c.error("token_url", "is required (or give issuer: to discover the endpoints)")
    scopes = c.words("scopes")
    scopes += tuple(s for s in c.words("required_scopes") if s not in scopes)
    endpoints = {
        key: _https_url(c, key, tenant, allow_http)
        for key in ("authorization_url", "device_authorization_url", "revocation_url")
    }
    authorization_params = c.string_map("authorization_params")
    redirect_port = c.integer("redirect_port", 0, minimum=0, maximum=65535)
    common = {
        "client_id": c.text("client_id", required=rules.client),
        "client_secret": c.text("client_secret"),
    }
    client_auth = c.choice("client_auth", tuple(CLIENT_AUTH_METHODS), "basic")
    params = c.string_map("params")
    dpop = c.bool("dpop", False)
    method = CLIENT_AUTH_METHODS[client_auth]
    for key in method.required:
        if key in common and not common[key]:
            raise c.error(key, f"is required for client_auth {client_auth}")
    if rules.confidential and not method.proves and not common["client_secret"]:
        raise c.error("client_secret", f"is required for grant {grant}")
    own = _grant_keys(c, grant, rules, common)
    options = {
        **own.pop("options", {}),
        **{k: c.text(k, required=True) or "" for k in method.required if k not in common},
        **{k: v for k in method.optional if (v := c.text(k)) is not None},
    }
    if rules.endpoint is not None and not (endpoints.get(rules.endpoint) or issuer):
        raise c.error(rules.endpoint, "is required (or give issuer: to discover it)")
    c.done(_POLICY_KEYS)
    return CredentialConfig(
        name,
        grant,
        token_url=token_url,
        issuer=issuer,
        authorization_params=authorization_params,
        redirect_port=redirect_port,
        client_auth=client_auth,
        scopes=scopes,
        params=params,
        policy=cred_policy,
        options=options,
        dpop=dpop,
        **endpoints,
        **common,
        **own,
    )


def _grant_keys(
    c: Reader, grant: str, rules: ConfigRules, read: dict[str, str | None]
) -> dict[str, Any]:
    """The keys the grant itself reads: fields of CredentialConfig by name, others as `options`.

    A key the common part has `read` already (client_secret) is required "for grant <name>"."""
    own: dict[str, Any] = {}
    options: dict[str, str] = {}
    for key in (*rules.required, *rules.optional):
        if key in read:
            if key in rules.required and not read[key]:
                raise c.error(key, f"is required for grant {grant}")
            continue
        if key in rules.lists:
            words = c.words(key)
            if key in rules.required and not words:
                raise c.error(key, "is required")
            if words:
                options[key] = " ".join(words)
            continue
        value = c.text(key, required=key in rules.required)
        if key in _OWN_FIELDS:
            own[key] = value
        elif value is not None:
            options[key] = value
    given = {k for k, v in {**own, **options, **read}.items() if v}
    if rules.one_of and not any(set(group) <= given for group in rules.one_of):
        choices = " or ".join(" with ".join(group) for group in rules.one_of)
        raise c.error(rules.one_of[0][0], f"grant {grant} needs {choices}")
    if options:
        own["options"] = options
    return own


def _https_url(c: Reader, key: str, tenant: str, allow_http: bool = False) -> str | None:
    """An IdP URL: https://, or http:// to a loopback host with the credential's
    `allow_http: true` (a local Keycloak or dev IdP; `check` warns about it)."""
    url = c.text(key)
    if url is None:
        return None
    url = url.replace("{tenant}", tenant)
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise c.error(key, f"the URL contains a space or control character: {url!r}")
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError as e:
        raise c.error(key, f"not a valid URL ({e}): {url!r}") from None
    if parts.scheme == "http" and allow_http:
        if not is_loopback(host):
            raise c.error(
                key,
                f"allow_http permits http:// only to this machine (localhost, 127.0.0.1, ::1), "
                f"not to {host!r}: the client secret and tokens would cross the network in "
                "clear text; use https://",
            )
    elif parts.scheme != "https":
        hint = (
            " (for an IdP on this machine, add allow_http: true to the credential)"
            if parts.scheme == "http" and is_loopback(host)
            else ""
        )
        raise c.error(key, f"expected an https:// URL, got {url!r}{hint}")
    if not host:
        raise c.error(key, f"the URL names no host: {url!r}")
    return url


def _with_file_paths(cred: CredentialConfig, resolve: Callable[[str], Path]) -> CredentialConfig:
    """Key, certificate and service-account files (`*_file` keys) as paths relative to the
    config file's directory, as every other path in it, not to wherever the proxy runs."""
    files = {k: str(resolve(v)) for k, v in cred.options.items() if k.endswith("_file") and v}
    return dataclasses.replace(cred, options={**cred.options, **files}) if files else cred


def _check_pem(path: Path, source: str, key: str) -> None:
    """A CA file that `run` can use: PEM certificates (a DER file or a key is refused here,
    not by the TLS library at the first request)."""
    import ssl

    if not path.is_file():
        raise ConfigError(source, key, f"no such file: {path}")
    try:
        ssl.create_default_context().load_verify_locations(cafile=str(path))
    except ssl.SSLError:
        raise ConfigError(
            source, key, f"{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----); "
            f"convert a DER file with: openssl x509 -inform der -in {path} -out ca.pem",
        ) from None  # fmt: skip
    except OSError as e:
        raise ConfigError(source, key, f"cannot read {path}: {e.strerror}") from None


def _parse_routes(
    top: Reader,
    credentials: Mapping[str, CredentialConfig],
    resolve: Callable[[str], Path] = Path,
) -> RouteTable:
    raw = top.raw("routes")
    if raw is None:
        return RouteTable(())
    if not isinstance(raw, list):
        raise top.error("routes", f"expected a list of routes, got {kind_of(raw)}")
    routes = []
    for i, item in enumerate(raw):
        r = Reader(item, top.source, f"routes[{i}]", top.env)
        cred = r.text("credential", required=True) or ""
        if cred not in credentials:
            known = ", ".join(sorted(credentials)) or "none are defined"
            raise r.error("credential", f"no credential named {cred!r} (known: {known})")
        host_text = r.text("host", required=True) or ""
        try:
            host = normalize_host(host_text, pattern=True)
        except ValueError as e:
            raise r.error("host", str(e)) from None
        allow_http = r.bool("allow_http", False)
        scheme = r.choice("scheme", ("https", "http"), "https")
        if scheme == "http" and not allow_http:
            raise r.error(
                "scheme",
                "'http' would send the token in clear text; add allow_http: true to this route "
                "if that is really intended",
            )
        port = r.integer("port", 443 if scheme == "https" else 80, minimum=1, maximum=65535)
        path = r.text("path", "/") or "/"
        if not path.startswith("/"):
            raise r.error("path", f"expected a path prefix starting with '/', got {path!r}")
        existing = r.choice("existing_authorization", EXISTING_AUTH, "replace")
        allow_cross_site = r.bool("allow_cross_site", False)
        try:
            present = parse_present(r.raw("present"))
        except ValueError as e:
            raise r.error("present", str(e)) from None
        cert_file, key_file = r.text("client_certificate_file"), r.text("client_key_file")
        if (cert_file is None) != (key_file is None):
            missing = "client_key_file" if key_file is None else "client_certificate_file"
            raise r.error(missing, "is required with the other (mutual TLS to the API)")
        client_cert = (
            (str(resolve(cert_file)), str(resolve(key_file))) if cert_file and key_file else None
        )
        if credentials[cred].dpop and present != BEARER:
            raise r.error(
                "present", f"credential {cred!r} uses DPoP, whose tokens go in Authorization"
            )
        r.done()
        routes.append(
            Route(
                index=i,
                credential=cred,
                host=host,
                port=port,
                scheme=scheme,  # type: ignore[arg-type]  # one of the choices above
                path=path,
                existing_authorization=existing,  # type: ignore[arg-type]
                allow_cross_site=allow_cross_site,
                present=present,
                client_cert=client_cert,
            )
        )
    return RouteTable(tuple(routes))
