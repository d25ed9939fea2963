"""Issue 13 §1: what the config parser and `check` refuse or warn about."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

import certifi
import pytest
import yaml

from proxy_addon import config as config_module
from proxy_addon.config import ConfigError, load_config, parse_config
from proxy_addon.config_lint import config_warnings, shadowed_routes

SOURCE = "cfg.yaml"


def cc(**extra: Any) -> dict[str, Any]:
    return {
        "grant": "client_credentials",
        "token_url": "https://idp.example.com/token",
        "client_id": "c",
        "client_secret": "s",
        **extra,
    }


def error(data: Any, env: dict[str, str] | None = None, base: Path | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(data, SOURCE, env=env or {}, base_dir=base)
    return info.value


# --- YAML ---------------------------------------------------------------------------------------


def test_duplicate_keys_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("credentials:\n  a:\n    client_secret: x\n    client_secret: y\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'client_secret' \(first given on line 3"):
        load_config(path, env={})
    path.write_text("routes: []\nroutes: []\n")
    with pytest.raises(ConfigError, match=r"line 2.*duplicate key 'routes'"):
        load_config(path, env={})


def test_the_c_loader_is_used_when_there_is_one() -> None:
    if not hasattr(yaml, "CSafeLoader"):
        pytest.skip("PyYAML without libyaml")
    assert issubclass(config_module._UniqueKeyLoader, yaml.CSafeLoader)


def test_ten_thousand_routes_load_quickly(tmp_path: Path) -> None:
    routes = [{"host": f"h{i}.example.com", "credential": "a"} for i in range(10_000)]
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump({"credentials": {"a": cc()}, "routes": routes}))
    started = time.monotonic()
    config = load_config(path, env={})
    assert len(config.routes) == 10_000
    assert shadowed_routes(config.routes) == []
    assert time.monotonic() - started < 10  # several times that with the pure-Python parser


# --- environment --------------------------------------------------------------------------------


def test_every_missing_variable_is_reported_at_once() -> None:
    err = error(
        {"proxy_auth": "${USER_PW}", "credentials": {"a": cc(client_secret="${SECRET}")},
         "routes": [{"host": "${HOST}", "credential": "a"}]}
    )  # fmt: skip
    for part in ("USER_PW (for proxy_auth)", "SECRET (for credentials.a.client_secret)",
                 "HOST (for routes[0].host)"):  # fmt: skip
        assert part in err.message


@pytest.mark.parametrize(
    ("written", "env", "message"),
    [
        ("${S:?set S to the billing secret}", {}, "S is not set: set S to the billing secret"),
        ("${S:?x}", {"S": ""}, "S is not set: x"),
        ("$S", {"S": "v"}, "unsupported '\\$' at '\\$S'"),
        ("${S", {"S": "v"}, "unsupported"),
        ("${S:+x}", {"S": "v"}, "unsupported"),
        ("a$", {}, "unsupported"),
    ],
)
def test_env_forms(written: str, env: dict[str, str], message: str) -> None:
    err = error({"credentials": {"a": cc(client_secret=written)}}, env)
    assert err.key == "credentials.a.client_secret"
    assert re.search(message, err.message), err.message


def test_defaults() -> None:
    cfg = parse_config(
        {"credentials": {"a": cc(client_secret="${S:-fallback}", client_id="${C-cid}",
                                 scopes="x${E-y}z ${U-u}")}},
        SOURCE, env={"E": ""},
    )  # fmt: skip
    assert cfg.credentials["a"].client_secret == "fallback"
    assert cfg.credentials["a"].client_id == "cid"
    assert cfg.credentials["a"].scopes == ("xz", "u")  # E is set, though empty: `-` keeps it


# --- secrets from files -------------------------------------------------------------------------


def _secret(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "secret"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_client_secret_from_a_file(tmp_path: Path) -> None:
    path = _secret(tmp_path, "pa$$w0rd${X}\n")
    cred = cc(client_secret_file=str(path))
    del cred["client_secret"]
    cfg = parse_config({"credentials": {"a": cred}}, SOURCE, env={})
    assert cfg.credentials["a"].client_secret == "pa$$w0rd${X}"  # as written: no expansion
    assert "pa$$w0rd${X}" in cfg.secrets()
    assert "pa$$w0rd" not in repr(cfg)


def test_secret_file_path_is_relative_to_the_config_and_expands_variables(tmp_path: Path) -> None:
    _secret(tmp_path, "from-file")
    cred = {**cc(), "client_secret_file": "${DIR}/secret"}
    del cred["client_secret"]
    cfg = parse_config({"credentials": {"a": cred}}, SOURCE, env={"DIR": "."}, base_dir=tmp_path)
    assert cfg.credentials["a"].client_secret == "from-file"


def test_proxy_auth_from_a_file(tmp_path: Path) -> None:
    path = _secret(tmp_path, "me:long-enough-password")
    cfg = parse_config({"proxy_auth_file": str(path)}, SOURCE, env={})
    assert cfg.proxy_auth == "me:long-enough-password"


@pytest.mark.parametrize(
    ("mode", "message"),
    [(0o644, "can be read by other users"), (0o620, "can be changed by other users")],
)
def test_a_secret_file_others_can_read_is_refused(tmp_path: Path, mode: int, message: str) -> None:
    path = _secret(tmp_path, "x", mode)
    cred = {**cc(), "client_secret_file": str(path)}
    del cred["client_secret"]
    err = error({"credentials": {"a": cred}})
    assert err.key == "credentials.a.client_secret_file"
    assert message in err.message and "chmod 600" in err.message


def test_secret_and_secret_file_together_are_refused(tmp_path: Path) -> None:
    path = _secret(tmp_path, "x")
    err = error({"credentials": {"a": cc(client_secret_file=str(path))}})
    assert "either client_secret or client_secret_file" in err.message


def test_a_missing_secret_file(tmp_path: Path) -> None:
    cred = {**cc(), "client_secret_file": str(tmp_path / "nope")}
    del cred["client_secret"]
    assert "cannot read" in error({"credentials": {"a": cred}}).message


def test_refresh_token_and_static_token_from_files(tmp_path: Path) -> None:
    path = _secret(tmp_path, "static-token-value")
    cfg = parse_config(
        {"credentials": {"s": {"grant": "static", "token_file": str(path)}}}, SOURCE, env={}
    )
    assert cfg.credentials["s"].token == "static-token-value"


# --- URLs ---------------------------------------------------------------------------------------


def test_loopback_http_token_url_with_allow_http() -> None:
    cfg = parse_config(
        {"credentials": {"a": cc(token_url="http://localhost:8180/token", allow_http=True)},
         "routes": [{"host": "api.example.com", "credential": "a"}]},
        SOURCE, env={},
    )  # fmt: skip
    assert cfg.credentials["a"].token_url == "http://localhost:8180/token"
    [warning] = config_warnings(cfg)
    assert "plain http" in warning and "credentials.a.token_url" in warning


@pytest.mark.parametrize("url", ["http://idp.example.com/token", "http://10.0.0.5/token"])
def test_http_to_another_host_is_refused_even_with_allow_http(url: str) -> None:
    err = error({"credentials": {"a": cc(token_url=url, allow_http=True)}})
    assert "only to this machine" in err.message


def test_http_loopback_without_allow_http_says_how() -> None:
    err = error({"credentials": {"a": cc(token_url="http://127.0.0.1:8180/token")}})
    assert "allow_http: true" in err.message


@pytest.mark.parametrize(
    "url", ["https://idp.example.com/my token", "https://idp.example.com/t\n", "https:///token"]
)
def test_bad_urls_are_refused(url: str) -> None:
    err = error({"credentials": {"a": cc(token_url=url)}})
    assert err.key == "credentials.a.token_url"


# --- what `run` refuses -------------------------------------------------------------------------


def test_a_ca_file_that_is_not_pem_is_refused(tmp_path: Path) -> None:
    (tmp_path / "ca.der").write_bytes(b"\x30\x82\x01\x0a" + os.urandom(64))
    err = error({"ca_certs": ["ca.der"]}, base=tmp_path)
    assert err.key == "ca_certs[0]" and "no PEM certificate" in err.message
    (tmp_path / "ca.pem").write_text(Path(certifi.where()).read_text())
    parse_config({"ca_certs": ["ca.pem"]}, SOURCE, env={}, base_dir=tmp_path)


def test_a_key_file_beside_the_store_is_refused(tmp_path: Path) -> None:
    store = {"path": str(tmp_path / "state" / "tokens.db"),
             "key_file": str(tmp_path / "state" / "store.key")}  # fmt: skip
    err = error({"store": store})
    assert err.key == "store.key_file" and "same directory" in err.message
    # With AUTHPROXY_KEY the key file is not used.
    parse_config({"store": store}, SOURCE, env={"AUTHPROXY_KEY": "k"})


# --- warnings -----------------------------------------------------------------------------------


def test_shadowed_routes_and_unused_credentials() -> None:
    cfg = parse_config(
        {
            "credentials": {"a": cc(), "b": cc(), "unused": cc()},
            "routes": [
                {"host": "*.example.com", "credential": "a"},
                {"host": "api.example.com", "path": "/v1", "credential": "b"},  # shadowed
                {"host": "api.example.com", "port": 8443, "credential": "b"},  # other port
                {"host": "api.other.com", "path": "/v1", "credential": "a"},
                {"host": "api.other.com", "path": "/v1/x", "credential": "b"},  # shadowed
                {"host": "api.other.com", "path": "/v2", "credential": "b"},
                {"host": "*.x.example.com", "credential": "b"},  # shadowed by *.example.com
            ],
        },
        SOURCE, env={},
    )  # fmt: skip
    assert [(r.index, by.index) for r, by in shadowed_routes(cfg.routes)] == [
        (1, 0), (4, 3), (6, 0)
    ]  # fmt: skip
    warnings = config_warnings(cfg)
    assert any("routes[1]" in w and "never matches" in w for w in warnings)
    assert "credentials.unused: no route uses it" in warnings
