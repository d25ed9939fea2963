"""The token store on Redis, shared by a fleet of proxies on many machines.

- Rows: one hash per credential identity, `{prefix}row:{key}` = {sealed, version, updated_at}.
  `sealed` is the Sealer's ciphertext (the fleet shares AUTHPROXY_KEY), so Redis, its dumps and
  its replicas never hold a token, a refresh token or a client secret.
- Writes are compare-and-set in one Lua script (the version is checked and bumped atomically).
- The refresh lease: `{prefix}lock:{key}` = an owner token unique to each acquisition, taken
  with `SET NX PX lock_ttl`, renewed every lock_ttl/3 and released by scripts that touch the
  key only while it still holds the caller's token (a fencing token: a holder that stalled
  past its lease can neither extend nor drop its successor's). The server's clock times the
  lease, so no client's wall clock matters. A holder on the same host whose process is gone
  loses the lease at once (the token names host, pid and start time, as in lease.py); one on
  another host when its lease runs out unrenewed.
- Errors: an unreachable server is StoreUnavailableError (it may come back), refused
  credentials and the rest StoreError; no message carries the password.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import redis
from redis import exceptions as rx

from ..tokens import Token
from .base import Record, StoreError, StoreUnavailableError, VersionConflict
from .keys import ENV_VAR, KeySourceError, load_keys
from .lease import RENEWALS_PER_TTL, Holder, Renewer, holder_alive, host_identity
from .paths import default_key_file
from .redis_config import RedisSettings
from .sealer import Sealer

if TYPE_CHECKING:
    from ..config import StoreConfig

__all__ = ["RedisStore", "open_redis"]

log = logging.getLogger(__name__)

_POLL_FIRST, _POLL_MAX = 0.005, 0.1
# What redis-py raises (a cluster client's own errors are not RedisErrors).
_ERRORS = (rx.RedisError, rx.RedisClusterException)

# KEYS[1] row; ARGV: expected version ("" = no row yet), sealed, updated_at.
_PUT = """
local v = redis.call('HGET', KEYS[1], 'version')
if (v or '') ~= ARGV[1] then return {0, v or ''} end
local n = (tonumber(v) or 0) + 1
redis.call('HSET', KEYS[1], 'sealed', ARGV[2], 'version', n, 'updated_at', ARGV[3])
return {1, n}
"""
# KEYS[1] row; ARGV: expected version, sealed. Key rotation: same version, new ciphertext.
_RESEAL = """
if redis.call('HGET', KEYS[1], 'version') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'sealed', ARGV[2])
return 1
"""
# KEYS[1] lock; ARGV: owner token, ttl ms. Extend only our own lease.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# KEYS[1] lock; ARGV: owner token. Drop only our own lease (or a dead holder's we saw).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def open_redis(cfg: StoreConfig, env: Mapping[str, str], create: bool = True) -> RedisStore:
    """The configured Redis store, checked: reachable, credentials accepted, durability read.

    The key is never generated here, whatever `create` says: every member of a fleet must
    use the same one, so it comes from AUTHPROXY_KEY (or a key file deployed to every member).
    """
    settings: RedisSettings = cfg.settings
    key_file = cfg.key_file or default_key_file(env)
    if not env.get(ENV_VAR, "").strip() and not os.path.lexists(key_file):
        raise KeySourceError(
            f"no token store key for the Redis store {settings.display}: {ENV_VAR} is not set "
            f"and {key_file} does not exist. Every member of a fleet must use the same key, so "
            f"none is generated: set {ENV_VAR} to the fleet's key (or deploy it as "
            "store.key_file)"
        )
    keyring = load_keys(key_file, env, create=False)
    # Read again when a row does not decrypt: `authproxy rotate-key` by another member.
    reread = functools.partial(load_keys, key_file, env, create=False)
    store = RedisStore(settings, Sealer(keyring, reread=reread))
    try:
        store.check()
    except BaseException:
        store.close()
        raise
    return store


class RedisStore:
    def __init__(self, settings: RedisSettings, sealer: Sealer) -> None:
        self.settings = settings
        self._sealer = sealer.at(settings.display)
        self._prefix = settings.key_prefix
        self._ttl_ms = int(settings.lock_ttl * 1000)
        self._host = host_identity()
        self._closed = False
        try:
            self._client: Any = _client(settings)
        except _ERRORS as e:  # a cluster client connects at once
            raise self._error("connecting", e) from None
        self._put = self._client.register_script(_PUT)
        self._reseal = self._client.register_script(_RESEAL)
        self._renew = self._client.register_script(_RENEW)
        self._release = self._client.register_script(_RELEASE)

    # -- TokenStore -----------------------------------------------------------------------

    def get(self, credential: str) -> Record | None:
        with self._errors(f"reading {credential!r}"):
            row = self._client.hmget(self._row(credential), "sealed", "version", "updated_at")
        sealed, version, updated_at = row
        if sealed is None:
            return None
        token = self._sealer.open(credential, sealed, lambda: self._other_rows(credential))
        return Record(credential, token, int(version), float(updated_at))

    def put(self, credential: str, token: Token, expected_version: int | None) -> Record:
        sealed = self._sealer.seal(credential, token)
        updated_at = time.time()
        expected = "" if expected_version is None else str(expected_version)
        with self._errors(f"storing {credential!r}"):
            ok, version = self._put(
                keys=[self._row(credential)], args=[expected, sealed, repr(updated_at)]
            )
        if not ok:
            current = int(version) if version not in (b"", "") else None
            raise VersionConflict(
                f"{credential!r} was updated by another writer (stored version {current}, "
                f"expected {expected_version}); re-read it and retry"
            )
        return Record(credential, token, int(version), updated_at)

    def delete(self, credential: str) -> bool:
        with self._errors(f"deleting {credential!r}"):
            return bool(self._client.delete(self._row(credential)))

    def keys(self) -> list[str]:
        start = len(self._prefix) + len("row:")
        with self._errors("listing credentials"):
            names = [
                _text(k)[start:]
                for k in self._client.scan_iter(match=_glob(self._prefix) + "row:*", count=500)
            ]
        return sorted(names)

    @contextmanager
    def lock(self, credential: str, timeout: float = 60.0) -> Iterator[None]:
        holder = Holder.me(self._host, self.settings.lock_ttl)
        owner = json.dumps({"id": uuid.uuid4().hex, "holder": holder.to_json()})
        self._acquire(credential, owner, timeout)
        renewer = Renewer(
            credential,
            self.settings.lock_ttl / RENEWALS_PER_TTL,
            lambda: self._extend(credential, owner),
            lambda: self._closed,
        )
        try:
            renewer.start()
            yield
        finally:
            renewer.stop()
            self._drop(credential, owner)

    def reseal(self, sealer: Sealer) -> int:
        self._sealer = sealer = sealer.at(self.settings.display)
        done = 0
        for name in self.keys():
            key = self._row(name)
            with self._errors(f"re-encrypting {name!r}"):
                row = self._client.hmget(key, "sealed", "version")
                if row[0] is None:
                    continue  # logged out meanwhile
                # Compare-and-set on the version: a refresh that wrote meanwhile is not
                # overwritten with its old token; its new row is re-read and resealed once.
                if not self._reseal(keys=[key], args=[row[1], sealer.reseal(name, row[0])]):
                    row = self._client.hmget(key, "sealed", "version")
                    if row[0] is None or not self._reseal(
                        keys=[key], args=[row[1], sealer.reseal(name, row[0])]
                    ):
                        continue
            done += 1
        log.info("re-encrypted %d row(s) of %s with the newest key", done, self.settings.display)
        return done

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(Exception):
            self._client.close()

    def __repr__(self) -> str:
        return f"RedisStore({self.settings.display!r})"

    def ping(self) -> None:
        """One round trip (for /readyz); raises StoreUnavailableError or StoreError."""
        with self._errors("pinging"):
            self._client.ping()

    # -- start-up checks --------------------------------------------------------------------

    def check(self) -> None:
        """Reachable and accepting our credentials (raises otherwise); warn when a Redis
        restart could lose acknowledged writes (a rotated refresh token exists nowhere else)."""
        with self._errors("connecting"):
            self._client.ping()
        try:
            found = self._client.config_get("append*")
        except rx.ResponseError:  # CONFIG is often renamed or forbidden on managed Redis
            log.info(
                "could not read the persistence settings of %s (CONFIG GET is not allowed): "
                "make sure it runs with appendonly yes and appendfsync always or everysec",
                self.settings.display,
            )
            return
        except _ERRORS as e:
            raise self._error("reading its persistence settings", e) from None
        if warning := durability_warning(found):
            log.warning("token store %s: %s", self.settings.display, warning)

    # -- locks --------------------------------------------------------------------------------

    def _acquire(self, credential: str, owner: str, timeout: float) -> None:
        deadline = time.monotonic() + max(timeout, 0.0)
        delay = _POLL_FIRST
        key = self._lock(credential)
        while True:
            with self._errors(f"taking the refresh lock of {credential!r}"):
                if self._client.set(key, owner, nx=True, px=self._ttl_ms):
                    return
                current = self._client.get(key)
            if current is not None and (why := self._dead(_text(current))):
                with self._errors(f"taking over the refresh lock of {credential!r}"):
                    if self._release(keys=[key], args=[current]):
                        log.warning("taking over the refresh lock of %r: %s", credential, why)
                        continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"timed out after {timeout:g}s waiting for the refresh lock of "
                    f"{credential!r} in {self.settings.display}: another proxy is refreshing it "
                    "(a lock left by a killed proxy is taken over at once on the same host, "
                    "after its lease elsewhere)"
                )
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, _POLL_MAX)

    def _dead(self, owner: str) -> str | None:
        """Why the lease's holder is gone, when it ran on this host; else None."""
        try:
            holder = Holder.from_json(json.loads(owner)["holder"])
        except (ValueError, KeyError, TypeError):
            return None
        if holder is None or not self._host or holder.host != self._host:
            return None  # elsewhere: its lease runs out on the server's clock
        if holder_alive(holder):
            return None
        return f"its holder ({holder.describe(self._host)}) is gone"

    def _extend(self, credential: str, owner: str) -> bool:
        with self._errors(f"renewing the refresh lock of {credential!r}"):
            return bool(self._renew(keys=[self._lock(credential)], args=[owner, self._ttl_ms]))

    def _drop(self, credential: str, owner: str) -> None:
        try:
            with self._errors(f"releasing the refresh lock of {credential!r}"):
                released = self._release(keys=[self._lock(credential)], args=[owner])
        except StoreError as e:
            # Not raised: it would hide the caller's own exception, and the lease expires.
            log.warning("could not release the refresh lock of %r (%s)", credential, e)
            return
        if not released:
            log.warning(
                "the refresh lock of %r was taken over while held (this holder stalled for "
                "longer than lock_ttl=%gs without renewing it); another holder may have "
                "refreshed meanwhile",
                credential,
                self.settings.lock_ttl,
            )

    # -- helpers ------------------------------------------------------------------------------

    def _row(self, credential: str) -> str:
        return f"{self._prefix}row:{credential}"

    def _lock(self, credential: str) -> str:
        return f"{self._prefix}lock:{credential}"

    def _other_rows(self, credential: str) -> list[bytes]:
        out = []
        with self._errors("checking the key against the other rows"):
            for name in self.keys():
                if name != credential and (v := self._client.hget(self._row(name), "sealed")):
                    out.append(v)
        return out

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except _ERRORS as e:
            raise self._error(doing, e) from None

    def _error(self, doing: str, e: Exception) -> StoreError:
        # `from None` at the raise sites: a chained redis-py error would print the connection
        # arguments in a traceback. Its own message names host and port, never the password.
        where = self.settings.display
        if isinstance(e, rx.AuthenticationError | rx.AuthorizationError) or (
            isinstance(e, rx.ResponseError) and str(e).startswith(("NOAUTH", "WRONGPASS"))
        ):
            return StoreError(
                f"the Redis token store {where} refused the credentials while {doing}: check "
                "the user and password in store.url (or store.password)"
            )
        if type(e).__name__ == "MasterNotFoundError":  # redis.sentinel's; its text is long
            return StoreUnavailableError(
                f"the Redis token store {where} is unreachable while {doing}: no sentinel "
                f"answered with a primary for service {self.settings.service!r}"
            )
        if isinstance(e, rx.ConnectionError | rx.TimeoutError):
            return StoreUnavailableError(
                f"the Redis token store {where} is unreachable while {doing} ({_reason(e)}); "
                "check that it runs and that this machine may connect to it"
            )
        return StoreError(f"the Redis token store {where} failed while {doing}: {_reason(e)}")


