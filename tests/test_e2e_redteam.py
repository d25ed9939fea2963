"""Independent red-team probes against a real `authproxy run` process.

Each probe is an attack on a promise of the README's "Security model": a token must reach
only the host, port and path prefix its route names, never be echoed back, never land in a
flow file, and the proxy must not serve another uid or a request sent straight to its port.
Each test asserts the SAFE outcome; a probe that found a real weakness is marked
`xfail(strict=True)` with the reason.

Every name under `.test` resolves to 127.0.0.1 (tests/support/hosts), so a virtual-host
confusion shows up at the demo API as a tokened request whose Host header names another
host; a second API server (`other`) stands for a different machine.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import socket
import ssl
import stat
import subprocess
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import CLIENT_ID, CLIENT_SECRET, Proxy, cc_credential, route, secrets_in

from proxy_addon.demo.api import ApiServer
from proxy_addon.demo.certs import Pki
from proxy_addon.demo.idp import AuthServer
from proxy_addon.demo.server import Request, Response

FAST_RETRY = {"retry_attempts": 1, "backoff_initial": 0.05, "backoff_max": 0.1}
NOBODY = 65534


@dataclass
class Rig:
    idp: AuthServer
    api: ApiServer  # routed: https api.example.test, v.example.test (/v1 only)
    other: ApiServer  # never routed: https other.test
    http_api: ApiServer  # routed plain http (allow_http): open.example.test
    http_other: ApiServer  # never routed, plain http
    proxy: Proxy
    tmp: Path

    def tokens(self) -> list[str]:
        with self.idp._lock:  # test-only peek at the issued tokens
            return list(self.idp._access)

    def reset(self) -> None:
        for s in (self.api, self.other, self.http_api, self.http_other):
            s.reset()


@pytest.fixture(scope="module")
def rig(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("redteam")
    idp = AuthServer(pki).start()
    idp.add_client(CLIENT_ID, CLIENT_SECRET)
    api = ApiServer(idp.is_valid, pki).start()
    other = ApiServer(idp.is_valid, pki).start()
    http_api = ApiServer(idp.is_valid, None).start()
    http_other = ApiServer(idp.is_valid, None).start()
    config = {
        "ca_certs": [str(pki.ca_cert)],
        "store": {"path": str(tmp / "state" / "tokens.db"),
                  "key_file": str(tmp / "keys" / "store.key")},
        "credentials": {
            # Probes provoke 401s back to back on purpose: no rate limit between their refreshes.
            "api": cc_credential(idp.token_url, reject_grace=0, **FAST_RETRY),
            "ansi": cc_credential(idp.token_url, scopes=["ansi"], reject_grace=0, **FAST_RETRY),
        },
        "routes": [
            route("api.example.test", api.port),
            route("v.example.test", api.port, path="/v1"),
            route("ansi.example.test", api.port, credential="ansi"),
            route("open.example.test", http_api.port, scheme="http", allow_http=True),
        ],
    }  # fmt: skip
    proxy = Proxy(tmp, config, name="redteam")
    proxy.start("--set", "stream_large_bodies=1k", "-w", str(tmp / "flows.mitm"))
    bundle = tmp / "both-cas.pem"  # lets curl follow a redirect to the unrouted server
    bundle.write_bytes(proxy.ca.read_bytes() + pki.ca_cert.read_bytes())
    r = Rig(idp, api, other, http_api, http_other, proxy, tmp)
    try:
        yield r
    finally:
        proxy.stop()
        for s in (api, other, http_api, http_other, idp):
            s.stop()


@pytest.fixture
def fresh(rig: Rig) -> Rig:
    rig.reset()
    return rig


# --- raw clients ------------------------------------------------------------------------------


def _read_all(sock: socket.socket, deadline: float) -> bytes:
    out = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ssl.SSLError, ConnectionError):
            break
        if not chunk:
            break
        out += chunk
    return out


def tunnel(rig: Rig, connect: str, payload: bytes, *, sni: str | None = "api.example.test",
           timeout: float = 6) -> bytes:  # fmt: skip
    """CONNECT `connect`, TLS with `sni` (None: no SNI at all), send `payload` raw, and return
    everything the proxy answers until it closes (or `timeout`)."""
    deadline = time.monotonic() + timeout
    s = socket.create_connection(("127.0.0.1", rig.proxy.port), timeout=timeout)
    try:
        s.sendall(f"CONNECT {connect} HTTP/1.1\r\nHost: {connect}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(1)
            if not chunk:
                return head
            head += chunk
        if b" 200" not in head.split(b"\r\n", 1)[0]:
            return head
        ctx = ssl.create_default_context(cafile=str(rig.proxy.ca))
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the probe is about what the proxy sends, not trust
        t = ctx.wrap_socket(s, server_hostname=sni)
        t.sendall(payload)
        return _read_all(t, deadline)
    except (ssl.SSLError, ConnectionError, TimeoutError) as e:
        return f"<{type(e).__name__}>".encode()
    finally:
        s.close()


def plain(rig: Rig, payload: bytes, timeout: float = 6) -> bytes:
    """`payload` sent straight to the proxy's port (no CONNECT)."""
    s = socket.create_connection(("127.0.0.1", rig.proxy.port), timeout=timeout)
    try:
        s.sendall(payload)
        return _read_all(s, time.monotonic() + timeout)
    finally:
        s.close()


def curl(rig: Rig, *args: str) -> subprocess.CompletedProcess[str]:
    return rig.proxy.curl("-i", "--max-time", "10", *args)


def status_of(raw: bytes) -> int | None:
    lines = [ln for ln in raw.split(b"\r\n") if ln.startswith(b"HTTP/")]
    return int(lines[-1].split()[1]) if lines else None


# --- what the servers saw ---------------------------------------------------------------------


def _canon(host: str | None) -> str:
    return (host or "").strip().lower().replace(".:", ":").rstrip(".")


def misrouted(server: ApiServer, allowed: set[str]) -> list[dict]:
    """Tokened requests whose Host header names a host other than `allowed` (host:port)."""
    return [e for e in server.requests_log
            if e["token_fp"] and e["host_header"] is not None
            and _canon(e["host_header"]) not in allowed]  # fmt: skip


