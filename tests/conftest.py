from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import CLIENT_ID, CLIENT_SECRET, Proxy

from proxy_addon import hints
from proxy_addon.demo.api import ApiServer
from proxy_addon.demo.certs import Pki, make_pki
from proxy_addon.demo.idp import AuthServer

NAMES = (
    "localhost",
    "127.0.0.1",
    "example.test",
    "*.example.test",
    "*.b.example.test",
    "other.test",
    "evil-example.test",
    "example.test.evil.test",
)


# Where a tool would find (or write) a user's files: no test may use the real ones.
XDG_DIRS = {
    "XDG_CONFIG_HOME": ".config",
    "XDG_STATE_HOME": ".local/state",
    "XDG_DATA_HOME": ".local/share",
    "XDG_CACHE_HOME": ".cache",
}


@pytest.fixture(scope="session", autouse=True)
def isolated_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every test, and every process a test starts, gets a fresh HOME and XDG directories."""
    home = tmp_path_factory.mktemp("home")
    saved = {k: os.environ.get(k) for k in ("HOME", *XDG_DIRS, "AUTHPROXY_CONFIG", "AUTHPROXY_KEY")}
    os.environ["HOME"] = str(home)
    for var, sub in XDG_DIRS.items():
        os.environ[var] = str(home / sub)
    os.environ.pop("AUTHPROXY_CONFIG", None)
    os.environ.pop("AUTHPROXY_KEY", None)
    yield home
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(autouse=True)
def _no_config_hint_between_tests() -> Iterator[None]:
    """Commands run in-process set the --config that messages name (hints.use_config); one
    test's must not show up in the next test's messages."""
    yield
    hints.use_config(None)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"), NAMES)


@pytest.fixture
def idp(pki: Pki) -> Iterator[AuthServer]:
    server = AuthServer(pki).start()
    server.add_client(CLIENT_ID, CLIENT_SECRET)
    yield server
    server.stop()


@pytest.fixture
def api(pki: Pki, idp: AuthServer) -> Iterator[ApiServer]:
    server = ApiServer(idp.is_valid, pki).start()
    yield server
    server.stop()


@pytest.fixture
def http_api(idp: AuthServer) -> Iterator[ApiServer]:
    server = ApiServer(idp.is_valid, None).start()
    yield server
    server.stop()


@pytest.fixture
def proxies(tmp_path: Path) -> Iterator[list[Proxy]]:
    """Every proxy a test starts goes here, and is stopped after it."""
    started: list[Proxy] = []
    yield started
    for p in started:
        p.stop()


@pytest.fixture
def start_proxy(tmp_path: Path, proxies: list[Proxy], pki: Pki):  # type: ignore[no-untyped-def]
    def start(config: dict, *args: str, name: str = "proxy", env: dict | None = None) -> Proxy:
        config = {
            "ca_certs": [str(pki.ca_cert)],
            "store": {
                "path": str(tmp_path / "state" / "tokens.db"),
                "key_file": str(tmp_path / "keys" / "store.key"),
            },
            **config,
        }
        p = Proxy(tmp_path, config, name=name)
        proxies.append(p)
        return p.start(*args, env=env)

    return start
