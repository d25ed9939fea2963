"""The provider presets and the example files in config/ that use them."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from proxy_addon.config import ConfigError, load_config, parse_config

CONFIG = Path(__file__).resolve().parent.parent / "config"
ENV = {
    "GITHUB_CLIENT_ID": "gh", "GITHUB_CLIENT_SECRET": "s", "GOOGLE_CLIENT_ID": "go",
    "GOOGLE_CLIENT_SECRET": "s", "ENTRA_TENANT_ID": "contoso", "ENTRA_CLIENT_ID": "ms",
    "BILLING_CLIENT_SECRET": "s", "REPORTS_CLIENT_SECRET": "s", "REPORTS_REFRESH_TOKEN": "r",
    "LEGACY_API_TOKEN": "t", "GITHUB_APP_ID": "1", "GITHUB_INSTALLATION_ID": "2",
}  # fmt: skip


@pytest.mark.parametrize("path", sorted(CONFIG.rglob("*.yaml")), ids=lambda p: p.name)
def test_every_example_config_is_valid(path: Path) -> None:
    config = load_config(path, ENV)
    assert config.credentials and len(config.routes) >= 1


def test_github_preset() -> None:
    cred = load_config(CONFIG / "providers" / "github.yaml", ENV).credentials["github"]
    assert cred.token_url == "https://github.com/login/oauth/access_token"
    assert cred.authorization_url == "https://github.com/login/oauth/authorize"
    assert cred.policy.default_lifetime == math.inf  # OAuth App tokens never expire
    assert cred.redirect_port == 8765


def test_microsoft_preset_fills_tenant_and_offline_access() -> None:
    cred = load_config(CONFIG / "providers" / "microsoft.yaml", ENV).credentials["graph"]
    assert cred.token_url == "https://login.microsoftonline.com/contoso/oauth2/v2.0/token"
    assert cred.device_authorization_url is not None
    assert "/contoso/" in cred.device_authorization_url
    assert cred.scopes == ("https://graph.microsoft.com/User.Read", "offline_access")


def test_google_preset_asks_for_offline_access() -> None:
    cred = load_config(CONFIG / "providers" / "google.yaml", ENV).credentials["google"]
    assert dict(cred.authorization_params) == {"access_type": "offline", "prompt": "consent"}


def test_own_values_win_over_the_preset() -> None:
    data = {"credentials": {"gh": {"preset": "github", "grant": "device_code", "client_id": "x",
                                   "token_url": "https://ghe.example.com/token"}}}  # fmt: skip
    cred = parse_config(data, "c.yaml", {}).credentials["gh"]
    assert cred.token_url == "https://ghe.example.com/token"
    assert cred.device_authorization_url == "https://github.com/login/device/code"


def test_unknown_preset() -> None:
    data = {"credentials": {"x": {"preset": "gitlab", "grant": "device_code", "client_id": "x"}}}
    with pytest.raises(ConfigError, match=r"credentials\.x\.preset: expected one of github"):
        parse_config(data, "c.yaml", {})