def tokened(server: ApiServer) -> list[dict]:
    return [e for e in server.requests_log if e["token_fp"]]


def api_hosts(rig: Rig) -> set[str]:
    p = rig.api.port
    return {f"api.example.test:{p}", f"v.example.test:{p}", f"ansi.example.test:{p}"}


def assert_no_leak(rig: Rig) -> None:
    assert tokened(rig.other) == [], "a token reached the unrouted HTTPS server"
    assert tokened(rig.http_other) == [], "a token reached the unrouted HTTP server"
    assert misrouted(rig.api, api_hosts(rig)) == [], "a token went out under another Host"
    assert misrouted(rig.http_api, {f"open.example.test:{rig.http_api.port}"}) == []


def req(target: str, host: str | None, *extra: str, method: str = "GET", body: bytes = b"",
        version: str = "HTTP/1.1") -> bytes:  # fmt: skip
    lines = [f"{method} {target} {version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += [*extra, "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# --- 1. names inside a CONNECT tunnel ---------------------------------------------------------


def test_no_sni_and_an_absolute_form_line_naming_another_host(fresh: Rig) -> None:
    r, o = fresh, fresh.other.port
    a = f"api.example.test:{r.api.port}"
    for target, host in [
        (f"https://other.test:{o}/p1", f"other.test:{o}"),
        (f"https://other.test:{o}/p1", a),
        (f"https://api.example.test:{r.api.port}/p1", f"other.test:{o}"),
    ]:
        tunnel(r, a, req(target, host), sni=None)
    assert_no_leak(r)


@pytest.mark.parametrize(
    "target",
    [
        "https://api.example.test:{p}@other.test:{o}/userinfo",
        "https://other.test:{o}#@api.example.test:{p}/frag",
        "https://API.EXAMPLE.TEST.:{p}.other.test:{o}/suffix",
        "https://api%2Eexample.test:{p}/pct",
        "https://other%2Etest:{o}/pct2",
        "https://[::1]:{p}/v6",
        "https://127.0.0.1:{p}/ip",
        "//other.test:{o}/scheme-relative",
        "https://other.test:{o}",
    ],
)
def test_odd_request_targets_in_a_tunnel(fresh: Rig, target: str) -> None:
    r = fresh
    t = target.format(p=r.api.port, o=r.other.port)
    a = f"api.example.test:{r.api.port}"
    tunnel(r, a, req(t, a))
    assert_no_leak(r)
    for e in tokened(r.api):  # the path the API saw is the one asked for, never a URL
        assert not e["path"].startswith(("http", "//")), e


@pytest.mark.parametrize(
    "extra",
    [
        ["Host: api.example.test:{p}", "Host: other.test:{o}"],  # two Host headers
        ["Host: other.test:{o}", "Host: api.example.test:{p}"],
        ["Host: api.example.test:{p}", " other.test:{o}"],  # obs-fold continuation
        ["Host: api.example.test:{p}\tother.test"],
        ["Host: api.example.test:{p}, other.test:{o}"],
        ["Host : other.test:{o}", "Host: api.example.test:{p}"],  # space before the colon
        ["host: api.example.test:{p}", "X-Forwarded-Host: other.test:{o}"],
        ["Host: other.test:{o}"],
        ["Host: api.example.test"],  # no port: names 443
    ],
)
def test_host_header_tricks_in_a_tunnel(fresh: Rig, extra: list[str]) -> None:
    r = fresh
    lines = [x.format(p=r.api.port, o=r.other.port) for x in extra]
    tunnel(r, f"api.example.test:{r.api.port}", req("/h", None, *lines))
    assert_no_leak(r)


def test_sni_naming_another_host_is_refused(fresh: Rig) -> None:
    r = fresh
    a = f"api.example.test:{r.api.port}"
    out = tunnel(r, a, req("/sni", a), sni="other.test")
    assert status_of(out) == 421, out[:200]
    assert tokened(r.api) == []


def test_http10_without_host_gets_the_token_only_at_the_target(fresh: Rig) -> None:
    r = fresh
    out = tunnel(r, f"api.example.test:{r.api.port}", req("/old", None, version="HTTP/1.0"))
    assert status_of(out) in (200, 400, 421), out[:200]
    assert_no_leak(r)


def test_connect_to_an_ip_or_unrouted_name_with_routed_sni_and_host(fresh: Rig) -> None:
    r = fresh
    a = f"api.example.test:{r.api.port}"
    for connect in (f"127.0.0.1:{r.api.port}", f"other.test:{r.api.port}",
                    f"API.EXAMPLE.TEST.:{r.api.port}"):  # fmt: skip
        tunnel(r, connect, req("/ip", a))
    # A passthrough tunnel carries no token; the trailing-dot name is the routed host itself.
    for e in tokened(r.api):
        assert _canon(e["host_header"]) == a, e


def test_second_request_on_a_kept_alive_tunnel_naming_another_host(fresh: Rig) -> None:
    r = fresh
    a, o = f"api.example.test:{r.api.port}", f"other.test:{r.api.port}"
    first = f"GET /first HTTP/1.1\r\nHost: {a}\r\n\r\n".encode()
    out = tunnel(r, a, first + req("/second", o) + req(f"https://{o}/third", o))
    assert status_of(out) is not None
    assert [e["path"] for e in tokened(r.api)] == ["/first"]
    assert_no_leak(r)


@pytest.mark.parametrize(
    "framing",
    [
        ["Transfer-Encoding: chunked", "Content-Length: 4"],
        ["Transfer-Encoding: xchunked", "Content-Length: {n}"],
        ["Transfer-Encoding: chunked", "Transfer-Encoding: identity"],
        ["Transfer-Encoding:\tchunked"],
        ["Content-Length: 0", "Content-Length: {n}"],
    ],
)
def test_request_smuggling_does_not_carry_the_token_elsewhere(
    fresh: Rig, framing: list[str]
) -> None:
    r = fresh
    a = f"api.example.test:{r.api.port}"
    smuggled = (f"GET https://other.test:{r.other.port}/smuggled HTTP/1.1\r\n"
                "Host: other.test\r\n\r\n")  # fmt: skip
    body = f"0\r\n\r\n{smuggled}".encode()
    lines = [f.format(n=len(body)) for f in framing]
    head = f"POST /smug HTTP/1.1\r\nHost: {a}\r\n" + "\r\n".join(lines) + "\r\n\r\n"
    tunnel(r, a, head.encode() + body)
    assert_no_leak(r)
    assert not [e for e in tokened(r.api) if e["path"].endswith("/smuggled")]


def test_expect_100_continue_and_a_401_retry_stay_on_the_route(fresh: Rig) -> None:
    r = fresh
    url = f"https://api.example.test:{r.api.port}/expect"
    res = curl(r, "-H", "Expect: 100-continue", "--data-binary", "x" * 3000, url)
    assert "200" in res.stdout
    r.api.always_401 = True
    try:
        curl(r, url)
    finally:
        r.api.always_401 = False
    assert_no_leak(r)


def test_http2_host_header_differing_from_authority(fresh: Rig) -> None:
    r = fresh
    url = f"https://api.example.test:{r.api.port}/h2"
    curl(r, "--http2", "-H", f"Host: other.test:{r.other.port}", url)
    curl(r, "--http2-prior-knowledge", "-H", f"Host: other.test:{r.other.port}", url)
    assert_no_leak(r)


# --- 2. plain requests to the proxy -----------------------------------------------------------


def test_absolute_form_straight_to_the_proxy(fresh: Rig) -> None:
    r = fresh
    p, hp, ho = r.api.port, r.http_api.port, r.http_other.port
    plain(r, req(f"https://api.example.test:{p}/abs", f"other.test:{p}"))
    plain(r, req(f"http://open.example.test:{hp}@127.0.0.1:{ho}/ui", f"open.example.test:{hp}"))
    plain(r, req(f"http://open.example.test:{hp}/hdr", f"127.0.0.1:{ho}"))
    plain(r, req(f"http://127.0.0.1:{hp}/ip", f"open.example.test:{hp}"))
    plain(r, req(f"http://OPEN.example.test.:{hp}/case", f"open.example.test:{hp}"))
    assert_no_leak(r)


def test_h2c_upgrade_on_a_plain_route(fresh: Rig) -> None:
    r = fresh
    hp = r.http_api.port
    out = plain(r, req(f"http://open.example.test:{hp}/h2c", f"open.example.test:{hp}",
                       "Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c",
                       "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA"))  # fmt: skip
    assert status_of(out) is not None
    assert_no_leak(r)


@pytest.mark.parametrize(
    "headers",
    [
        ["Origin: null"],
        ["Referer: http://evil.test/page"],
        ["Origin: http://open.example.test:{hp}.evil.test"],
        ["Origin: http://evil.test", "Sec-Fetch-Site: same-origin"],
        ["Origin: HTTP://OPEN.EXAMPLE.TEST:{hp}@evil.test"],
    ],
)
def test_cross_site_pages_on_a_plain_route(fresh: Rig, headers: list[str]) -> None:
    r = fresh
    hp = r.http_api.port
    lines = [h.format(hp=hp) for h in headers]
    out = plain(r, req(f"http://open.example.test:{hp}/cs", f"open.example.test:{hp}", *lines))
    assert status_of(out) == 403, out[:300]
    assert tokened(r.http_api) == []


def test_proxy_authorization_is_not_forwarded_upstream(fresh: Rig) -> None:
    r = fresh
    hp = r.http_api.port
    plain(r, req(f"http://open.example.test:{hp}/pa", f"open.example.test:{hp}",
                 "Proxy-Authorization: Basic dXNlcjpzZWNyZXQ="))  # fmt: skip
    (seen,) = r.http_api.requests_log
    assert "proxy-authorization" not in seen["header_names"]


# --- 3. a hostile API -------------------------------------------------------------------------


def _echoing(rig: Rig, make: Callable[[str, Request], Response]) -> Callable[[Request], Response]:
    """An API handler that answers with `make(token, request)` once authorized."""
    handle = rig.api.handle

    def echo(request: Request) -> Response:
        auth = request.headers.get("Authorization", "")
        if not auth.lower().startswith("bearer "):
            return handle(request)
        handle(request)  # log it
        return make(auth.split(" ", 1)[1], request)

    return echo


@pytest.fixture
def hostile(fresh: Rig) -> Iterator[Callable[[Callable[[str, Request], Response]], None]]:
    saved = fresh.api.handle

    def use(make: Callable[[str, Request], Response]) -> None:
        fresh.api.handle = _echoing(fresh, make)  # type: ignore[method-assign]

    yield use
    fresh.api.handle = saved  # type: ignore[method-assign]


def _get(rig: Rig, path: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["curl", "-sS", "-i", "--max-time", "10", "--proxy", rig.proxy.url, "--cacert",
         str(rig.proxy.ca), *args, f"https://api.example.test:{rig.api.port}{path}"],
        capture_output=True, timeout=30,
        env={k: v for k, v in os.environ.items() if "proxy" not in k.lower()},
    )  # fmt: skip


def test_redirect_to_another_host_is_followed_without_the_token(fresh: Rig, hostile) -> None:
    r = fresh
    o = r.other.port
    bundle = str(r.tmp / "both-cas.pem")
    for loc in (f"https://other.test:{o}/landed", f"//other.test:{o}/landed2",
                f"https://api.example.test:{r.api.port}@other.test:{o}/landed3"):  # fmt: skip
        hostile(lambda tok, req, loc=loc: Response(307, b"", {"Location": loc}))
        _get(r, "/redir", "-L", "--max-redirs", "2", "--cacert", bundle)
    assert r.other.requests_log, "the client never followed the redirect"
    assert_no_leak(r)


def test_token_split_across_streamed_chunks_is_scrubbed(fresh: Rig, hostile) -> None:
    def make(tok: str, _: Request) -> Response:
        chunks = [b"a" * 3000 + tok[:5].encode()] + [c.encode() for c in tok[5:]] + [b"z" * 3000]
        return Response(200, headers={"Content-Type": "text/plain"}, chunks=iter(chunks))

    hostile(make)
    out = _get(fresh, "/stream").stdout
    assert secrets_in([out], fresh.tokens()) == []


@pytest.mark.parametrize("encoding", ["gzip, gzip", "x-gzip", "identity, gzip", "GZIP"])
def test_token_in_an_oddly_encoded_body_is_scrubbed(fresh: Rig, hostile, encoding: str) -> None:
    def make(tok: str, _: Request) -> Response:
        body = tok.encode() * 3
        for _layer in range(encoding.lower().count("gzip")):
            body = gzip.compress(body)
        return Response(200, body, {"Content-Encoding": encoding})

    hostile(make)
    out = _get(fresh, "/enc", "--compressed").stdout + _get(fresh, "/enc").stdout
    assert secrets_in([out], fresh.tokens()) == []
    for layer in range(3):  # curl decodes one layer at most; look inside the rest too
        try:
            out = gzip.decompress(out.split(b"\r\n\r\n", 1)[-1]) if layer else out
        except (OSError, EOFError):
            break
        assert secrets_in([out], fresh.tokens()) == []


def test_token_echoed_in_headers_and_a_401_body(fresh: Rig, hostile) -> None:
    def make(tok: str, _: Request) -> Response:
        return Response(401, f"bad token {tok}".encode(), {
            "WWW-Authenticate": f'Bearer error="invalid_token", error_description="{tok}"',
            "Location": f"https://other.test/?t={tok}", "Set-Cookie": f"t={tok}",
            "X-Echo-Split": f"{tok[:4]} {tok[4:]}"[:0] + tok,
        })  # fmt: skip

    hostile(make)
    out = _get(fresh, "/echo401").stdout
    assert b"401" in out
    assert secrets_in([out], fresh.tokens()) == []


@pytest.mark.xfail(
    strict=True,
    reason="the scrub matches the token's exact bytes; an echo with "
    "its case changed passes (outside the README's letter)",
)
def test_token_echoed_with_its_case_changed(fresh: Rig, hostile) -> None:
    """Out of the promise's letter (it is not the token's bytes), but for a case-insensitive
    token alphabet (hex) it is the token: reported either way."""
    hostile(lambda tok, _: Response(200, tok.upper().encode() + b"\n" + tok.lower().encode()))
    out = _get(fresh, "/case").stdout
    tokens = fresh.tokens()
    leaked = [t for t in tokens if t.upper().encode() in out or t.lower().encode() in out]
    assert leaked == []


# --- 4. a hostile IdP -------------------------------------------------------------------------


def test_idp_error_with_terminal_escapes_reaches_no_client_or_log(fresh: Rig) -> None:
    r = fresh
    handle = r.idp.handle
    evil = "\x1b]0;pwned\x07\x1b[2J\x1b[31mred"

    def hostile_idp(request: Request) -> Response:
        if request.path.endswith("/token"):
            return Response.of_json(
                400, {"error": "invalid_client" + evil, "error_description": evil + CLIENT_SECRET}
            )
        return handle(request)

    r.idp.handle = hostile_idp  # type: ignore[method-assign]
    try:
        out = _get(r, "/ansi").stdout
        out += subprocess.run(
            ["curl", "-sS", "-i", "--max-time", "10", "--proxy", r.proxy.url, "--cacert",
             str(r.proxy.ca), f"https://ansi.example.test:{r.api.port}/ansi"],
            capture_output=True, timeout=30).stdout  # fmt: skip
    finally:
        r.idp.handle = handle  # type: ignore[method-assign]
    assert b"\x1b" not in out and b"\x07" not in out
    assert CLIENT_SECRET.encode() not in out
    log = r.proxy.output()
    assert "\x1b" not in log and "\x07" not in log
    assert CLIENT_SECRET not in log


# --- 5. the proxy's own pages, flow file, files ----------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "authproxy.local.",
        "AUTHPROXY.LOCAL",
        "authproxy.local:80",
        None,
        "127.0.0.1",
        "authproxy.local:{port}",
        "localhost",
    ],
)
@pytest.mark.parametrize("path", ["/status.json", "/", "/healthz", "/readyz"])
def test_status_page_straight_to_the_port(fresh: Rig, host: str | None, path: str) -> None:
    r = fresh
    h = host.format(port=r.proxy.port) if host else None
    out = plain(r, req(path, h, version="HTTP/1.1" if h else "HTTP/1.0"))
    assert b'"credentials"' not in out and b"client-a" not in out
    assert b"api.example.test" not in out, out[:300]


