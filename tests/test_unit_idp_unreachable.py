"""The IdP-unreachable message keeps its cause; a loopback http IdP is reachable."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from proxy_addon.demo.run import free_port
from proxy_addon.errors import GrantError
from proxy_addon.idp_http import exchange


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_connection_refused_is_said_in_full(scheme: str) -> None:
    url = f"{scheme}://127.0.0.1:{free_port()}/token"
    with pytest.raises(GrantError) as info:
        exchange("POST", url, what="token request", timeout=5, verify=True, data={"a": "b"})
    e = info.value
    assert str(e) == "token request: cannot reach the IdP (Connection refused)"
    assert e.code == "idp_unreachable" and not e.outcome_unknown  # nothing was sent: retry


@pytest.fixture
def http_idp() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            body = json.dumps({"access_token": "a" * 20, "token_type": "Bearer",
                               "expires_in": 60}).encode()  # fmt: skip
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/token"
    server.shutdown()
    server.server_close()


def test_a_loopback_http_idp_answers(http_idp: str) -> None:
    answer = exchange("POST", http_idp, what="token request", timeout=5, verify=True,
                      data={"grant_type": "client_credentials"})  # fmt: skip
    assert answer.status == 200
