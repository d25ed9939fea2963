"""The start-up durability check against a real redis-server (issue 9): the store reads
`appendonly`/`appendfsync` and warns when a restart could lose acknowledged writes; a server
that forbids CONFIG gets a hint instead of a failure; and /readyz's store ping."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from support import redis_server

from proxy_addon.store import StoreUnavailableError
from proxy_addon.store.keys import Keyring
from proxy_addon.store.redis_config import RedisSettings
from proxy_addon.store.redis_store import RedisStore
from proxy_addon.store.sealer import Sealer

pytestmark = pytest.mark.skipif(
    not redis_server.available(), reason="redis-server is not installed (.ci/run installs it)"
)

LOGGER = "proxy_addon.store.redis_store"


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[redis_server.RedisServer]:
    server = redis_server.RedisServer(tmp_path).start()
    yield server
    server.stop()


def _store(server: redis_server.RedisServer, user: str | None = None,
           password: str | None = None) -> RedisStore:  # fmt: skip
    settings = RedisSettings("127.0.0.1", server.port, 0, False, user,
                             password or server.password, connect_timeout=0.5,
                             timeout=0.5)  # fmt: skip
    return RedisStore(settings, Sealer(Keyring.from_keys([Fernet.generate_key().decode()], "k")))


@pytest.mark.parametrize(
    ("appendonly", "appendfsync", "warned"),
    [("no", "everysec", "appendonly is off"), ("yes", "no", "appendfsync is no"),
     ("yes", "everysec", None), ("yes", "always", None)],
)
def test_start_up_reads_the_servers_persistence_and_warns(
    redis: redis_server.RedisServer, caplog: pytest.LogCaptureFixture,
    appendonly: str, appendfsync: str, warned: str | None,
) -> None:  # fmt: skip
    redis.client().config_set("appendonly", appendonly)
    redis.client().config_set("appendfsync", appendfsync)
    store = _store(redis)
    with caplog.at_level(logging.INFO, LOGGER):
        store.check()
    store.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    if warned is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and warned in warnings[0]
        assert redis.password not in warnings[0]


def test_a_server_that_forbids_config_gets_a_hint_not_a_failure(
    redis: redis_server.RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    # As on managed Redis: an ACL user without the CONFIG command.
    redis.client().acl_setuser("member", enabled=True, passwords=["+member-pw-123"],
                               keys=["*"], commands=["+@all", "-config"])  # fmt: skip
    store = _store(redis, "member", "member-pw-123")
    with caplog.at_level(logging.INFO, LOGGER):
        store.check()
    store.close()
    assert any("CONFIG GET is not allowed" in r.getMessage() and "appendfsync" in r.getMessage()
               for r in caplog.records)  # fmt: skip
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_ping_is_one_round_trip_and_says_when_redis_is_gone(
    redis: redis_server.RedisServer,
) -> None:
    store = _store(redis)
    store.ping()
    redis.kill()
    with pytest.raises(StoreUnavailableError, match="unreachable while pinging"):
        store.ping()
    store.close()


def test_authproxy_run_prints_the_warning(
    start_proxy, idp, api, redis: redis_server.RedisServer, tmp_path: Path
) -> None:
    from harness import cc_credential, route

    redis.client().config_set("appendonly", "no")
    home = tmp_path / "home"
    home.mkdir()
    proxy = start_proxy(
        {"store": {"backend": "redis", "url": redis.url},
         "credentials": {"api": cc_credential(idp.token_url)},
         "routes": [route("api.example.test", api.port)]},
        env={"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
             "XDG_STATE_HOME": str(home / ".state"),
             "AUTHPROXY_KEY": Fernet.generate_key().decode()},
    )  # fmt: skip
    deadline = time.monotonic() + 10  # the log file may lag the listening port a little
    while "appendonly is off" not in (output := proxy.output()):
        assert time.monotonic() < deadline, output
        time.sleep(0.05)
    assert "appendonly is off" in output and "appendfsync always" in output, output
    assert redis.password not in output