def test_flow_file_and_store_files_hold_no_secret_and_are_closed_to_others(fresh: Rig) -> None:
    r = fresh
    assert b"200" in _get(r, "/flows").stdout
    flows = r.tmp / "flows.mitm"
    assert wait_for(lambda: flows.exists() and flows.stat().st_size > 0)
    blob = flows.read_bytes()
    assert secrets_in([blob], [*r.tokens(), CLIENT_SECRET]) == []
    for f in (flows, r.tmp / "state" / "tokens.db", r.tmp / "keys" / "store.key"):
        assert stat.S_IMODE(f.stat().st_mode) & 0o077 == 0, f
    if os.getuid() == 0:
        for f in (r.tmp / "state" / "tokens.db", r.tmp / "keys" / "store.key", flows):
            res = subprocess.run(["cat", str(f)], capture_output=True, user=NOBODY, cwd="/")
            assert res.returncode != 0 and not res.stdout, f


@pytest.mark.skipif(os.getuid() != 0, reason="another uid needs root")
def test_another_uid_through_socks_ipv6_and_absolute_form(fresh: Rig) -> None:
    r = fresh
    p = r.api.port
    env = {"PATH": os.environ["PATH"]}
    for args in (
        ["--proxy", r.proxy.url, "-k", f"https://api.example.test:{p}/nobody"],
        ["--proxy", f"http://localhost:{r.proxy.port}", "-k", f"https://api.example.test:{p}/n2"],
        [
            "--proxy",
            r.proxy.url,
            "--proxy-insecure",
            f"http://open.example.test:{r.http_api.port}/n3",
        ],
        ["-H", "Host: authproxy.local", f"http://127.0.0.1:{r.proxy.port}/status.json"],
    ):
        res = subprocess.run(["curl", "-sS", "--max-time", "8", *args], capture_output=True,
                             text=True, timeout=30, user=NOBODY, cwd="/", env=env)  # fmt: skip
        assert "credentials" not in res.stdout
    assert tokened(r.api) == [] and tokened(r.http_api) == []


