"""`authproxy login`: a person signs in once, and the tokens go to the store.

Authorization code with PKCE (RFC 7636) through a one-shot loopback redirect (RFC 8252), or a
pasted redirect URL for SSH sessions; the device grant (RFC 8628) for headless machines; the
password grant for legacy providers. Every failure is a `LoginError` whose message says what
happened and what to do, never a traceback.
"""

from __future__ import annotations

import contextlib
import hmac
import html
import queue
import threading
import time
import webbrowser
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests
from oauthlib.oauth2 import WebApplicationClient

from .errors import GrantError
from .grants import _OAuthGrant, _to_token
from .store import StoreError, TokenStore
from .tokens import Token

__all__ = ["LoginError", "login", "save_token"]

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
CALLBACK_PATH = "/callback"

Out = Callable[[str], None]


class LoginError(Exception):
    """Signing in failed; the message is for the person at the terminal."""


def login(
    grant: _OAuthGrant,
    store: TokenStore,
    *,
    no_browser: bool = False,
    timeout: float = 300.0,
    out: Out = print,
    read: Callable[[str], str] = input,
) -> Token:
    kind = grant.cfg.grant
    try:
        if kind == "authorization_code":
            token = code_flow(grant, no_browser=no_browser, timeout=timeout, out=out, read=read)
        elif kind == "device_code":
            token = device_flow(grant, timeout=timeout, out=out)
        elif kind == "password":
            token = grant.obtain(None)
        else:
            raise LoginError(
                f"credential {grant.name!r} uses grant {kind}, which needs no sign-in; "
                "its tokens are fetched when needed"
            )
    except GrantError as e:
        raise LoginError(f"sign-in failed: {e}") from None
    save_token(store, grant.cfg.store_key, token)
    return token


def save_token(store: TokenStore, key: str, token: Token) -> None:
    """Replace the stored token, under the credential's lock, so a refresh cannot interleave.

    `key` is the credential's row in the store (CredentialConfig.store_key)."""
    with store.lock(key):
        try:
            record = store.get(key)
        except StoreError as e:
            name = key.partition("#")[0]
            raise LoginError(
                f"{e}; nothing was stored (fix the key, or `authproxy logout {name}` first)"
            ) from None
        store.put(key, token, record.version if record else None)


# --- authorization code + PKCE ---------------------------------------------------------------


class _Listener:
    """A one-shot HTTP server on 127.0.0.1 that receives the authorization redirect."""

    def __init__(self, port: int) -> None:
        results: queue.Queue[str] = queue.Queue()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if urlsplit(self.path).path != CALLBACK_PATH:
                    self.send_error(404)
                    return
                query = parse_qs(urlsplit(self.path).query)
                ok = "code" in query and "error" not in query
                text = (
                    "Signed in. You can close this window and go back to the terminal."
                    if ok
                    else "Sign-in did not complete: "
                    + html.escape(query.get("error", ["no code"])[0])
                    + ". See the terminal."
                )
                body = f"<!doctype html><title>authproxy</title><p>{text}</p>".encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                results.put(self.path)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the query holds the authorization code

        try:
            self.server = HTTPServer(("127.0.0.1", port), Handler)
        except OSError as e:
            raise LoginError(
                f"cannot listen on 127.0.0.1:{port} for the sign-in redirect ({e.strerror}); "
                "set redirect_port to a free port, or use --no-browser"
            ) from None
        self.port = self.server.server_address[1]
        self._results = results
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def wait(self, timeout: float) -> str | None:
        try:
            return self._results.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def code_flow(
    grant: _OAuthGrant, *, no_browser: bool, timeout: float, out: Out, read: Callable[[str], str]
) -> Token:
    cfg = grant.cfg
    authorization_url = grant.endpoints().authorization_url
    if authorization_url is None:
        raise LoginError(f"credential {grant.name!r}: the provider names no authorization endpoint")
    listener = None if no_browser else _Listener(cfg.redirect_port)
    port = listener.port if listener else (cfg.redirect_port or _free_port())
    redirect_uri = f"http://127.0.0.1:{port}{CALLBACK_PATH}"
    try:
        session = grant.session(
            client=WebApplicationClient(cfg.client_id), redirect_uri=redirect_uri, pkce="S256"
        )
        url, state = session.authorization_url(authorization_url, **dict(cfg.authorization_params))
        out(f"Sign in to {grant.name!r} by opening this URL in a browser:\n\n  {url}\n")
        if listener is not None:
            _open_browser(url)
            out(f"Waiting up to {timeout:.0f}s for the sign-in to finish...")
            path = listener.wait(timeout)
            if path is None:
                raise LoginError(
                    f"no sign-in arrived within {timeout:.0f}s; run the command again (or use "
                    "--no-browser and paste the final URL)"
                )
            response_url = f"http://127.0.0.1:{port}{path}"
        else:
            out(
                "After signing in, the browser goes to a page that cannot load "
                f"({redirect_uri}...). Copy that page's full URL from the address bar."
            )
            response_url = read("Paste the URL here: ").strip()
        code = _code_from_redirect(response_url, redirect_uri, state)
        auth, extra = grant.client_auth()
        try:
            return grant.call(
                "authorization code exchange", session.fetch_token, code=code, auth=auth, **extra
            )
        except GrantError as e:
            if e.code == "invalid_grant":
                raise LoginError(
                    f"the provider refused the authorization code ({e}); it may have expired, "
                    "been used already, or the PKCE verifier did not match. Run login again."
                ) from None
            raise
    finally:
        if listener is not None:
            listener.close()


