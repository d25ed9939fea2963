"""Unit tests for proxy_addon.config: parsing, validation and error messages."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import certifi
import pytest

from proxy_addon.config import (
    Config,
    ConfigError,
    CredentialConfig,
    StoreConfig,
    TokenPolicy,
    config_path,
    load_config,
    parse_config,
)
from proxy_addon.routes import Route

SOURCE = "cfg.yaml"
ENV = {"BILLING_SECRET": "s3cret", "REPORTS_RT": "rt-1", "LEGACY": "legacy-token"}


def cc(**extra: Any) -> dict[str, Any]:
    """A valid client_credentials credential, with overrides."""
    base: dict[str, Any] = {
        "grant": "client_credentials",
        "token_url": "https://idp.example.com/token",
        "client_id": "billing-sync",
        "client_secret": "${BILLING_SECRET}",
    }
    base.update(extra)
    return base


def parse(data: Any, env: dict[str, str] | None = None) -> Config:
    return parse_config(data, SOURCE, env=ENV if env is None else env)


def parse_error(data: Any, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(data, env)
    return info.value


def assert_error(err: ConfigError, key: str, message: str) -> None:
    """The error names the file and the key path, and says `message` (a regex)."""
    assert err.source == SOURCE
    assert err.key == key
    assert re.search(message, err.message), err.message
    assert str(err) == f"{SOURCE}: {key}: {err.message}"
    assert str(err).startswith(f"{SOURCE}: ")


# --- defaults ------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [None, {}])
def test_defaults(data: Any) -> None:
    cfg = parse(data)
    assert cfg.source == SOURCE
    assert (cfg.listen_host, cfg.listen_port) == ("127.0.0.1", 8080)
    assert cfg.proxy_auth is None
    assert cfg.ca_certs == ()
    assert cfg.confdir is None
    assert cfg.audit_log is None
    assert cfg.store == StoreConfig(backend="sqlite", path=None, key_file=None)
    assert dict(cfg.credentials) == {}
    assert len(cfg.routes) == 0
    assert cfg.secrets() == []


def test_token_policy_defaults() -> None:
    assert TokenPolicy() == TokenPolicy(
        refresh_leeway=60.0,
        default_lifetime=3600.0,
        idp_timeout=10.0,
        retry_attempts=3,
        backoff_initial=0.5,
        backoff_max=30.0,
    )


def test_full_config() -> None:
    cfg = parse(
        {
            "listen": "127.0.0.1:9000",
            "store": {"backend": "memory"},
            "tokens": {"refresh_leeway": 30, "retry_attempts": 5},
            "credentials": {
                "billing": cc(
                    scopes=["billing.read", "billing.write"],
                    params={"audience": "https://api.example.com"},
                    client_auth="post",
                ),
                "reports": {
                    "grant": "refresh_token",
                    "token_url": "https://idp.example.com/token",
                    "client_id": "reports-cli",
                    "refresh_token": "${REPORTS_RT}",
                    "scopes": "read write",
                },
            },
            "routes": [
                {"host": "API.example.com.", "path": "/billing", "credential": "billing"},
                {
                    "host": "*.reports.example.com",
                    "port": 8443,
                    "credential": "reports",
                    "existing_authorization": "keep",
                },
            ],
        }
    )
    assert cfg.listen_port == 9000
    assert cfg.store.backend == "memory"
    billing = cfg.credentials["billing"]
    assert billing == CredentialConfig(
        name="billing",
        grant="client_credentials",
        token_url="https://idp.example.com/token",
        client_id="billing-sync",
        client_secret="s3cret",
        client_auth="post",
        scopes=("billing.read", "billing.write"),
        params={"audience": "https://api.example.com"},
        policy=TokenPolicy(refresh_leeway=30.0, retry_attempts=5),
    )
    reports = cfg.credentials["reports"]
    assert reports.grant == "refresh_token"
    assert reports.client_secret is None
    assert reports.refresh_token == "rt-1"
    assert reports.scopes == ("read", "write")
    assert reports.seed_id is not None and len(reports.seed_id) == 8
    assert list(cfg.routes) == [
        Route(0, "billing", "api.example.com", 443, "https", "/billing", "replace"),
        Route(1, "reports", "*.reports.example.com", 8443, "https", "/", "keep"),
    ]
    assert sorted(cfg.secrets()) == ["rt-1", "s3cret"]


def test_http_route_defaults_to_port_80() -> None:
    cfg = parse(
        {
            "credentials": {"billing": cc()},
            "routes": [
                {
                    "host": "legacy.example",
                    "scheme": "http",
                    "allow_http": True,
                    "credential": "billing",
                }
            ],
        }
    )
    assert list(cfg.routes) == [Route(0, "billing", "legacy.example", 80, "http", "/")]


def test_repr_hides_secrets() -> None:
    cfg = parse(
        {
            "listen": "0.0.0.0:8080",
            "proxy_auth": "ops:pr0xy-pw-long",
            "credentials": {"billing": cc(), "legacy": {"grant": "static", "token": "${LEGACY}"}},
        }
    )
    text = repr(cfg)
    for secret in ("s3cret", "legacy-token", "pr0xy-pw"):
        assert secret not in text
    assert sorted(cfg.secrets()) == ["legacy-token", "ops:pr0xy-pw-long", "s3cret"]


# --- environment expansion -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "env", "expected"),
    [
        ("${A}", {"A": "x"}, "x"),
        ("pre-${A}-post", {"A": "x"}, "pre-x-post"),
        ("${A}${B}", {"A": "x", "B": "y"}, "xy"),
        ("$$", {}, "$"),
        ("a$$b", {}, "a$b"),
        ("$${A}", {}, "${A}"),  # an escaped reference stays literal
        ("$$$${A}", {}, "$${A}"),
        ("$$${A}", {"A": "x"}, "$x"),
        ("${A:-d}", {}, "d"),
        ("${A:-d}", {"A": ""}, "d"),
        ("${A-d}", {"A": ""}, ""),
        ("${A:?say}", {"A": "x"}, "x"),
        ("${A}", {"A": "${B}"}, "${B}"),  # values are not expanded again
        ("${A}", {"A": ""}, ""),
    ],
)
def test_env_expansion(written: str, env: dict[str, str], expected: str) -> None:
    cfg = parse({"store": {"path": f"/x/{written}/db"}}, env)
    assert cfg.store.path == Path(f"/x/{expected}/db")


def test_env_expansion_in_lists_and_maps() -> None:
    cfg = parse(
        {
            "credentials": {
                "billing": cc(scopes=["${S1}", "b"], params={"audience": "${AUD}"}),
            }
        },
        {**ENV, "S1": "a", "AUD": "https://aud"},
    )
    c = cfg.credentials["billing"]
    assert c.scopes == ("a", "b")
    assert dict(c.params) == {"audience": "https://aud"}
    assert c.client_secret == "s3cret"


def test_missing_env_var_names_variable_and_key() -> None:
    err = parse_error({"credentials": {"billing": cc()}}, env={})
    assert_error(err, "credentials.billing.client_secret", r"environment variable BILLING_SECRET")
    assert "BILLING_SECRET" in str(err)
    assert "credentials.billing.client_secret" in str(err)


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"proxy_auth": "u:${PW}"}, "proxy_auth"),
        ({"credentials": {"billing": cc(scopes=["a", "${PW}"])}}, "credentials.billing.scopes"),
        (
            {"credentials": {"billing": cc(params={"audience": "${PW}"})}},
            "credentials.billing.params.audience",
        ),
        (
            {
                "credentials": {"billing": cc()},
                "routes": [{"host": "${PW}", "credential": "billing"}],
            },
            "routes[0].host",
        ),
    ],
)
def test_missing_env_var_key_paths(data: dict[str, Any], key: str) -> None:
    err = parse_error(data)
    assert_error(err, key, r"^environment variable PW is not set$")


# --- unknown keys --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "key", "suggestion"),
    [
        ({"lisen": "127.0.0.1:8080"}, "lisen", "listen"),
        ({"credentails": {}}, "credentails", "credentials"),
        ({"token": {"refresh_leeway": 5}}, "token", "tokens"),
        ({"store": {"bakend": "memory"}}, "store.bakend", "backend"),
        ({"tokens": {"refresh_leway": 5}}, "tokens.refresh_leway", "refresh_leeway"),
        ({"tokens": {"retry_attempt": 2}}, "tokens.retry_attempt", "retry_attempts"),
        (
            {"credentials": {"billing": cc(client_auht="post")}},
            "credentials.billing.client_auht",
            "client_auth",
        ),
        (
            {"credentials": {"billing": cc(refresh_leway=5)}},
            "credentials.billing.refresh_leway",
            "refresh_leeway",
        ),
        (
            {
                "credentials": {"billing": cc()},
                "routes": [{"host": "a.test", "credential": "billing", "pth": "/x"}],
            },
            "routes[0].pth",
            "path",
        ),
    ],
)
def test_unknown_key_suggests(data: dict[str, Any], key: str, suggestion: str) -> None:
    err = parse_error(data)
    assert_error(err, key, rf"^unknown key \(did you mean '{suggestion}'\?\)$")


def test_unknown_key_without_suggestion() -> None:
    err = parse_error({"zzzzzz": 1})
    assert_error(err, "zzzzzz", r"^unknown key$")


def test_refresh_token_key_on_client_credentials_is_unknown() -> None:
    err = parse_error({"credentials": {"billing": cc(refresh_token="rt")}})
    assert_error(err, "credentials.billing.refresh_token", r"^unknown key")


# --- wrong types and values ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "key", "message"),
    [
        ({"listen": "127.0.0.1"}, "listen", r"expected 'host:port' such as 127\.0\.0\.1:8080"),
        ({"listen": ":8080"}, "listen", r"expected 'host:port'"),
        ({"listen": "127.0.0.1:"}, "listen", r"expected 'host:port'"),
        ({"listen": "127.0.0.1:http"}, "listen", r"got '127\.0\.0\.1:http'"),
        ({"listen": "127.0.0.1:65536"}, "listen", r"expected 'host:port'"),
        ({"listen": "127.0.0.1:-1"}, "listen", r"expected 'host:port'"),
        ({"listen": 8080}, "listen", r"expected 'host:port'"),
        ({"listen": ["127.0.0.1", 8080]}, "listen", r"^expected a string, got a list$"),
        ({"listen": True}, "listen", r"^expected a string, got true/false$"),
        ({"proxy_auth": "nocolon"}, "proxy_auth", r"^expected 'user:password'$"),
        ({"store": {"backend": "etcd"}}, "store.backend", r"expected one of sqlite, memory, redis"),
        ({"store": "memory"}, "store", r"^expected a mapping, got a string$"),
        ({"tokens": []}, "tokens", r"^expected a mapping, got a list$"),
        ({"credentials": ["billing"]}, "credentials", r"^expected a mapping, got a list$"),
        ({"tokens": {"refresh_leeway": -1}}, "tokens.refresh_leeway", r"expected a number >= 0"),
        ({"tokens": {"refresh_leeway": "soon"}}, "tokens.refresh_leeway", r"got 'soon'"),
        ({"tokens": {"refresh_leeway": True}}, "tokens.refresh_leeway", r"got True"),
        ({"tokens": {"default_lifetime": 0}}, "tokens.default_lifetime", r"number >= 1"),
        ({"tokens": {"idp_timeout": 0.01}}, "tokens.idp_timeout", r"number >= 0\.1"),
        ({"tokens": {"retry_attempts": 0}}, "tokens.retry_attempts", r"from 1 to 10, got 0"),
        ({"tokens": {"retry_attempts": 11}}, "tokens.retry_attempts", r"from 1 to 10"),
        ({"tokens": {"retry_attempts": 2.5}}, "tokens.retry_attempts", r"got 2\.5"),
        ({"tokens": {"retry_attempts": "x"}}, "tokens.retry_attempts", r"got 'x'"),
        ({"credentials": {"billing": cc(scopes=5)}}, "credentials.billing.scopes", r"got int$"),
        (
            {"credentials": {"billing": cc(scopes={"a": "b"})}},
            "credentials.billing.scopes",
            r"^expected a list of strings, got a mapping$",
        ),
        (
            {"credentials": {"billing": cc(scopes=["a", 1])}},
            "credentials.billing.scopes",
            r"^expected a list of strings, got a list$",
        ),
        (
            {"credentials": {"billing": cc(params={"audience": None})}},
            "credentials.billing.params.audience",
            r"^is required$",
        ),
        (
            {"credentials": {"billing": cc(params=["a"])}},
            "credentials.billing.params",
            r"^expected a mapping, got a list$",
        ),
        (
            {"credentials": {"billing": cc(client_auth="jwt")}},
            "credentials.billing.client_auth",
            r"expected one of basic, post, private_key_jwt, .*, got 'jwt'",
        ),
        ({"credentials": {"billing": "x"}}, "credentials.billing", r"expected a mapping"),
        (
            {"credentials": {"bad name": cc()}},
            "credentials.bad name",
            r"credential names use letters",
        ),
        ({"credentials": {"x" * 65: cc()}}, "credentials." + "x" * 65, r"at most 64"),
        ({"routes": {"host": "a"}}, "routes", r"^expected a list of routes, got a mapping$"),
        ({"routes": ["a.test"]}, "routes[0]", r"^expected a mapping, got a string$"),
    ],
)
def test_wrong_types(data: dict[str, Any], key: str, message: str) -> None:
    assert_error(parse_error(data), key, message)


def test_top_level_not_a_mapping() -> None:
    assert_error(parse_error(["a"]), "(top level)", r"^expected a mapping, got a list$")


@pytest.mark.parametrize(
    ("route", "key", "message"),
    [
        ({"host": "a.test"}, "routes[0].credential", r"^is required$"),
        ({"credential": "billing"}, "routes[0].host", r"^is required$"),
        ({"host": "", "credential": "billing"}, "routes[0].host", r"^must not be empty$"),
        ({"host": "bad host", "credential": "billing"}, "routes[0].host", r"is not a host name"),
        ({"host": "*.com", "credential": "billing"}, "routes[0].host", r"wildcard needs"),
        ({"host": "a.test", "credential": "billing", "port": 0}, "routes[0].port", r"1 to 65535"),
        (
            {"host": "a.test", "credential": "billing", "port": 65536},
            "routes[0].port",
            r"^expected a whole number from 1 to 65535, got 65536$",
        ),
        (
            {"host": "a.test", "credential": "billing", "port": "https"},
            "routes[0].port",
            r"got 'https'",
        ),
        (
            {"host": "a.test", "credential": "billing", "allow_http": "yes"},
            "routes[0].allow_http",
            r"^expected true or false, got 'yes'$",
        ),
        (
            {"host": "a.test", "credential": "billing", "allow_http": 1},
            "routes[0].allow_http",
            r"^expected true or false, got 1$",
        ),
        (
            {"host": "a.test", "credential": "billing", "scheme": "ftp"},
            "routes[0].scheme",
            r"expected one of https, http, got 'ftp'",
        ),
        (
            {"host": "a.test", "credential": "billing", "path": "v1"},
            "routes[0].path",
            r"starting with '/', got 'v1'",
        ),
        (
            {"host": "a.test", "credential": "billing", "existing_authorization": "drop"},
            "routes[0].existing_authorization",
            r"expected one of replace, keep, reject",
        ),
    ],
)
def test_bad_routes(route: dict[str, Any], key: str, message: str) -> None:
    err = parse_error({"credentials": {"billing": cc()}, "routes": [route]})
    assert_error(err, key, message)


def test_route_error_key_has_its_index() -> None:
    ok = {"host": "a.test", "credential": "billing"}
    err = parse_error({"credentials": {"billing": cc()}, "routes": [ok, ok, {"host": "a.test"}]})
    assert_error(err, "routes[2].credential", r"^is required$")


def test_route_names_unknown_credential() -> None:
    err = parse_error(
        {
            "credentials": {"billing": cc(), "admin": cc()},
            "routes": [{"host": "a.test", "credential": "bililng"}],
        }
    )
    assert_error(
        err, "routes[0].credential", r"^no credential named 'bililng' \(known: admin, billing\)$"
    )


def test_route_names_credential_when_none_defined() -> None:
    err = parse_error({"routes": [{"host": "a.test", "credential": "billing"}]})
    assert_error(err, "routes[0].credential", r"\(known: none are defined\)$")


def test_http_route_needs_allow_http() -> None:
    err = parse_error(
        {
            "credentials": {"billing": cc()},
            "routes": [{"host": "a.test", "scheme": "http", "credential": "billing"}],
        }
    )
    assert_error(err, "routes[0].scheme", r"clear text; add allow_http: true")


def test_http_route_with_allow_http_false_refused() -> None:
    route = {"host": "a.test", "scheme": "http", "allow_http": False, "credential": "billing"}
    err = parse_error({"credentials": {"billing": cc()}, "routes": [route]})
    assert_error(err, "routes[0].scheme", r"clear text")


# --- listen and proxy_auth -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [
        ("127.0.0.1:8080", "127.0.0.1", 8080),
        ("127.0.0.2:3128", "127.0.0.2", 3128),
        ("localhost:1", "localhost", 1),
        ("[::1]:8080", "::1", 8080),
        ("127.0.0.1:0", "127.0.0.1", 0),
        ("127.0.0.1:65535", "127.0.0.1", 65535),
    ],
)
def test_loopback_listen_accepted(listen: str, host: str, port: int) -> None:
    cfg = parse({"listen": listen})
    assert (cfg.listen_host, cfg.listen_port) == (host, port)


@pytest.mark.parametrize(
    ("listen", "host"),
    [
        ("0.0.0.0:8080", "0.0.0.0"),
        ("192.168.1.5:8080", "192.168.1.5"),
        ("[::]:8080", "::"),
        ("proxy.lan:8080", "proxy.lan"),
    ],
)
def test_non_loopback_listen_needs_proxy_auth(listen: str, host: str) -> None:
    err = parse_error({"listen": listen})
    assert_error(
        err, "listen", rf"^'{re.escape(host)}' is reachable from other machines; set proxy_auth"
    )


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [("0.0.0.0:8080", "0.0.0.0", 8080), ("[::]:3128", "::", 3128)],
)
def test_non_loopback_listen_with_proxy_auth(listen: str, host: str, port: int) -> None:
    cfg = parse({"listen": listen, "proxy_auth": "ops:${PW}"}, {"PW": "pw-" + "x" * 10})
    assert cfg.proxy_auth == "ops:pw-" + "x" * 10
    assert (cfg.listen_host, cfg.listen_port) == (host, port)


def test_non_loopback_listen_with_empty_proxy_auth_refused() -> None:
    err = parse_error({"listen": "0.0.0.0:8080", "proxy_auth": ""})
    assert_error(err, "proxy_auth", r"^expected 'user:password'$")


# --- credentials ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cred", "key", "message"),
    [
        (
            {"token_url": "https://idp/t"},
            "credentials.c.grant",
            r"^is required: one of client_credentials, refresh_token, .*static$",
        ),
        (
            {"grant": "implicit"},
            "credentials.c.grant",
            r"^expected one of client_credentials, refresh_token, .*static, got 'implicit'$",
        ),
        (
            cc(client_secret=None),
            "credentials.c.client_secret",
            r"^is required for grant client_credentials$",
        ),
        (
            cc(client_secret=""),
            "credentials.c.client_secret",
            r"^is required for grant client_credentials$",
        ),
        (cc(token_url=None), "credentials.c.token_url", r"^is required\b"),
        (
            cc(token_url="http://idp.example.com/token"),
            "credentials.c.token_url",
            r"^expected an https:// URL, got 'http://idp\.example\.com/token'$",
        ),
        (
            cc(token_url="idp.example.com/token"),
            "credentials.c.token_url",
            r"expected an https:// URL",
        ),
        (cc(client_id=None), "credentials.c.client_id", r"^is required$"),
        ({"grant": "static"}, "credentials.c.token", r"^is required$"),
        ({"grant": "static", "token": ""}, "credentials.c.token", r"^must not be empty$"),
        (
            {"grant": "static", "token": "t", "token_url": "https://x/t"},
            "credentials.c.token_url",
            r"^unknown key",
        ),
        (
            {"grant": "refresh_token", "token_url": "http://idp/t", "client_id": "x"},
            "credentials.c.token_url",
            r"expected an https:// URL",
        ),
    ],
)
def test_bad_credentials(cred: dict[str, Any], key: str, message: str) -> None:
    assert_error(parse_error({"credentials": {"c": cred}}), key, message)


def test_client_credentials_secret_from_env_must_not_be_empty() -> None:
    err = parse_error({"credentials": {"billing": cc()}}, {"BILLING_SECRET": ""})
    assert_error(
        err, "credentials.billing.client_secret", r"is required for grant client_credentials"
    )


def test_static_grant() -> None:
    cfg = parse({"credentials": {"legacy": {"grant": "static", "token": "${LEGACY}"}}})
    c = cfg.credentials["legacy"]
    assert c == CredentialConfig(name="legacy", grant="static", token="legacy-token")
    assert c.token_url is None and c.client_id is None
    assert c.seed_id is None
    assert c.secrets() == ["legacy-token"]


def test_static_grant_accepts_policy_keys() -> None:
    cfg = parse({"credentials": {"legacy": {"grant": "static", "token": "t", "idp_timeout": 3}}})
    assert cfg.credentials["legacy"].policy == TokenPolicy(idp_timeout=3.0)


def test_refresh_token_grant_without_secret_or_seed() -> None:
    cfg = parse(
        {
            "credentials": {
                "r": {"grant": "refresh_token", "token_url": "https://idp/t", "client_id": "cli"}
            }
        }
    )
    c = cfg.credentials["r"]
    assert (c.grant, c.client_secret, c.refresh_token, c.seed_id) == (
        "refresh_token",
        None,
        None,
        None,
    )


def test_seed_id_follows_refresh_token() -> None:
    def seed(rt: str) -> str | None:
        cred = {
            "grant": "refresh_token",
            "token_url": "https://idp/t",
            "client_id": "c",
            "refresh_token": rt,
        }
        return parse({"credentials": {"r": cred}}).credentials["r"].seed_id

    assert seed("rt-1") == seed("rt-1")
    assert seed("rt-1") != seed("rt-2")


def test_credential_policy_overrides() -> None:
    cfg = parse(
        {
            "tokens": {"refresh_leeway": 30, "backoff_max": 5},
            "credentials": {
                "billing": cc(refresh_leeway=120, retry_attempts=1),
                "other": cc(),
            },
        }
    )
    assert cfg.credentials["billing"].policy == TokenPolicy(
        refresh_leeway=120.0, backoff_max=5.0, retry_attempts=1
    )
    assert cfg.credentials["other"].policy == TokenPolicy(refresh_leeway=30.0, backoff_max=5.0)


def test_credential_policy_override_validated() -> None:
    err = parse_error({"credentials": {"billing": cc(refresh_leeway=-5)}})
    assert_error(err, "credentials.billing.refresh_leeway", r"expected a number >= 0, got -5")


def test_credential_names() -> None:
    cfg = parse({"credentials": {"a.b_c-1": cc(), "Z9": cc()}})
    assert list(cfg.credentials) == ["a.b_c-1", "Z9"]
    assert cfg.credentials["Z9"].name == "Z9"


# --- paths and ca_certs --------------------------------------------------------------------------


def test_relative_paths_resolved_against_base_dir(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text(Path(certifi.where()).read_text())
    cfg = parse_config(
        {
            "ca_certs": ["ca.pem"],
            "confdir": "mitm",
            "audit_log": "/var/log/audit.jsonl",
            "store": {"path": "state/tokens.db", "key_file": "keys/store.key"},
        },
        SOURCE,
        env={},
        base_dir=tmp_path,
    )
    assert cfg.ca_certs == (tmp_path / "ca.pem",)
    assert cfg.confdir == tmp_path / "mitm"
    assert cfg.audit_log == Path("/var/log/audit.jsonl")
    assert cfg.store == StoreConfig(
        "sqlite", tmp_path / "state/tokens.db", tmp_path / "keys/store.key"
    )


def test_missing_ca_cert(tmp_path: Path) -> None:
    (tmp_path / "a.pem").write_text(Path(certifi.where()).read_text())
    with pytest.raises(ConfigError) as info:
        parse_config({"ca_certs": ["a.pem", "b.pem"]}, SOURCE, env={}, base_dir=tmp_path)
    assert_error(
        info.value, "ca_certs[1]", rf"^no such file: {re.escape(str(tmp_path / 'b.pem'))}$"
    )


# --- load_config ---------------------------------------------------------------------------------


def test_load_config(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "listen: 127.0.0.1:9090\n"
        "tokens:\n"
        "  refresh_leeway: 15\n"
        "credentials:\n"
        "  billing:\n"
        "    grant: client_credentials\n"
        "    token_url: https://idp.example.com/token\n"
        "    client_id: billing\n"
        "    client_secret: ${BILLING_SECRET}\n"
        "    scopes: a b\n"
        "routes:\n"
        "  - host: api.example.com\n"
        "    credential: billing\n",
        encoding="utf-8",
    )
    cfg = load_config(path, env=ENV)
    assert cfg.source == str(path)
    assert cfg.listen_port == 9090
    assert cfg.credentials["billing"].client_secret == "s3cret"
    assert cfg.credentials["billing"].scopes == ("a", "b")
    assert cfg.credentials["billing"].policy.refresh_leeway == 15.0
    assert [r.describe() for r in cfg.routes] == ["https://api.example.com:443/"]


def test_load_config_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("# nothing yet\n")
    cfg = load_config(path, env={})
    assert (cfg.listen_host, cfg.listen_port) == ("127.0.0.1", 8080)


def test_load_config_relative_paths_from_file_dir(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "config.yaml"
    path.parent.mkdir()
    path.write_text("confdir: mitm\n")
    assert load_config(path, env={}).confdir == tmp_path / "conf" / "mitm"


def test_load_config_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=r"^.*nope\.yaml: no such file \(pass --config") as info:
        load_config(path, env={})
    assert (info.value.source, info.value.key) == (str(path), "")
    assert str(info.value).startswith(f"{path}: ")


def test_load_config_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r": cannot read: ") as info:
        load_config(tmp_path, env={})
    assert str(info.value).startswith(f"{tmp_path}: ")


def test_load_config_yaml_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("listen: 127.0.0.1:8080\ncredentials:\n  billing: [unclosed\n  other: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    err = info.value
    assert (err.source, err.key) == (str(path), "")
    assert str(err).startswith(f"{path}: not valid YAML: ")
    assert re.search(r"line \d+, column \d+: ", err.message), err.message


def test_load_config_yaml_error_position(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text('a: 1\nb: "unterminated\n')
    with pytest.raises(ConfigError, match=r"not valid YAML: line 3, column 1: ") as info:
        load_config(path, env={})
    assert str(info.value).startswith(str(path))


def test_load_config_error_names_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("tokens:\n  refresh_leway: 5\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(info.value) == (
        f"{path}: tokens.refresh_leway: unknown key (did you mean 'refresh_leeway'?)"
    )


def test_load_config_yaml_scalar_top_level(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("just a string\n")
    with pytest.raises(ConfigError, match=r": \(top level\): expected a mapping, got a string$"):
        load_config(path, env={})


# --- config_path ---------------------------------------------------------------------------------


def test_config_path_order(tmp_path: Path) -> None:
    env = {"AUTHPROXY_CONFIG": "/etc/ap.yaml", "XDG_CONFIG_HOME": str(tmp_path)}
    assert config_path("/cli.yaml", env) == Path("/cli.yaml")
    assert config_path(None, env) == Path("/etc/ap.yaml")
    assert config_path(None, {"XDG_CONFIG_HOME": str(tmp_path)}) == (
        tmp_path / "authproxy" / "config.yaml"
    )
    assert config_path(None, {}) == Path.home() / ".config" / "authproxy" / "config.yaml"


# --- bugs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"tokens": {"refresh_leeway": [1]}}, "tokens.refresh_leeway"),
        ({"tokens": {"retry_attempts": {"n": 2}}}, "tokens.retry_attempts"),
        (
            {
                "credentials": {"b": cc()},
                "routes": [{"host": "a.test", "credential": "b", "port": [443]}],
            },
            "routes[0].port",
        ),
    ],
)
def test_number_of_wrong_type_is_a_config_error(data: dict[str, Any], key: str) -> None:
    err = parse_error(data)
    assert err.key == key


@pytest.mark.parametrize("key", ["refresh_leeway", "backoff_max", "idp_timeout"])
def test_nan_refused(key: str) -> None:
    err = parse_error({"tokens": {key: math.nan}})
    assert err.key == f"tokens.{key}"