def wait_for(cond: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


# --- 6. path prefixes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/v1/../admin",
        "/v1/%2e%2e/admin",
        "/v1/%2E%2e/admin",
        "/v1/..%2fadmin",
        "/v1/..%5cadmin",
        "/v1/..\\admin",
        "/v1/..;/admin",
        "/v1;x/../admin",
        "/v1/.%2e/admin",
        "/v1%2f..%2fadmin",
        "/v1/%2e%2e%2fadmin",
        "/v1/..%252fadmin",  # a server that decodes twice
        "/v1/%252e%252e/admin",
        "/v1/%u002e%u002e/admin",  # IIS-style %u escapes
        "/v1/..%c0%afadmin",  # overlong UTF-8 for "/"
    ],
)
def test_path_prefix_escape(fresh: Rig, path: str) -> None:
    """Every path here reads as outside /v1 for some server (double decoding, IIS %u, overlong
    UTF-8 are named in the report as lenient readings); none may carry the token."""
    r = fresh
    a = f"v.example.test:{r.api.port}"
    tunnel(r, a, req(path, a), sni="v.example.test")
    assert tokened(r.api) == [], [e["path"] for e in tokened(r.api)]


def test_path_prefix_baseline_gets_the_token(fresh: Rig) -> None:
    r = fresh
    a = f"v.example.test:{r.api.port}"
    out = tunnel(r, a, req("/v1/ok", a), sni="v.example.test")
    assert status_of(out) == 200, out[:300]
    assert [e["path"] for e in tokened(r.api)] == ["/v1/ok"]


