"""Health for orchestrators: `/healthz` (the process serves) and `/readyz` (config loaded, token
store reachable), as JSON with 200 or 503; and the store's latency and errors for `/metrics`.

Both paths are answered in absolute form through the proxy (`http://authproxy.local/healthz`),
like the rest of the status page, and also in origin form sent straight to the listen port
(`GET /healthz`, whatever the Host header), which is how orchestrators probe. The latter is safe
because the answers hold nothing but fixed words and numbers (no credential, host, path or error
text), change nothing, and only these two paths are answered that way; every other origin-form
request is handled as before.

The store check runs in a worker thread with a deadline: a store that hangs makes `/readyz`
answer 503 in bounded time, never blocks the event loop, and concurrent probes share one check.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from mitmproxy import http

from .compat import absolute_form, sent_to_listen_port
from .store.base import StoreError, StoreUnavailableError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from .store.base import Record, TokenStore
    from .store.sealer import Sealer
    from .tokens import Token

__all__ = [
    "HEALTH_PATHS",
    "HealthProbe",
    "StoreCheck",
    "TimedStore",
    "health_path",
    "health_reply",
    "is_direct_probe",
    "ping_store",
]

HEALTH_PATHS = ("/healthz", "/readyz")
READY_TIMEOUT = 2.0  # seconds a /readyz waits for the store before answering 503
_NO_STORE = {"Cache-Control": "no-store", "Content-Type": "application/json"}


class StoreObserver(Protocol):
    """Where TimedStore reports (Metrics.observe_store)."""

    def observe_store(self, op: str, seconds: float, error: str | None) -> None: ...


def health_path(path: str) -> str | None:
    """`/healthz` or `/readyz` when `path` (query ignored) is one of them."""
    route = path.split("?", 1)[0]
    return route if route in HEALTH_PATHS else None


def is_direct_probe(flow: http.HTTPFlow) -> bool:
    """An orchestrator's probe: `GET|HEAD /healthz|/readyz` in origin form on a plain-HTTP
    connection made to the listen port itself (not a request through a CONNECT tunnel, whose
    `/healthz` belongs to the server at the tunnel's end)."""
    req = flow.request
    return (
        req.method in ("GET", "HEAD")
        and req.scheme == "http"
        and health_path(req.path) is not None
        and not absolute_form(req)
        and sent_to_listen_port(flow)
    )


@dataclass(frozen=True, slots=True)
class StoreCheck:
    ok: bool
    seconds: float
    error: str | None = None  # a fixed reason code, never the store's message (it names hosts)


def ping_store(store: TokenStore) -> None:
    """The cheapest round trip the store offers: its `ping()` (a network store), else listing
    its keys (a local file). Raises StoreError when the store cannot be used."""
    ping = getattr(store, "ping", None)
    if callable(ping):
        ping()
    else:
        store.keys()


def readiness(*, loaded: bool, store: StoreCheck | None) -> tuple[int, dict[str, Any]]:
    """The `/readyz` answer, purely: 200 when the config is loaded and the store answered."""
    checks: dict[str, Any] = {"config": "ok" if loaded else "not_loaded"}
    if store is not None:
        checks["store"] = {
            "status": "ok" if store.ok else store.error,
            "seconds": round(store.seconds, 4),
        }
    ready = loaded and store is not None and store.ok
    return (200 if ready else 503), {"status": "ready" if ready else "not_ready", "checks": checks}


def health_reply(code: int, body: dict[str, Any], *, head: bool = False) -> http.Response:
    response = http.Response.make(code, json.dumps(body) + "\n", _NO_STORE)
    if head:
        response.content = b""
    return response


class HealthProbe:
    """Answers `/healthz` and `/readyz`; one store check at a time, shared by its callers."""

    def __init__(self, timeout: float = READY_TIMEOUT) -> None:
        self.timeout = timeout
        self._inflight: asyncio.Future[StoreCheck] | None = None
        # Its own thread, not asyncio's default pool: a store that hangs holds this one thread,
        # never the workers the token caches use. While it hangs, probes answer at once.
        self._pool: ThreadPoolExecutor | None = None
        self._pinging = threading.Event()

    async def answer(
        self, path: str, store: TokenStore | None, observer: StoreObserver | None = None,
        *, head: bool = False,
    ) -> http.Response:  # fmt: skip
        if health_path(path) == "/healthz":
            return health_reply(200, {"status": "ok"}, head=head)
        check = await self.check(store, observer) if store is not None else None
        code, body = readiness(loaded=store is not None, store=check)
        return health_reply(code, body, head=head)

    async def check(self, store: TokenStore, observer: StoreObserver | None = None) -> StoreCheck:
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.ensure_future(self._check(store, observer))
        # Shielded: a probe that gives up (its client left) does not cancel the others' check.
        return await asyncio.shield(self._inflight)

    def _ping(self, store: TokenStore) -> None:
        try:
            ping_store(store)
        finally:
            self._pinging.clear()

    async def _check(self, store: TokenStore, observer: StoreObserver | None) -> StoreCheck:
        start = time.monotonic()
        error: str | None = None
        if self._pinging.is_set():  # the last ping has not returned yet
            return StoreCheck(False, 0.0, "store_timeout")
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="authproxy-readyz")
        self._pinging.set()
        try:
            # The thread may outlive the deadline (a socket timeout ends it); the probe does not.
            ping = asyncio.get_running_loop().run_in_executor(self._pool, self._ping, store)
            await asyncio.wait_for(ping, self.timeout)
        except TimeoutError:
            error = "store_timeout"
        except StoreUnavailableError:
            error = "store_unavailable"
        except StoreError:
            error = "store_error"
        except Exception:  # a bug in a backend: not ready, and the probe still answers
            error = "store_error"
        seconds = time.monotonic() - start
        if observer is not None:
            # Same kinds as TimedStore's (unavailable, error), plus timeout.
            observer.observe_store("ping", seconds, error.removeprefix("store_") if error else None)
        return StoreCheck(error is None, seconds, error)


