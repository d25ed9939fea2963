"""One HTTP exchange with an identity provider, bounded in time and size. Blocking I/O.

requests' timeouts are per socket operation: an IdP that drips one byte a second never trips
them, and a huge answer is read whole. Here every exchange has a TOTAL deadline (a watchdog
shuts the socket down when it passes, whatever phase the exchange is in) and the answer is
streamed and abandoned past `max_bytes`. Failures are `GrantError`s that say whether the
request may have reached the IdP (`outcome_unknown`): a connect error or connect timeout
means it did not; a timeout or a dropped connection after sending means it may have.

Never through a proxy (our own `HTTPS_PROXY` may point back at us), never following a
redirect (it would re-post the secrets elsewhere), always verifying the certificate.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from .errors import GrantError
from .sanitize import clean

__all__ = ["MAX_ANSWER_BYTES", "Answer", "classify", "exchange"]

MAX_ANSWER_BYTES = 1 << 20  # 1 MiB: a token answer is a few kB; metadata documents tens of kB
_CHUNK = 1024  # small reads: a compressed answer cannot inflate far past the cap in one step


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: Mapping[str, str] = field(repr=False)  # case-insensitive (requests' dict)
    body: bytes = field(repr=False)
    elapsed: float = 0.0


class _Watch:
    """The sockets of one exchange, whether the request went out, and the deadline.

    It keeps a duplicate of each socket: TLS wrapping detaches the original object, but a
    shutdown through any descriptor of a socket ends the connection for all of them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.sent = False
        self.fired = False

    def add(self, sock: socket.socket) -> None:
        dup = sock.dup()
        with self._lock:
            self._sockets.append(dup)
            if self.fired:
                _shutdown(dup)

    def fire(self) -> None:
        with self._lock:
            self.fired = True
            for sock in self._sockets:
                _shutdown(sock)

    def close(self) -> None:
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()