def test_debug_json_of_api_log(fresh: Rig) -> None:
    """The rig itself works: a plain call through curl is answered with the token."""
    out = _get(fresh, "/baseline").stdout
    assert b"200" in out.split(b"\r\n", 1)[0] or b" 200" in out
    body = out.split(b"\r\n\r\n")[-1]
    assert json.loads(body)["token_fp"]


PROXY_PASSWORD = "team-" + "q" * 20


def test_proxy_auth_password_reaches_neither_the_api_nor_the_flow_file(
    start_proxy, idp: AuthServer, http_api: ApiServer, api: ApiServer, tmp_path: Path
) -> None:
    flows = tmp_path / "pa-flows.mitm"
    proxy = start_proxy({
        "proxy_auth": f"team:{PROXY_PASSWORD}",
        "credentials": {"api": cc_credential(idp.token_url)},
        "routes": [route("open.example.test", http_api.port, scheme="http", allow_http=True),
                   route("api.example.test", api.port)],
    }, "-w", str(flows))  # fmt: skip
    authed = proxy.url.replace("http://", f"http://team:{PROXY_PASSWORD}@")
    for url in (f"http://open.example.test:{http_api.port}/pa",
                f"https://api.example.test:{api.port}/pa"):  # fmt: skip
        res = subprocess.run(
            ["curl", "-sS", "--max-time", "10", "--proxy", authed, "--cacert", str(proxy.ca),
             "-H", f"X-Probe: {url}", "--proxy-header", "X-Proxy-Probe: 1", url],
            capture_output=True, text=True, timeout=30,
            env={k: v for k, v in os.environ.items() if "proxy" not in k.lower()},
        )  # fmt: skip
        assert '"ok": true' in res.stdout, res
    for server in (http_api, api):
        (seen,) = server.requests_log
        assert "proxy-authorization" not in seen["header_names"]
    proxy.stop()
    blob = flows.read_bytes()
    assert secrets_in([blob, proxy.output().encode()], [PROXY_PASSWORD]) == []
    import base64

    basic = base64.b64encode(f"team:{PROXY_PASSWORD}".encode())
    assert basic not in blob
    assert stat.S_IMODE(flows.stat().st_mode) & 0o077 == 0


# --- 7. scheme downgrade and option combinations ----------------------------------------------


def test_plain_http_to_an_https_route_never_carries_the_token(
    start_proxy, idp: AuthServer, http_api: ApiServer
) -> None:
    """The route says https; the client speaks plain HTTP (absolute-form, origin-form straight to
    the port, and plain HTTP inside a CONNECT tunnel) to the same host and port."""
    proxy = start_proxy({"credentials": {"api": cc_credential(idp.token_url)},
                         "routes": [route("tls.example.test", http_api.port)]})  # fmt: skip
    a = f"tls.example.test:{http_api.port}"
    sent = [req(f"http://{a}/abs", a), req("/origin", a)]
    for payload in sent:
        s = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        s.sendall(payload)
        _read_all(s, time.monotonic() + 5)
        s.close()
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    s.sendall(f"CONNECT {a} HTTP/1.1\r\nHost: {a}\r\n\r\n".encode())
    head = s.recv(4096)
    if b" 200" in head:
        s.sendall(req("/in-tunnel", a))
        _read_all(s, time.monotonic() + 5)
    s.close()
    assert tokened(http_api) == [], [e["path"] for e in tokened(http_api)]


@pytest.mark.parametrize(
    "spec",
    [
        "|~q|HOST|other.test",
        "/Host /other.test",
        "/~q/:Authority/other.test",
        "/~q/authorization/Bearer x",
    ],
)
def test_modify_headers_spellings_of_guarded_headers_are_refused(
    start_proxy, idp: AuthServer, api: ApiServer, spec: str
) -> None:
    with pytest.raises(AssertionError, match="did not start"):
        start_proxy({"credentials": {"api": cc_credential(idp.token_url)},
                     "routes": [route("api.example.test", api.port)]},
                    "--set", f"modify_headers={spec}")  # fmt: skip