def durability_warning(found: Mapping[Any, Any]) -> str | None:
    """What a Redis restart (or a crash of its host) could lose under these settings."""
    conf = {_text(k): _text(v) for k, v in found.items()}
    if conf.get("appendonly", "no") != "yes":
        return (
            "appendonly is off: a Redis restart loses every write since its last snapshot, "
            "and with it any refresh token rotated since (those logins must sign in again). "
            "Run Redis with appendonly yes and appendfsync always (or everysec)"
        )
    fsync = conf.get("appendfsync", "everysec")
    if fsync == "no":
        return (
            "appendfsync is no: a crash of the Redis host can lose about 30 s of acknowledged "
            "writes (rotated refresh tokens among them). Use appendfsync always (or everysec)"
        )
    if fsync == "everysec":
        log.info(
            "Redis appendfsync everysec: a power loss of the Redis host can lose up to 1 s "
            "of writes; appendfsync always loses none"
        )
    return None


def _client(s: RedisSettings) -> Any:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    common: dict[str, Any] = {
        "username": s.username,
        "password": s.password,
        "socket_connect_timeout": s.connect_timeout,
        "socket_timeout": s.timeout,
        # One immediate retry (a pooled connection the server closed on restart); not
        # redis-py's default backoff of seconds: a request waiting on the store during an
        # outage is to fail fast, within a second or two.
        "retry": Retry(NoBackoff(), 1),
    }
    tls: dict[str, Any] = {}
    if s.tls:
        tls = {"ssl": True, "ssl_cert_reqs": "required", "ssl_check_hostname": True}
        if s.ca_certs is not None:
            tls["ssl_ca_data"] = _ca_data(s)
    if s.sentinels:
        from redis.sentinel import Sentinel

        sentinel = Sentinel(
            list(s.sentinels), sentinel_kwargs={**common, **tls}, **common, **tls
        )
        return sentinel.master_for(s.service, db=s.db)
    if s.cluster:
        from redis.cluster import RedisCluster

        return RedisCluster(host=s.host, port=s.port, **common, **tls)
    return redis.Redis(host=s.host, port=s.port, db=s.db, **common, **tls)


def _ca_data(s: RedisSettings) -> str:
    """The system CAs (certifi, as for the IdP) plus the configured ones."""
    import certifi

    assert s.ca_certs is not None
    try:
        with open(certifi.where()) as f, open(s.ca_certs) as g:
            return f.read() + "\n" + g.read()
    except OSError as e:
        raise StoreError(f"cannot read the Redis CA file {s.ca_certs}: {e.strerror}") from None


def _reason(e: Exception) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:200]


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _glob(prefix: str) -> str:
    """`prefix` with Redis glob characters escaped."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in prefix)

