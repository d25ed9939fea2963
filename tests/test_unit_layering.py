"""The bottom modules stay at the bottom: importing a pure rule module loads no I/O machinery."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# (mitmproxy itself loads cryptography, so that one cannot be on the list.)
HEAVY = ("requests", "requests_oauthlib", "oauthlib", "sqlite3", "redis", "yaml",
         "proxy_addon.config", "proxy_addon.cache", "proxy_addon.grants",
         "proxy_addon.store")  # fmt: skip


def _loaded_after_import(
    module: str, heavy: tuple[str, ...] = HEAVY
) -> tuple[list[str], dict[str, str]]:
    code = (
        "import json, os, sys\n"
        f"before = dict(os.environ)\nimport {module}\n"
        f"heavy = {heavy!r}\n"
        "print(json.dumps([sorted(m for m in sys.modules if m in heavy or "
        "any(m.startswith(h + '.') for h in heavy)), "
        "{k: v for k, v in os.environ.items() if before.get(k) != v}]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded, env = json.loads(out.stdout)
    return loaded, env


@pytest.mark.parametrize(
    "module",
    ["proxy_addon.guards", "proxy_addon.replies", "proxy_addon.errors", "proxy_addon.state",
     "proxy_addon.netutil", "proxy_addon.routes", "proxy_addon.redact"],
)  # fmt: skip
def test_rule_modules_load_no_grants_store_or_http_client(module: str) -> None:
    loaded, env = _loaded_after_import(module)
    assert loaded == [] and env == {}


def test_the_yaml_reader_is_at_the_bottom() -> None:
    """yamlconf knows no schema: it loads no module of ours (but errors) and nothing heavy but
    yaml, which is its job."""
    heavy = (*(h for h in HEAVY if h != "yaml"), "proxy_addon")
    loaded, env = _loaded_after_import("proxy_addon.yamlconf", heavy)
    assert set(loaded) <= {"proxy_addon", "proxy_addon.yamlconf", "proxy_addon.errors"}
    assert env == {}


def test_status_views_do_not_load_the_cache() -> None:
    loaded, _ = _loaded_after_import("proxy_addon.status")
    assert "proxy_addon.cache" not in loaded and "requests" not in loaded