def test_modify_headers_on_message_framing_cannot_smuggle_the_next_token(
    start_proxy, idp: AuthServer, api: ApiServer
) -> None:
    """`modify_headers` rewriting Content-Length runs before the addon decides, but after
    mitmproxy framed the client's body: the body leaves with a wrong length, the API reads it
    as a second request, and that request swallows the next (tokened) request as its body."""
    try:
        proxy = start_proxy({"credentials": {"api": cc_credential(idp.token_url)},
                             "routes": [route("api.example.test", api.port)]},
                            "--set", "modify_headers=/~q ~m POST/Content-Length/0")  # fmt: skip
    except AssertionError:
        return  # refused: the probe held
    captured: list[bytes] = []
    handle = api.handle

    def capture(request: Request) -> Response:
        if request.path.startswith("/capture"):
            captured.append(request.body)
        return handle(request)

    api.handle = capture  # type: ignore[method-assign]
    a = f"api.example.test:{api.port}"
    rig = Rig(idp, api, api, api, api, proxy, Path("."))
    tunnel(rig, a, req("/warm", a))  # mints the token, so its length is known
    with idp._lock:
        (length,) = {len(t) for t in idp._access}
    second = f"GET /next HTTP/1.1\r\nHost: {a}\r\n\r\n".encode()
    # What the API reads after the smuggled head: the next request up to the token's end.
    swallow = len(second) - 2 + len("authorization: Bearer ") + length
    smuggled = (f"GET /capture HTTP/1.1\r\nHost: other.test:{api.port}\r\n"
                f"Content-Length: {swallow}\r\n\r\n").encode()  # fmt: skip
    first = (f"POST /smug HTTP/1.1\r\nHost: {a}\r\nContent-Length: {len(smuggled)}\r\n\r\n"
             ).encode() + smuggled  # fmt: skip
    tunnel(rig, a, first + second, timeout=6)
    with idp._lock:
        tokens = list(idp._access)
    assert secrets_in(captured, tokens) == [], "the next request's token became another's body"


# --- 8. HTTP/2 from the client (connection_strategy=lazy lets the proxy speak h2 to the client
# while the demo API speaks HTTP/1.1) ---------------------------------------------------------


def h2_request(port: int, ca: Path, connect: str, sni: str, headers: list[tuple[str, str]]) -> int:
    """One hand-made HTTP/2 request inside a CONNECT tunnel, with header validation off so
    duplicate or conflicting pseudo-headers go out as written; the answer's status (0: none)."""
    import h2.config
    import h2.connection
    import h2.events

    s = socket.create_connection(("127.0.0.1", port), timeout=8)
    s.sendall(f"CONNECT {connect} HTTP/1.1\r\nHost: {connect}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    t = ctx.wrap_socket(s, server_hostname=sni)
    if t.selected_alpn_protocol() != "h2":
        t.close()
        return -1
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(
            client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False
        )
    )
    conn.initiate_connection()
    conn.send_headers(1, headers, end_stream=True)
    t.sendall(conn.data_to_send())
    deadline, status = time.monotonic() + 6, 0
    while time.monotonic() < deadline and not status:
        try:
            data = t.recv(65536)
        except (TimeoutError, ssl.SSLError, ConnectionError):
            break
        if not data:
            break
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                status = int(dict(ev.headers)[b":status"])
            elif isinstance(ev, h2.events.StreamReset | h2.events.ConnectionTerminated):
                status = status or 1
        t.sendall(conn.data_to_send())
    t.close()
    return status


def test_http2_names_must_agree(start_proxy, idp: AuthServer, api: ApiServer) -> None:
    proxy = start_proxy(
        {
            "credentials": {"api": cc_credential(idp.token_url)},
            "routes": [route("api.example.test", api.port)],
        },
        "--set",
        "connection_strategy=lazy",
    )
    a, o = f"api.example.test:{api.port}", f"other.test:{api.port}"

    def send(*extra: tuple[str, str], authority: str | None = a, sni: str = "api.example.test"):
        hs = [(":method", "GET"), (":scheme", "https"), (":path", "/h2")]
        if authority is not None:
            hs.insert(1, (":authority", authority))
        return h2_request(proxy.port, proxy.ca, a, sni, [*hs, *extra])

    assert send() == 200  # baseline: the proxy speaks h2 to the client here
    probes = {
        "authority other": send(authority=o),
        "host other": send(("host", o)),
        "no authority, host other": send(("host", o), authority=None),
        "two authorities": send((":authority", o)),
        "authority with userinfo": send(authority=f"x@{o}"),
        "sni other": send(sni="other.test"),
        "authority upper+dot": send(authority=f"API.EXAMPLE.TEST.:{api.port}"),
    }
    assert probes["authority upper+dot"] in (200, 421, 1)
    misrouted_ = [e for e in api.requests_log if e["token_fp"] and _canon(e["host_header"]) != a]
    assert misrouted_ == [], (probes, misrouted_)


# --- 9. a hostile WebSocket API --------------------------------------------------------------