def _code_from_redirect(response_url: str, redirect_uri: str, state: str) -> str:
    parts, expected = urlsplit(response_url), urlsplit(redirect_uri)
    if (parts.scheme, parts.netloc, parts.path) != (
        expected.scheme,
        expected.netloc,
        expected.path,
    ):
        raise LoginError(
            f"that is not the redirect this login waits for: expected a URL starting with "
            f"{redirect_uri}"
        )
    query = parse_qs(parts.query)
    got_state = query.get("state", [""])[0]
    if not hmac.compare_digest(got_state.encode(), state.encode()):
        raise LoginError(
            "the redirect's state does not match this login (a stale or forged redirect); "
            "nothing was stored. Run login again."
        )
    if "error" in query:
        error = query["error"][0]
        desc = query.get("error_description", [""])[0]
        if error == "access_denied":
            raise LoginError(f"sign-in was denied at the provider{': ' + desc if desc else ''}")
        raise LoginError(f"the provider answered {error}{': ' + desc if desc else ''}")
    code = query.get("code", [""])[0]
    if not code:
        raise LoginError("the redirect holds no authorization code")
    return code


def _open_browser(url: str) -> None:
    with contextlib.suppress(webbrowser.Error):  # no browser here: the URL is printed
        webbrowser.get().open(url)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- device grant ----------------------------------------------------------------------------


def device_flow(
    grant: _OAuthGrant,
    *,
    timeout: float,
    out: Out,
    sleep: Callable[[float], None] = time.sleep,
) -> Token:
    cfg = grant.cfg
    url = grant.endpoints().device_authorization_url
    if url is None:
        raise LoginError(f"credential {grant.name!r}: the provider names no device endpoint")
    auth, body = _plain_client_auth(grant)
    if cfg.scopes:
        body["scope"] = " ".join(cfg.scopes)
    with requests.Session() as http:
        http.trust_env = False
        http.max_redirects = 0
        r = _post(http, grant, url, body, auth)
        if r.status_code != 200:
            raise LoginError(f"the device authorization request failed: {_error_text(r)}")
        start = r.json()
        device_code, user_code = start["device_code"], start["user_code"]
        interval = float(start.get("interval") or 5)
        deadline = time.monotonic() + min(timeout, float(start.get("expires_in") or timeout))
        out(f"To sign in to {grant.name!r}, open {start['verification_uri']}")
        out(f"and enter the code:  {user_code}")
        if start.get("verification_uri_complete"):
            out(f"(or open {start['verification_uri_complete']})")
        token_url = grant.endpoints().token_url or ""
        while True:
            if time.monotonic() + interval > deadline:
                raise LoginError(
                    "the code expired before the sign-in was approved; run login again"
                )
            sleep(interval)  # RFC 8628 §3.5: wait `interval` between polls
            poll = {"grant_type": DEVICE_GRANT, "device_code": device_code, **body}
            poll.pop("scope", None)
            started = time.time()
            r = _post(http, grant, token_url, poll, auth)
            if r.status_code == 200:
                return _to_token(r.json(), started, cfg.policy.default_lifetime)
            error = _error_code(r)
            if error == "authorization_pending":
                continue
            if error == "slow_down":
                interval += 5  # RFC 8628 §3.5
                out(f"(the provider asked to poll more slowly: every {interval:g}s)")
                continue
            if error == "expired_token":
                raise LoginError(
                    "the code expired before the sign-in was approved; run login again"
                )
            if error == "access_denied":
                raise LoginError("sign-in was denied at the provider")
            if r.status_code >= 500:
                continue  # a passing fault; the deadline bounds how long we keep trying
            raise LoginError(f"the provider refused the device sign-in: {_error_text(r)}")


def _plain_client_auth(grant: _OAuthGrant) -> tuple[tuple[str, str] | None, dict[str, str]]:
    cfg = grant.cfg
    if cfg.client_auth == "basic" and cfg.client_secret:
        from urllib.parse import quote_plus

        return (quote_plus(cfg.client_id or ""), quote_plus(cfg.client_secret)), {}
    body = {"client_id": cfg.client_id or ""}
    if cfg.client_secret:
        body["client_secret"] = cfg.client_secret
    return None, body


def _post(
    http: requests.Session,
    grant: _OAuthGrant,
    url: str,
    body: dict[str, str],
    auth: tuple[str, str] | None,
) -> requests.Response:
    try:
        return http.post(
            url,
            data=body,
            auth=auth,
            headers={"Accept": "application/json"},
            timeout=grant.cfg.policy.idp_timeout,
            verify=grant.verify,
        )
    except requests.RequestException as e:
        raise LoginError(f"cannot reach the provider at {url}: {type(e).__name__}") from None


def _error_code(r: requests.Response) -> str:
    try:
        return str(r.json().get("error", ""))
    except ValueError:
        return ""


def _error_text(r: requests.Response) -> str:
    try:
        data = r.json()
        return f"{data.get('error')}: {data.get('error_description', '')}".rstrip(": ")
    except ValueError:
        return f"HTTP {r.status_code}"


# --- logout ------------------------------------------------------------------------------------


def revoke(grant: _OAuthGrant, token: Token) -> str:
    """Revoke at the provider (RFC 7009) when it offers it; says what happened."""
    try:
        url = grant.endpoints().revocation_url
    except GrantError as e:
        return f"not revoked at the provider ({e})"
    if url is None:
        return "the provider offers no revocation endpoint; the tokens were only deleted here"
    auth, body = _plain_client_auth(grant)
    pairs = [(token.refresh_token, "refresh_token"), (token.access_token, "access_token")]
    with requests.Session() as http:
        http.trust_env = False
        http.max_redirects = 0
        for value, hint in pairs:
            if not value:
                continue
            r = _post(http, grant, url, {**body, "token": value, "token_type_hint": hint}, auth)
            if r.status_code != 200:
                return f"revocation at the provider failed: {_error_text(r)}"
    return "revoked at the provider"
