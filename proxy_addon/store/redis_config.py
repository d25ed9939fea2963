"""The `store: {backend: redis, ...}` keys, read into `RedisSettings` (pure: no client loaded).

    store:
      backend: redis
      url: rediss://authproxy:${REDIS_PASSWORD}@cache.internal:6380/2   # or redis://
      ca_certs: /etc/authproxy/redis-ca.pem   # rediss: trusted beside the system CAs
      key_prefix: "authproxy:"                # default
      connect_timeout: 2                      # seconds
      timeout: 2                              # seconds, each command
      lock_ttl: 15                            # refresh lease, renewed every third of it
      password: ${REDIS_PASSWORD}             # instead of (or overriding) the URL's
      # Sentinel: the URL names user, password, db and TLS; the sentinels find the primary.
      sentinels: [sentinel-1:26379, sentinel-2:26379]
      service: mymaster
      # Cluster (no db number there):
      cluster: true
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote, urlsplit

from .registry import Parsed

if TYPE_CHECKING:
    from ..config import StoreConfig
    from .registry import OptionReader

__all__ = ["RedisSettings", "describe", "parse", "parse_redis"]

SCHEMES = ("redis", "rediss")


@dataclass(frozen=True, slots=True)
class RedisSettings:
    host: str
    port: int
    db: int
    tls: bool
    username: str | None
    password: str | None = field(repr=False)
    ca_certs: Path | None = None
    key_prefix: str = "authproxy:"
    connect_timeout: float = 2.0
    timeout: float = 2.0
    lock_ttl: float = 15.0
    sentinels: tuple[tuple[str, int], ...] = ()
    service: str | None = None
    cluster: bool = False

    @property
    def mode(self) -> str:
        return "sentinel" if self.sentinels else "cluster" if self.cluster else "standalone"

    @property
    def display(self) -> str:
        """The server as people may read it: never the password."""
        user = f"{quote(self.username)}@" if self.username else ""
        scheme = "rediss" if self.tls else "redis"
        where = f"{scheme}://{user}{_hostport(self.host, self.port)}/{self.db}"
        if self.sentinels:
            return f"{where} (sentinel service {self.service!r})"
        return f"{where} (cluster)" if self.cluster else where


def parse(s: OptionReader, resolve: Callable[[str], Path]) -> Parsed:
    """The registry's parser (store/registry.py)."""
    return Parsed(settings=parse_redis(s, resolve))


def describe(cfg: StoreConfig, env: Mapping[str, str]) -> str:
    return str(cfg.settings.display)


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_redis(s: OptionReader, resolve: Callable[[str], Path]) -> RedisSettings:
    url = s.str("url", required=True) or ""
    try:
        parts = urlsplit(url)
        port = parts.port or 6379
    except ValueError:
        raise s.error("url", "expected redis://[user:password@]host[:port][/db]") from None
    if parts.scheme not in SCHEMES:
        raise s.error(
            "url", f"expected a redis:// or rediss:// (TLS) URL, got scheme {parts.scheme!r}"
        )
    if not parts.hostname:
        raise s.error("url", "names no host: expected redis://[user:password@]host[:port][/db]")
    db_text = parts.path.strip("/") or "0"
    if not db_text.isdigit():
        raise s.error("url", f"the database number must be a whole number, got {db_text!r}")
    if parts.query or parts.fragment:
        raise s.error("url", "takes no ?query or #fragment: set timeouts as keys of store:")
    password = s.str("password") or (unquote(parts.password) if parts.password else None)
    ca = s.str("ca_certs")
    ca_certs = resolve(ca) if ca else None
    if ca_certs is not None and not ca_certs.is_file():
        raise s.error("ca_certs", f"no such file: {ca_certs}")
    if ca_certs is not None and parts.scheme != "rediss":
        raise s.error("ca_certs", "only applies to rediss:// (TLS) URLs")
    prefix = s.str("key_prefix", "authproxy:") or ""
    sentinels = tuple(_sentinel(s, w) for w in s.words("sentinels"))
    service = s.str("service")
    if sentinels and not service:
        raise s.error("service", "is required with sentinels: the name of the monitored primary")
    if service and not sentinels:
        raise s.error("sentinels", "is required with service: host:port of each sentinel")
    cluster = s.bool("cluster", False)
    if cluster and sentinels:
        raise s.error("cluster", "cannot be combined with sentinels")
    if cluster and int(db_text) != 0:
        raise s.error("url", "a Redis Cluster has only database 0")
    return RedisSettings(
        host=parts.hostname,
        port=port,
        db=int(db_text),
        tls=parts.scheme == "rediss",
        username=unquote(parts.username) if parts.username else None,
        password=password,
        ca_certs=ca_certs,
        key_prefix=prefix,
        connect_timeout=s.number("connect_timeout", 2.0, minimum=0.05),
        timeout=s.number("timeout", 2.0, minimum=0.05),
        lock_ttl=s.number("lock_ttl", 15.0, minimum=1.0),
        sentinels=sentinels,
        service=service,
        cluster=cluster,
    )


def _sentinel(s: OptionReader, value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise s.error("sentinels", f"expected host:port, got {value!r}")
    return host.strip("[]"), int(port)