class WsEcho:
    """A TLS WebSocket server that, once a client connects with a Bearer token, sends that
    token back in every shape: whole, split across two messages, fragmented, binary, and as
    the close reason. Records whether each handshake carried a token."""

    def __init__(self, pki: Pki) -> None:
        import threading

        self._tls = pki.server_context()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.tokens_seen: list[str] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self._sock.accept()
            except OSError:
                return
            with contextlib.suppress(OSError, ssl.SSLError):
                self._one(self._tls.wrap_socket(raw, server_side=True))

    def _one(self, conn: ssl.SSLSocket) -> None:
        import wsproto
        import wsproto.events as ev
        from wsproto.frame_protocol import CloseReason

        conn.settimeout(5)
        ws = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
        token = None
        while token is None:
            data = conn.recv(65536)
            if not data:
                return
            ws.receive_data(data)
            for e in ws.events():
                if isinstance(e, ev.Request):
                    auth = dict((k.lower(), v) for k, v in e.extra_headers).get(b"authorization")
                    token = (auth or b"").decode().partition(" ")[2]
                    self.tokens_seen.append(token)
                    conn.sendall(ws.send(ev.AcceptConnection()))
        half = len(token) // 2
        out = [
            ev.TextMessage(data=f"whole {token}"),
            ev.TextMessage(data=f"split {token[:half]}"),
            ev.TextMessage(data=f"{token[half:]} end"),
            ev.TextMessage(data=f"frag {token[:half]}", message_finished=False),
            ev.TextMessage(data=f"{token[half:]} end"),
            ev.BytesMessage(data=b"bin " + token.encode()),
            ev.CloseConnection(code=CloseReason.NORMAL_CLOSURE, reason=token),
        ]
        for e in out:
            conn.sendall(ws.send(e))
        try:
            while conn.recv(65536):
                pass
        except (OSError, ssl.SSLError):
            pass
        conn.close()

    def stop(self) -> None:
        self._sock.close()


def ws_client(proxy: Proxy, host: str, port: int) -> tuple[list[str | bytes], str | None]:
    """A WebSocket client through the proxy: every message it got and the close reason."""
    import wsproto
    import wsproto.events as ev

    a = f"{host}:{port}"
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=8)
    s.sendall(f"CONNECT {a} HTTP/1.1\r\nHost: {a}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    ctx = ssl.create_default_context(cafile=str(proxy.ca))
    t = ctx.wrap_socket(s, server_hostname=host)
    ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    t.sendall(ws.send(ev.Request(host=a, target="/ws")))
    got: list[str | bytes] = []
    parts: list[str | bytes] = []
    reason = None
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline and reason is None:
        try:
            data = t.recv(65536)
        except (TimeoutError, ssl.SSLError, ConnectionError):
            break
        if not data:
            break
        ws.receive_data(data)
        for e in ws.events():
            if isinstance(e, ev.Message):
                parts.append(e.data)
                if e.message_finished:
                    got.append(type(e.data)().join(parts))  # type: ignore[arg-type]
                    parts = []
            elif isinstance(e, ev.CloseConnection):
                reason = e.reason or ""
            elif isinstance(e, ev.RejectConnection):
                reason = f"<rejected {e.status_code}>"
    t.close()
    return got, reason


@pytest.fixture
def ws_echo(start_proxy, idp: AuthServer, pki: Pki) -> tuple[str, list[str], str | None]:
    """The token the WebSocket API got, the messages its client got, and the close reason."""
    server = WsEcho(pki)
    try:
        proxy = start_proxy(
            {
                "credentials": {"api": cc_credential(idp.token_url)},
                "routes": [route("ws.example.test", server.port)],
            }
        )
        got, reason = ws_client(proxy, "ws.example.test", server.port)
    finally:
        server.stop()
    assert server.tokens_seen and server.tokens_seen[0], "the handshake carried no token"
    texts = [m if isinstance(m, str) else m.decode("latin-1") for m in got]
    assert len(texts) >= 4, len(texts)
    return server.tokens_seen[0], texts, reason


def test_websocket_whole_fragmented_and_binary_echoes_are_scrubbed(ws_echo) -> None:
    token, texts, _ = ws_echo
    assert secrets_in(texts, [token]) == []


@pytest.mark.xfail(
    strict=True,
    reason="each WebSocket message is scrubbed on its own; a token split across two "
    "messages reaches the client",
)
def test_websocket_token_split_across_messages_is_scrubbed(ws_echo) -> None:
    token, texts, _ = ws_echo
    assert secrets_in(["".join(texts)], [token]) == []


@pytest.mark.xfail(
    strict=True,
    reason="the close frame's reason is relayed by mitmproxy's WebSocket layer with no hook "
    "before it leaves; the token echoed there reaches the client",
)
def test_websocket_close_reason_is_scrubbed(ws_echo) -> None:
    token, _, reason = ws_echo
    assert reason is not None, "no close frame reached the client"
    assert secrets_in([reason], [token]) == []


# --- 10. hostile raw HTTP/1.1 answers ---------------------------------------------------------


class RawApi:
    """A TLS server that answers every request with `make(token)`, raw bytes, then closes."""

    def __init__(self, pki: Pki, make: Callable[[str], bytes]) -> None:
        import threading

        self._tls = pki.server_context()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.make = make
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self._sock.accept()
            except OSError:
                return
            with contextlib.suppress(OSError, ssl.SSLError):
                conn = self._tls.wrap_socket(raw, server_side=True)
                conn.settimeout(5)
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    head += chunk
                token = ""
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"authorization:"):
                        token = line.split(b" ", 2)[-1].decode()
                conn.sendall(self.make(token))
                conn.close()

    def stop(self) -> None:
        self._sock.close()


def _chunked(body: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(body), body)


def _raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-15)  # deflate without the zlib wrapper, as some servers send
    return c.compress(data) + c.flush()


RAW_ANSWERS: dict[str, Callable[[str], bytes]] = {
    "reason phrase": lambda t: f"HTTP/1.1 200 OK {t}\r\nContent-Length: 0\r\n\r\n".encode(),
    "header name": lambda t: f"HTTP/1.1 200 OK\r\nX-{t}: 1\r\nContent-Length: 0\r\n\r\n".encode(),
    "folded header": lambda t: (
        f"HTTP/1.1 200 OK\r\nX-A: a\r\n {t}\r\nContent-Length: 0\r\n\r\n".encode()
    ),
    "chunked trailer": lambda t: (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n"
        + _chunked(b"hello")
        + f"0\r\nX-T: {t}\r\n\r\n".encode()
    ),
    "103 early hints": lambda t: (
        f"HTTP/1.1 103 Early Hints\r\nLink: </x?t={t}>; rel=preload\r\n\r\n"
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    ).encode(),
    "unknown encoding": lambda t: (
        f"HTTP/1.1 200 OK\r\nContent-Encoding: x-custom\r\nContent-Length: {len(t)}\r\n\r\n{t}"
    ).encode(),
    "corrupt gzip": lambda t: (
        b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s"
        % (len(t) + 10, b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + t.encode())
    ),
    "truncated gzip": lambda t: (
        lambda z: (
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s"
            % (len(z), z)
        )
    )(gzip.compress(t.encode() * 4)[:-12]),
    "token split by chunked framing": lambda t: (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + _chunked(t[:9].encode())
        + _chunked(t[9:].encode())
        + b"0\r\n\r\n"
    ),
    "close-delimited body": lambda t: f"HTTP/1.1 200 OK\r\n\r\nbody {t} end".encode(),
    "deflate raw": lambda t: (
        lambda z: (
            b"HTTP/1.1 200 OK\r\nContent-Encoding: deflate\r\nContent-Length: %d\r\n\r\n%s"
            % (len(z), z)
        )
    )(_raw_deflate(t.encode())),
}


