"""mitmproxy options and modes that could move a routed request, or expose its names, after the
addon decided (issue 8.8), and weak proxy passwords on listeners others can reach (8.4)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from proxy_addon.config import MIN_PROXY_PASSWORD, ConfigError, parse_config
from proxy_addon.guards import unsafe_options

STRONG = "ops:" + "p" * MIN_PROXY_PASSWORD


def _opts(**over: object) -> SimpleNamespace:
    base = dict(proxy_debug=False, ssl_insecure=False, map_remote=[], stickyauth=None,
                proxyauth=None, mode=["regular"], listen_host="127.0.0.1", modify_headers=[],
                validate_inbound_headers=True, keep_host_header=False, intercept=None)  # fmt: skip
    return SimpleNamespace(**{**base, **over})


@pytest.mark.parametrize(
    ("over", "expected"),
    [
        ({"mode": ["reverse:https://api.example.test"]}, "mode reverse is refused"),
        ({"mode": ["upstream:http://corp-proxy:3128"]}, "mode upstream is refused"),
        ({"mode": ["transparent"]}, "mode transparent is refused"),
        ({"mode": ["wireguard"]}, "mode wireguard is refused"),
        ({"mode": ["local"]}, "mode local is refused"),
        ({"mode": ["dns"]}, "mode dns is refused"),
        ({"mode": ["regular", "socks5@127.0.0.1:1080"]}, None),
        ({"modify_headers": ["/~q/Host/other.example.net"]}, "modify_headers"),
        ({"modify_headers": ["|HOST|other"]}, "modify_headers"),
        ({"modify_headers": ["/:authority/other"]}, "modify_headers"),
        ({"modify_headers": ["/Authorization/Bearer x"]}, "modify_headers"),
        ({"modify_headers": ["/\\x48ost/other"]}, "modify_headers"),  # escaped name
        ({"modify_headers": ["/~q/X-Trace/1"]}, None),
        ({"validate_inbound_headers": False}, "validate_inbound_headers"),
        ({"keep_host_header": True}, "keep_host_header"),
        ({"intercept": "~q"}, "intercept"),
        ({"listen_host": "0.0.0.0", "proxyauth": "ops:short"}, "shorter than 12"),
        ({"listen_host": "0.0.0.0", "proxyauth": ":"}, "shorter than 12"),
        ({"listen_host": "0.0.0.0", "proxyauth": STRONG}, None),
        ({"listen_host": "0.0.0.0", "proxyauth": "@/etc/htpasswd"}, None),
        ({"proxyauth": "ops:short"}, None),  # loopback: only local users, see issue 8.3
    ],
)
def test_options_that_move_a_request_are_refused(over: dict, expected: str | None) -> None:
    problem = unsafe_options(_opts(**over))
    if expected is None:
        assert problem is None
    else:
        assert problem is not None and expected in problem


def _parse(**top: object) -> object:
    return parse_config(top, "test.yaml", env={})


@pytest.mark.parametrize(
    ("top", "message"),
    [
        ({"listen": "0.0.0.0:8080", "proxy_auth": ":"}, "both parts non-empty"),
        ({"listen": "0.0.0.0:8080", "proxy_auth": "ops:"}, "both parts non-empty"),
        ({"listen": "0.0.0.0:8080", "proxy_auth": "ops:pw"}, "shorter than 12 characters"),
        ({"listen": "127.0.0.1:8080", "proxy_auth": ":"}, "both parts non-empty"),
    ],
)
def test_weak_proxy_auth_is_refused(top: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _parse(**top)


def test_strong_proxy_auth_on_all_interfaces_and_short_on_loopback_are_accepted() -> None:
    _parse(listen="0.0.0.0:8080", proxy_auth=STRONG)
    _parse(listen="127.0.0.1:8080", proxy_auth="ops:pw")
