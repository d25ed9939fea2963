"""`store: {backend: redis}` config: what is accepted, what is refused, and that the password
never shows (pure: no server)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from proxy_addon.config import ConfigError, parse_config
from proxy_addon.store.redis_config import RedisSettings

SOURCE = "test.yaml"


def store(section: dict, env: dict | None = None, base: Path | None = None) -> RedisSettings:
    cfg = parse_config(
        {"store": {"backend": "redis", **section}}, SOURCE, env=env or {}, base_dir=base
    )
    assert cfg.store.backend == "redis"
    return cfg.store.settings


def test_url_with_password_from_the_environment_db_and_defaults() -> None:
    s = store({"url": "redis://fleet:${PW}@cache.internal:6380/3"}, {"PW": "s3cr%40t"})
    assert (s.host, s.port, s.db, s.tls, s.username) == ("cache.internal", 6380, 3, False, "fleet")
    assert s.password == "s3cr@t"  # percent-decoded
    assert s.key_prefix == "authproxy:" and s.lock_ttl == 15.0
    assert (s.connect_timeout, s.timeout, s.mode) == (2.0, 2.0, "standalone")
    assert "s3cr" not in s.display and "s3cr" not in repr(s)
    assert s.display == "redis://fleet@cache.internal:6380/3"


def test_the_password_is_among_the_secrets_scrubbed_from_logs() -> None:
    cfg = parse_config(
        {"store": {"backend": "redis", "url": "redis://h", "password": "${PW}"}},
        SOURCE,
        env={"PW": "pw-123456789"},
    )
    assert "pw-123456789" in cfg.secrets()


def test_tls_with_a_private_ca_sentinel_and_cluster(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("x")
    s = store(
        {"url": "rediss://h", "ca_certs": "ca.pem", "key_prefix": "team-a:", "timeout": 0.5},
        base=tmp_path,
    )
    assert s.tls and s.ca_certs == tmp_path / "ca.pem" and s.port == 6379
    assert (s.key_prefix, s.timeout) == ("team-a:", 0.5)
    s = store({"url": "redis://:pw@h/1", "sentinels": ["a:26379", "b:26379"], "service": "m"})
    assert s.sentinels == (("a", 26379), ("b", 26379)) and s.mode == "sentinel"
    assert store({"url": "redis://h", "cluster": True}).mode == "cluster"


@pytest.mark.parametrize(
    ("section", "key", "message"),
    [
        ({}, "store.url", "is required"),
        ({"url": "http://h"}, "store.url", "redis:// or rediss://"),
        ({"url": "redis://:secretpw@h/x"}, "store.url", "whole number"),
        ({"url": "redis://:secretpw@/0"}, "store.url", "names no host"),
        ({"url": "redis://:secretpw@h:99999/0"}, "store.url", "expected redis://"),
        ({"url": "redis://h?timeout=1"}, "store.url", "no \\?query"),
        ({"url": "redis://h", "ca_certs": "/nonexistent.pem"}, "store.ca_certs", "no such"),
        ({"url": "redis://h", "sentinels": ["a:1"]}, "store.service", "is required"),
        ({"url": "redis://h", "sentinels": ["a"], "service": "m"}, "store.sentinels", "host:port"),
        ({"url": "redis://h/2", "cluster": True}, "store.url", "only database 0"),
        ({"url": "redis://h", "lock_ttl": 0.1}, "store.lock_ttl", ">= 1"),
        ({"url": "redis://h", "path": "/x"}, "store.path", "unknown key"),
    ],
)
def test_refused(section: dict, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        store(section)
    assert info.value.key == key, str(info.value)
    assert re.search(message, info.value.message), str(info.value)
    assert "secretpw" not in str(info.value)


@pytest.mark.parametrize(
    ("settings", "warned"),
    [
        ({b"appendonly": b"no", b"appendfsync": b"everysec"}, "appendonly is off"),
        ({b"appendonly": b"yes", b"appendfsync": b"no"}, "appendfsync is no"),
        ({b"appendonly": b"yes", b"appendfsync": b"everysec"}, None),
        ({"appendonly": "yes", "appendfsync": "always"}, None),
    ],
)
def test_durability_warning(settings: dict, warned: str | None) -> None:
    from proxy_addon.store.redis_store import durability_warning

    warning = durability_warning(settings)
    assert (warning is None) if warned is None else (warned in (warning or ""))


def test_check_names_the_store_and_warns_of_a_per_machine_ca(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from proxy_addon.cli import main

    config = tmp_path / "c.yaml"
    config.write_text("store: {backend: redis, url: 'redis://:pw-1234567@cache:6379/1'}\n")
    assert main(["--config", str(config), "check"]) == 0
    out, err = capsys.readouterr()
    assert "store: redis: redis://cache:6379/1" in out
    assert "confdir" in err and "pw-1234567" not in out + err
    config.write_text(config.read_text() + f"confdir: {tmp_path}\n")
    assert main(["--config", str(config), "check"]) == 0
    assert "confdir" not in capsys.readouterr().err


def test_a_redis_store_never_generates_a_key(tmp_path: Path) -> None:
    from proxy_addon.runtime import open_store
    from proxy_addon.store import KeySourceError

    cfg = parse_config({"store": {"backend": "redis", "url": "redis://:pw-1234567@h/0"}},
                       SOURCE, env={}, base_dir=tmp_path)  # fmt: skip
    env = {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    with pytest.raises(KeySourceError, match="AUTHPROXY_KEY to the fleet's key"):
        open_store(cfg.store, env)
    assert not (tmp_path / "cfg").exists()