@pytest.mark.parametrize("kind", sorted(RAW_ANSWERS))
def test_raw_hostile_answers_never_show_the_token(
    start_proxy, idp: AuthServer, pki: Pki, kind: str
) -> None:
    server = RawApi(pki, RAW_ANSWERS[kind])
    try:
        proxy = start_proxy(
            {
                "credentials": {"api": cc_credential(idp.token_url, retry_attempts=1)},
                "routes": [route("raw.example.test", server.port)],
            }
        )
        res = subprocess.run(
            ["curl", "-sS", "-i", "--raw", "--max-time", "8", "--proxy", proxy.url,
             "--cacert", str(proxy.ca), f"https://raw.example.test:{server.port}/x"],
            capture_output=True, timeout=30,
            env={k: v for k, v in os.environ.items() if "proxy" not in k.lower()},
        )  # fmt: skip
    finally:
        server.stop()
    with idp._lock:
        tokens = list(idp._access)
    assert tokens, "no token was issued"
    body = res.stdout
    seen = [body]
    with contextlib.suppress(Exception):
        seen.append(gzip.decompress(body.split(b"\r\n\r\n", 1)[1]))
    with contextlib.suppress(Exception):
        seen.append(zlib.decompress(body.split(b"\r\n\r\n", 1)[1], -15))
    assert secrets_in(seen, tokens) == []
    assert secrets_in([proxy.output()], tokens) == []


def test_token_echoed_after_a_non_websocket_upgrade_is_scrubbed(
    start_proxy, idp: AuthServer, pki: Pki
) -> None:
    """`Upgrade: tcp` answered 101: mitmproxy relays the rest as raw TCP, where the API echoes
    the token it got in the upgrade request."""
    server = RawApi(
        pki,
        lambda t: (
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
            + f"raw {t} end\n".encode()
        ),
    )
    try:
        proxy = start_proxy(
            {
                "credentials": {"api": cc_credential(idp.token_url)},
                "routes": [route("raw.example.test", server.port)],
            }
        )
        a = f"raw.example.test:{server.port}"
        rig = Rig(idp, None, None, None, None, proxy, Path("."))  # type: ignore[arg-type]
        out = tunnel(
            rig,
            a,
            req("/up", a, "Connection: Upgrade", "Upgrade: tcp").replace(
                b"Connection: close\r\n", b""
            ),
            sni="raw.example.test",
        )
    finally:
        server.stop()
    with idp._lock:
        tokens = list(idp._access)
    assert tokens, "no token was issued"
    assert status_of(out) is not None
    assert secrets_in([out], tokens) == []


# --- 11. more on the shared rig ---------------------------------------------------------------


def test_nested_connect_inside_a_tunnel(fresh: Rig) -> None:
    r = fresh
    a, o = f"api.example.test:{r.api.port}", f"other.test:{r.other.port}"
    tunnel(r, a, f"CONNECT {o} HTTP/1.1\r\nHost: {o}\r\n\r\nGET /n HTTP/1.1\r\nHost: {o}\r\n\r\n"
           .encode())  # fmt: skip
    tunnel(r, a, f"CONNECT {a} HTTP/1.1\r\nHost: {a}\r\nConnection: close\r\n\r\n".encode())
    assert_no_leak(r)


def test_status_page_through_the_proxy_holds_no_secret(fresh: Rig) -> None:
    r = fresh
    _get(r, "/warm")
    s = r.proxy.session()
    pages = [s.get(f"http://authproxy.local{p}", timeout=10).content
             for p in ("/status.json", "/", "/metrics", "/healthz", "/readyz")]  # fmt: skip
    assert secrets_in(pages, [*r.tokens(), CLIENT_SECRET]) == []


def test_401_then_echo_on_the_retry_is_scrubbed(fresh: Rig, hostile) -> None:
    calls: list[int] = []

    def make(tok: str, _: Request) -> Response:
        calls.append(1)
        if len(calls) == 1:
            return Response(401, b"", {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return Response(200, f"second answer {tok}".encode(), {"X-Echo": tok})

    hostile(make)
    out = _get(fresh, "/retry-echo").stdout
    assert len(calls) == 2, "the 401 was not retried"
    assert secrets_in([out], fresh.tokens()) == []


@pytest.mark.xfail(
    strict=True,
    reason="a no-cors browser GET from another site with Referrer-Policy no-referrer carries "
    "no Origin, Referer or Sec-Fetch-* to a plain-http route, and gets the token",
)
def test_cross_site_image_request_without_referrer_on_a_plain_route(fresh: Rig) -> None:
    """What Chromium sends for `<img referrerpolicy=no-referrer src=http://open.example.test/..>`
    on a page of evil.test: plain-http destinations get no Sec-Fetch-* headers."""
    r = fresh
    hp = r.http_api.port
    browser = [
        "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/131.0.0.0 Safari/537.36",
        "Accept: image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8",
        "Accept-Language: en-US,en;q=0.9",
    ]
    plain(r, req(f"http://open.example.test:{hp}/delete?id=1", f"open.example.test:{hp}", *browser))
    assert tokened(r.http_api) == []
