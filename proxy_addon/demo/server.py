"""The threaded HTTP(S) plumbing the demo servers share: they only implement
`handle(Request) -> Response`."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import socketserver
import ssl
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO, Self
from urllib.parse import urlsplit

from proxy_addon.demo.certs import Pki

__all__ = ["BackgroundServer", "HangUp", "Request", "Response"]

logger = logging.getLogger(__name__)

_MAX_BODY = 16 * 1024 * 1024
_HANDSHAKE_TIMEOUT = 10.0


class HangUp(Exception):
    """Raised by `handle` to close the connection without answering (a server going away)."""


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str  # as sent: path and query
    headers: Message
    body: bytes
    peer_cert: bytes | None = None  # the client's TLS certificate (DER), when it sent one


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    # When set, the body is these chunks instead, written as they come, without a length and
    # ended by closing the connection: lets a test serve a huge or a drip-fed answer.
    chunks: Iterable[bytes] | None = None

    @classmethod
    def of_json(cls, status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
        body = json.dumps(payload).encode()
        return cls(status, body, {"Content-Type": "application/json", **(headers or {})})


def _read_exactly(rfile: BinaryIO, size: int) -> bytes:
    data = rfile.read(size)
    if len(data) != size:
        raise ValueError("connection closed in the middle of the body")
    return data


def _read_body(rfile: BinaryIO, headers: Message) -> bytes:
    encoding = headers.get("Transfer-Encoding")
    if encoding is None:
        length = int(headers.get("Content-Length") or 0)
        if not 0 <= length <= _MAX_BODY:
            raise ValueError("bad Content-Length")
        return _read_exactly(rfile, length)
    if encoding.strip().lower() != "chunked":
        raise ValueError("unsupported Transfer-Encoding")
    chunks: list[bytes] = []
    total = 0
    while True:
        size = int(rfile.readline(1024).split(b";")[0], 16)
        if size == 0:
            break
        total += size
        if size < 0 or total > _MAX_BODY:
            raise ValueError("bad chunk size")
        chunks.append(_read_exactly(rfile, size))
        if rfile.readline(1024).strip():
            raise ValueError("chunk not followed by CRLF")
    while rfile.readline(1024).strip():  # trailer fields, which the demo ignores
        pass
    return b"".join(chunks)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so a proxy can reuse its upstream connections
    timeout = 30  # an idle keep-alive connection must not pin a thread forever
    # Headers and body go out in separate writes; with Nagle on, each answer waits ~40 ms.
    disable_nagle_algorithm = True
    server: _Server

    def __getattr__(self, name: str) -> Any:
        # BaseHTTPRequestHandler dispatches on do_<METHOD>; the demo servers take any method.
        if name.startswith("do_"):
            return self._dispatch
        raise AttributeError(name)

    def _dispatch(self) -> None:
        try:
            body = _read_body(self.rfile, self.headers)
        except ValueError as error:
            self.close_connection = True
            self.send_error(400, str(error))
            return
        try:
            peer = (
                self.connection.getpeercert(binary_form=True)
                if isinstance(self.connection, ssl.SSLSocket)
                else None
            )
            request = Request(self.command, self.path, self.headers, body, peer or None)
            response = self.server.app.handle(request)
        except HangUp:
            self.close_connection = True
            return
        except Exception:
            logger.exception("demo server failed on %s %s", self.command, self._bare_path())
            response = Response(500, b"internal error\n", {"Content-Type": "text/plain"})
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        if response.chunks is not None:
            self._stream(response.chunks)
            return
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    def _stream(self, chunks: Iterable[bytes]) -> None:
        self.close_connection = True
        self.send_header("Connection", "close")
        self.end_headers()
        try:
            for chunk in chunks:
                self.wfile.write(chunk)
                self.wfile.flush()
        except OSError:
            pass  # the client gave up on the answer, as it should

    def _bare_path(self) -> str:
        # A query string may carry a credential (RFC 6750 §2.3), so logs get the path only.
        return urlsplit(self.path).path

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        logger.debug("%s %s -> %s", self.command, self._bare_path(), code)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s: " + format, self.address_string(), *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # a restart rebinds the same port despite TIME_WAIT leftovers

    def __init__(
        self, app: BackgroundServer, address: tuple[str, int], tls: ssl.SSLContext | None
    ) -> None:
        self.app = app
        self.tls = tls
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._closing = False
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which can stall without DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def finish_request(self, request: Any, client_address: Any) -> None:
        # Runs on the connection's own thread, so a slow TLS handshake never blocks accept().
        connection: socket.socket = request
        if self.tls is not None:
            request.settimeout(_HANDSHAKE_TIMEOUT)
            try:
                connection = self.tls.wrap_socket(request, server_side=True)
            except OSError as error:
                logger.debug("TLS handshake with %s failed: %s", client_address, error)
                return
        with self._lock:
            if self._closing:
                connection.close()
                return
            self._connections.add(connection)
        try:
            super().finish_request(connection, client_address)
        finally:
            with self._lock:
                self._connections.discard(connection)
            connection.close()

    def drop_connections(self) -> None:
        """Cut open keep-alive connections too: a stopped server must look really gone."""
        with self._lock:
            self._closing = True
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                # The plain-socket shutdown: SSLSocket.shutdown would race the handler's read.
                socket.socket.shutdown(connection, socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up mid-request are routine here (stop() cuts connections on purpose).
        logger.debug("connection from %s ended with an error", client_address, exc_info=True)


class BackgroundServer:
    """Serves `handle` over HTTP(S) from daemon threads; stoppable and restartable on one port."""

    def __init__(self, pki: Pki | None, host: str, port: int) -> None:
        self._tls = pki.server_context() if pki is not None else None
        self._host = host
        self._port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._lifecycle = threading.Lock()

    def handle(self, request: Request) -> Response:
        raise NotImplementedError

    def trust_client_certs(self, ca_file: Path) -> None:
        """Ask TLS clients for a certificate (RFC 8705) and accept those `ca_file` vouches for
        (a self-signed certificate vouches for itself). Clients without one still connect."""
        if self._tls is None:
            raise ValueError("client certificates need a TLS server")
        self._tls.verify_mode = ssl.CERT_OPTIONAL
        self._tls.load_verify_locations(ca_file)

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{'https' if self._tls else 'http'}://{host}:{self._port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> Self:
        with self._lifecycle:
            if self._server is None:
                server = _Server(self, (self._host, self._port), self._tls)
                self._port = server.server_address[1]  # port 0 picks once; restarts keep it
                self._thread = threading.Thread(
                    target=server.serve_forever,
                    kwargs={"poll_interval": 0.05},
                    name=f"{type(self).__name__}:{self._port}",
                    daemon=True,
                )
                self._thread.start()
                self._server = server
        return self

    def stop(self) -> None:
        with self._lifecycle:
            server, self._server = self._server, None
            if server is None:
                return
            server.shutdown()
            server.server_close()  # from here on, connecting is refused
            server.drop_connections()
            if self._thread is not None:
                self._thread.join()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
