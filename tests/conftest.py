from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import CLIENT_ID, CLIENT_SECRET, Proxy

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