class TimedStore:
    """A TokenStore that reports each operation's duration, and its failures, to `observer`.

    A VersionConflict (another writer won a compare-and-set) and a lock wait that times out
    (another member is refreshing) are the store working as meant: timed, not errors."""

    def __init__(self, store: TokenStore, observer: StoreObserver) -> None:
        self.wrapped, self.observer = store, observer

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)

    @contextmanager
    def _timed(self, op: str) -> Iterator[None]:
        start = time.monotonic()
        error: str | None = None
        try:
            yield
        except StoreUnavailableError:
            error = "unavailable"
            raise
        except StoreError as e:
            if type(e).__name__ != "VersionConflict":
                error = "error"
            raise
        finally:
            self.observer.observe_store(op, time.monotonic() - start, error)

    def get(self, credential: str) -> Record | None:
        with self._timed("get"):
            return self.wrapped.get(credential)

    def put(self, credential: str, token: Token, expected_version: int | None) -> Record:
        with self._timed("put"):
            return self.wrapped.put(credential, token, expected_version)

    def delete(self, credential: str) -> bool:
        with self._timed("delete"):
            return self.wrapped.delete(credential)

    def keys(self) -> list[str]:
        with self._timed("keys"):
            return self.wrapped.keys()

    def reseal(self, sealer: Sealer) -> int:
        return self.wrapped.reseal(sealer)

    @contextmanager
    def lock(self, credential: str, timeout: float = 60.0) -> Iterator[None]:
        """Times taking the lock (not holding it)."""
        held: AbstractContextManager[None] = self.wrapped.lock(credential, timeout)
        with self._timed("lock"):
            held.__enter__()
        try:
            yield
        except BaseException as e:
            if not held.__exit__(type(e), e, e.__traceback__):
                raise
        else:
            held.__exit__(None, None, None)

    def close(self) -> None:
        self.wrapped.close()