def _shutdown(sock: socket.socket) -> None:
    # shutdown, not close: it wakes a thread blocked in recv() on this socket.
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _watched_session(watch: _Watch) -> requests.Session:
    """A session whose connections report their sockets and their sending to `watch`."""

    class _Mixin:
        def _new_conn(self) -> socket.socket:
            sock: socket.socket = super()._new_conn()  # type: ignore[misc]
            watch.add(sock)
            return sock

        def request(self, *args: Any, **kwargs: Any) -> None:
            if getattr(self, "sock", True) is None:
                # Plain http (a loopback IdP, allow_http) connects here, not before: a refused
                # connection is "unreachable", not an answer lost after sending.
                self.connect()  # type: ignore[attr-defined]
            watch.sent = True  # from here on, the IdP may act on the request
            super().request(*args, **kwargs)  # type: ignore[misc]

    class _Conn(_Mixin, HTTPConnection):  # type: ignore[misc]
        pass

    class _TlsConn(_Mixin, HTTPSConnection):  # type: ignore[misc]
        pass

    class _Pool(HTTPConnectionPool):
        ConnectionCls = _Conn

    class _TlsPool(HTTPSConnectionPool):
        ConnectionCls = _TlsConn

    adapter = HTTPAdapter(max_retries=0)
    adapter.poolmanager.pool_classes_by_scheme = {"http": _Pool, "https": _TlsPool}
    session = requests.Session()
    session.trust_env = False  # never via HTTP(S)_PROXY: that may be us
    session.max_redirects = 0
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def exchange(
    method: str,
    url: str,
    *,
    what: str,
    timeout: float,
    verify: str | bool,
    data: Mapping[str, str] | bytes | None = None,  # a form, or a body as it is
    auth: tuple[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    cert: tuple[str, str] | None = None,
    max_bytes: int = MAX_ANSWER_BYTES,
) -> Answer:
    """Send one request and read the whole answer within `timeout` seconds in total.

    `headers` are added to `Accept: application/json` (a DPoP proof); `cert` is a client
    certificate and key file for mutual TLS (RFC 8705)."""
    watch = _Watch()
    timer = threading.Timer(timeout, watch.fire)
    timer.daemon = True
    started = time.monotonic()
    session = _watched_session(watch)
    timer.start()
    try:
        try:
            response = session.request(
                method,
                url,
                data=data,
                auth=auth,
                headers={"Accept": "application/json", **(headers or {})},
                timeout=(timeout, timeout),
                verify=verify,
                cert=cert,
                allow_redirects=False,
                stream=True,
            )
            with response:
                body = _read_capped(response, what, max_bytes)
                status, headers = response.status_code, response.headers
        except GrantError:
            raise
        except (requests.RequestException, OSError) as e:
            raise classify(
                e, what=what, timeout=timeout, sent=watch.sent, fired=watch.fired
            ) from None
        if watch.fired:  # an answer cut at the deadline can look complete (no Content-Length)
            raise _timed_out(watch.sent, what, timeout)
    finally:
        timer.cancel()
        session.close()
        watch.close()
    return Answer(status, headers, body, time.monotonic() - started)


def _read_capped(response: requests.Response, what: str, max_bytes: int) -> bytes:
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(what, max_bytes)
    chunks: list[bytes] = []
    total = 0
    for chunk in response.iter_content(_CHUNK):
        total += len(chunk)
        if total > max_bytes:
            raise _too_large(what, max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(what: str, max_bytes: int) -> GrantError:
    return GrantError(
        "idp_answer_too_large",
        f"{what}: the IdP's answer is larger than {max_bytes // 1024} KiB; not read",
        terminal=False,
        outcome_unknown=True,
    )


def _timed_out(sent: bool, what: str, timeout: float) -> GrantError:
    return GrantError(
        "idp_timeout",
        f"{what}: the IdP did not answer within {timeout:g}s",
        terminal=False,
        outcome_unknown=sent,
    )


def classify(
    e: BaseException, *, what: str, timeout: float, sent: bool, fired: bool = False
) -> GrantError:
    """What a failed exchange means, as a GrantError: pure, the one place that reads
    requests' and the socket's exceptions. `sent`: the request went out (the IdP may have
    acted on it); `fired`: our total deadline cut the exchange."""
    if isinstance(e, OSError) and not isinstance(e, requests.RequestException):
        e = requests.ConnectionError(e)  # a socket error urllib3 let through
    if fired or isinstance(e, requests.Timeout):
        # ConnectTimeout: the request never left; ReadTimeout: it may have been acted on.
        return _timed_out(sent and not isinstance(e, requests.ConnectTimeout), what, timeout)
    if isinstance(e, requests.exceptions.SSLError):
        return GrantError(
            "idp_tls_error",
            f"{what}: TLS to the IdP failed ({_short(e)}); if it uses a private CA, list it "
            "under ca_certs",
            terminal=False,
        )
    if isinstance(e, requests.ConnectionError | requests.exceptions.ChunkedEncodingError):
        if sent:
            return GrantError(
                "idp_connection_lost",
                f"{what}: the connection to the IdP broke before its answer was complete",
                terminal=False,
                outcome_unknown=True,
            )
        return GrantError(
            "idp_unreachable", f"{what}: cannot reach the IdP ({_short(e)})", terminal=False
        )
    return GrantError(
        "idp_unavailable",
        f"{what}: {type(e).__name__} talking to the IdP",
        terminal=False,
        outcome_unknown=sent,
    )


def _short(e: BaseException) -> str:
    """An exception's gist ("Connection refused", "Name or service not known") without the
    URL-laden chains requests and urllib3 produce, which a length limit cut mid-word."""
    inner: BaseException = e
    seen = {id(inner)}
    while True:
        reason = getattr(inner, "reason", None)
        if inner.args and isinstance(inner.args[0], BaseException):
            nxt: BaseException | None = inner.args[0]
        elif isinstance(reason, BaseException):
            nxt = reason
        else:
            nxt = inner.__cause__ or inner.__context__
        if nxt is None or id(nxt) in seen:
            break
        seen.add(id(nxt))
        inner = nxt
    if isinstance(inner, OSError) and inner.strerror:
        text = inner.strerror
    else:
        text = str(inner.args[0] if inner.args else inner)
        # urllib3 puts its connection's repr first: "_TlsConn(host='h', port=9): Failed ..."
        text = re.sub(r"^<?[\w.]+\(host='[^']*', port=\d+\)>?: ", "", text)
    return clean(text, limit=160)
