"""`authproxy login`: a person signs in once, and the tokens go to the store.

Authorization code with PKCE (RFC 7636) through a one-shot loopback redirect (RFC 8252), or a
pasted redirect URL for SSH sessions; the device grant (RFC 8628) for headless machines; the
password grant for legacy providers. Every failure is a `LoginError` whose message says what
happened and what to do, never a traceback.

Other users of the machine can see a browser's command line and reach our loopback listener.
So the browser is given a one-time local start URL (`/start/<random>`) that redirects to the
provider: its command line holds neither the state nor the PKCE challenge. The listener ignores
answers whose state is not ours (and keeps waiting) instead of giving up, a second use of the
start URL aborts the sign-in, and the provider's `iss` (RFC 9207) must name our issuer.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import html
import json
import os
import queue
import secrets
import threading
import time
import webbrowser
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from .config import CredentialConfig
from .dpop_keys import attach_dpop_key
from .errors import GrantError
from .grants import Grant, sign_in_for
from .grants.oauth import OAuthGrant
from .idp_http import Answer
from .netutil import free_port
from .peers import endpoint, lookup_works, socket_owner
from .sanitize import clean, safe_code
from .store import StoreError, TokenStore
from .token_answer import parse_token_answer
from .tokens import Token

__all__ = ["LoginError", "code_sign_in", "device_sign_in", "login", "save_token"]

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
CALLBACK_PATH = "/callback"
START_PATH = "/start/"

Out = Callable[[str], None]


class LoginError(Exception):
    """Signing in failed; the message is for the person at the terminal."""


def login(
    grant: Grant,
    store: TokenStore,
    *,
    no_browser: bool = False,
    timeout: float = 300.0,
    out: Out = print,
    read: Callable[[str], str] = input,
) -> Token:
    """Run the sign-in flow the grant registry names for this grant, and store the token."""
    cfg = _config(grant)
    flow = sign_in_for(cfg.grant) if cfg is not None else None
    if flow is None or cfg is None:
        uses = f" uses grant {cfg.grant}, which" if cfg is not None else ""
        raise LoginError(
            f"credential {grant.name!r}{uses} needs no sign-in; its tokens are fetched when needed"
        )
    attach_dpop_key(grant, cfg, store)  # a DPoP sign-in binds its tokens to the stored key
    try:
        token = flow(grant, no_browser=no_browser, timeout=timeout, out=out, read=read)
    except GrantError as e:
        raise LoginError(f"sign-in failed: {e}") from None
    save_token(store, cfg.store_key, token)
    return token


def _config(grant: Grant) -> CredentialConfig | None:
    """The config an OAuth grant was built from; None for a grant without one (static)."""
    inner = getattr(grant, "wrapped", grant)
    return inner.cfg if isinstance(inner, OAuthGrant) else None


def _oauth(grant: Grant) -> OAuthGrant:
    # An instrumented grant (`instrument.TimedGrant`) stands in for the grant it wraps.
    inner = getattr(grant, "wrapped", grant)
    if not isinstance(inner, OAuthGrant):
        raise LoginError(f"credential {grant.name!r}: its grant cannot sign in")
    return inner


def code_sign_in(
    grant: Grant, *, no_browser: bool, timeout: float, out: Out, read: Callable[[str], str]
) -> Token:
    """The authorization_code grant's sign-in (a `grants.base.SignIn`)."""
    return code_flow(_oauth(grant), no_browser=no_browser, timeout=timeout, out=out, read=read)


def device_sign_in(
    grant: Grant, *, no_browser: bool, timeout: float, out: Out, read: Callable[[str], str]
) -> Token:
    """The device_code grant's sign-in (a `grants.base.SignIn`)."""
    return device_flow(_oauth(grant), timeout=timeout, out=out)


def save_token(store: TokenStore, key: str, token: Token) -> None:
    """Replace the stored token, under the credential's lock, so a refresh cannot interleave.

    `key` is the credential's row in the store (CredentialConfig.store_key)."""
    with store.lock(key):
        try:
            record = store.get(key)
        except StoreError as e:
            raise LoginError(f"{e}; nothing was stored") from None
        store.put(key, token, record.version if record else None)


# --- authorization code + PKCE ---------------------------------------------------------------


class _Listener:
    """An HTTP server on 127.0.0.1 for one sign-in: the one-time start URL, and the redirect.

    `wait` returns the path of the first redirect whose state is ours; others are answered
    with a page saying so and ignored."""

    def __init__(self, port: int, state: str) -> None:
        self.events: queue.Queue[tuple[str, str]] = queue.Queue()
        self.start_path = START_PATH + secrets.token_urlsafe(24)
        self.target: str | None = None  # where the start URL redirects: the provider
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                if not listener.same_user(self):
                    listener.events.put(("foreign", ""))
                    _send(self, 403, "This sign-in belongs to another user of this machine.")
                elif path.startswith(START_PATH):
                    listener.start(self)
                elif path == CALLBACK_PATH:
                    listener.callback(self, state)
                else:
                    self.send_error(404)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the query holds the authorization code

        self._started = False
        self._done = False
        self._lock = threading.Lock()
        try:
            self.server = HTTPServer(("127.0.0.1", port), Handler)
        except OSError as e:
            raise LoginError(
                f"cannot listen on 127.0.0.1:{port} for the sign-in redirect ({e.strerror}); "
                "set redirect_port to a free port, or use --no-browser"
            ) from None
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def same_user(self, h: BaseHTTPRequestHandler) -> bool:
        """Is the connecting socket ours? Where the kernel cannot be asked (no /proc, no
        netlink), unknown counts as yes: the state, the one-time link and `iss` still protect
        the sign-in there. Where it can, a socket it does not know (reset or closed by its
        process before the lookup) is not ours."""
        peer = h.client_address
        try:
            owner = socket_owner(endpoint(peer[0], peer[1]), endpoint("127.0.0.1", self.port))
        except ValueError:
            return False  # not an address a loopback client has
        if owner is None:
            return not lookup_works()
        return owner == os.getuid()

    @property
    def start_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.start_path}"

    def start(self, h: BaseHTTPRequestHandler) -> None:
        path = urlsplit(h.path).path
        with self._lock:
            ours = hmac.compare_digest(path.encode(), self.start_path.encode())
            first = ours and not self._started and self.target is not None
            if ours:
                self._started = True
        if first:
            assert self.target is not None
            _send(h, 302, "", {"Location": self.target})
        elif ours:
            self.events.put(("reused", ""))
            _send(
                h,
                409,
                "This sign-in link was already used, so the sign-in was stopped "
                "(if that was not you, someone else may have opened it). See the terminal.",
            )
        else:
            _send(h, 404, "Unknown sign-in link.")

    def callback(self, h: BaseHTTPRequestHandler, state: str) -> None:
        query = parse_qs(urlsplit(h.path).query)
        got = query.get("state", [""])[0]
        with self._lock:
            ours = hmac.compare_digest(got.encode(), state.encode()) and not self._done
            self._done = self._done or ours
        if not ours:
            self.events.put(("ignored", ""))
            _send(
                h, 400, "This answer does not belong to the sign-in waiting here; it was ignored."
            )
            return
        if "code" in query and "error" not in query:
            text = "Signed in. You can close this window and go back to the terminal."
        else:
            error = clean(query.get("error", ["no code"])[0], limit=80)
            text = f"Sign-in did not complete: {error}. See the terminal."
        _send(h, 200, text)
        self.events.put(("callback", h.path))

    def wait(self, timeout: float, out: Out) -> str | None:
        """The path of our redirect, or None when `timeout` passes first."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                kind, value = self.events.get(timeout=remaining)
            except queue.Empty:
                return None
            if kind == "callback":
                return value
            if kind == "reused":
                raise LoginError(
                    "the one-time sign-in link was opened twice, so this sign-in was stopped: "
                    "if that was not you, another user of this machine may be trying to sign "
                    "you in as them. Nothing was stored; run login again."
                )
            if kind == "foreign":
                out("(refused a connection to the sign-in listener from another user)")
                continue
            out("(ignored an answer at the sign-in listener that is not for this sign-in)")
        return None

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _send(
    h: BaseHTTPRequestHandler, status: int, text: str, headers: dict[str, str] | None = None
) -> None:
    body = f"<!doctype html><title>authproxy</title><p>{html.escape(text)}</p>".encode()
    h.send_response(status)
    for name, value in {
        "Content-Type": "text/html; charset=utf-8",
        "Content-Length": str(len(body)),
        "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",
        **(headers or {}),
    }.items():
        h.send_header(name, value)
    h.end_headers()
    h.wfile.write(body)


def _pkce() -> tuple[str, str]:
    """(verifier, S256 challenge), RFC 7636 §4.1-4.2."""
    verifier = secrets.token_urlsafe(64)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _authorization_request(
    grant: OAuthGrant, endpoint: str, redirect_uri: str, state: str, challenge: str
) -> str:
    cfg = grant.cfg
    params = {
        "response_type": "code",
        "client_id": cfg.client_id or "",
        "redirect_uri": redirect_uri,
        **grant.scope_param(),
        "state": state,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        **dict(cfg.authorization_params),
    }
    if grant.dpop_key is not None:  # RFC 9449 §10: the code is bound to the key
        params["dpop_jkt"] = grant.dpop_key.thumbprint
    return f"{endpoint}{'&' if urlsplit(endpoint).query else '?'}{urlencode(params)}"


def code_flow(
    grant: OAuthGrant, *, no_browser: bool, timeout: float, out: Out, read: Callable[[str], str]
) -> Token:
    cfg = grant.cfg
    endpoints = grant.endpoints()
    authorization_url = endpoints.authorization_url
    if authorization_url is None:
        raise LoginError(f"credential {grant.name!r}: the provider names no authorization endpoint")
    state = secrets.token_urlsafe(32)
    verifier, challenge = _pkce()
    listener = None if no_browser else _Listener(cfg.redirect_port, state)
    port = listener.port if listener else (cfg.redirect_port or free_port())
    redirect_uri = f"http://127.0.0.1:{port}{CALLBACK_PATH}"
    try:
        url = _authorization_request(grant, authorization_url, redirect_uri, state, challenge)
        out(f"Sign in to {grant.name!r} by opening this URL in a browser:\n\n  {url}\n")
        if listener is not None:
            listener.target = url
            # The browser gets the local one-time link: its command line is visible to every
            # user of the machine, and must not hold the state or the PKCE challenge.
            _open_browser(listener.start_url)
            out(f"Waiting up to {timeout:.0f}s for the sign-in to finish...")
            path = listener.wait(timeout, out)
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
        code = _code_from_redirect(
            response_url,
            redirect_uri,
            state,
            issuer=cfg.issuer,
            iss_required=endpoints.iss_required,
        )
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
        }
        try:
            return grant.call("authorization code exchange", form, sent=(code, verifier))
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


def _code_from_redirect(
    response_url: str,
    redirect_uri: str,
    state: str,
    *,
    issuer: str | None = None,
    iss_required: bool = False,
) -> str:
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
    _check_iss(query.get("iss", [None])[0], issuer, iss_required)
    if "error" in query:
        error = clean(query["error"][0], limit=80)
        desc = clean(query.get("error_description", [""])[0], limit=200)
        if error == "access_denied":
            raise LoginError(f"sign-in was denied at the provider{': ' + desc if desc else ''}")
        raise LoginError(f"the provider answered {error}{': ' + desc if desc else ''}")
    code = query.get("code", [""])[0]
    if not code:
        raise LoginError("the redirect holds no authorization code")
    return code


def _check_iss(iss: str | None, issuer: str | None, required: bool) -> None:
    """RFC 9207: the answer names the server that gave it; a mix-up shows as another name."""
    if issuer is None:
        return  # no issuer configured: nothing to compare with
    if iss is None:
        if required:
            raise LoginError(
                "the provider says every answer names it (iss, RFC 9207), but this one does "
                "not: it may not come from the provider; nothing was stored. Run login again."
            )
        return
    if iss.rstrip("/") != issuer.rstrip("/"):
        raise LoginError(
            f"the answer names issuer {clean(iss, limit=120)!r}, not {issuer!r} (RFC 9207): it "
            "comes from another server; nothing was stored. Run login again."
        )


def _open_browser(url: str) -> None:
    with contextlib.suppress(webbrowser.Error):  # no browser here: the URL is printed
        webbrowser.get().open(url)


# --- device grant ----------------------------------------------------------------------------


def device_flow(
    grant: OAuthGrant,
    *,
    timeout: float,
    out: Out,
    sleep: Callable[[float], None] = time.sleep,
) -> Token:
    cfg = grant.cfg
    url = grant.endpoints().device_authorization_url
    if url is None:
        raise LoginError(f"credential {grant.name!r}: the provider names no device endpoint")
    r = _post(grant, url, grant.scope_param(), "device authorization request")
    start = _json(r)
    if r.status != 200 or start is None:
        raise LoginError(f"the device authorization request failed: {_error_text(r, grant)}")
    try:
        device_code, user_code = str(start["device_code"]), str(start["user_code"])
        verification_uri = str(start["verification_uri"])
        interval = float(start.get("interval") or 5)
        lifetime = float(start.get("expires_in") or timeout)
    except (KeyError, TypeError, ValueError):
        raise LoginError(
            "the provider's device authorization answer lacks device_code, user_code or "
            "verification_uri"
        ) from None
    interval = min(max(interval, 0.1), 60.0)  # a hostile interval must not spin or stall us
    deadline = time.monotonic() + min(timeout, max(lifetime, 0.0))
    # All of it is shown on the terminal: no escape sequences from the provider.
    out(f"To sign in to {grant.name!r}, open {clean(verification_uri)}")
    out(f"and enter the code:  {clean(user_code, limit=40)}")
    if isinstance(start.get("verification_uri_complete"), str):
        out(f"(or open {clean(start['verification_uri_complete'])})")
    token_url = grant.endpoints().token_url or ""
    while True:
        if time.monotonic() + interval > deadline:
            raise LoginError("the code expired before the sign-in was approved; run login again")
        sleep(interval)  # RFC 8628 §3.5: wait `interval` between polls
        poll = {"grant_type": DEVICE_GRANT, "device_code": device_code}
        started = time.time()
        try:
            r = _post(grant, token_url, poll, "device token request")
        except LoginError:
            continue  # a passing fault; the deadline bounds how long we keep trying
        if r.status == 200 and not _error_code(r):
            try:
                parsed = parse_token_answer(
                    r,
                    what="device token request",
                    obtained_at=started,
                    default_lifetime=cfg.policy.default_lifetime,
                    secrets=(*cfg.secrets(), device_code),
                )
            except GrantError as e:
                raise LoginError(f"sign-in failed: {e}") from None
            return parsed.token
        error = _error_code(r)
        if error == "authorization_pending":
            continue
        if error == "slow_down":
            interval += 5  # RFC 8628 §3.5
            out(f"(the provider asked to poll more slowly: every {interval:g}s)")
            continue
        if error == "expired_token":
            raise LoginError("the code expired before the sign-in was approved; run login again")
        if error == "access_denied":
            raise LoginError("sign-in was denied at the provider")
        if r.status >= 500 or r.status == 429:
            continue  # a passing fault; the deadline bounds how long we keep trying
        raise LoginError(f"the provider refused the device sign-in: {_error_text(r, grant)}")


def _post(grant: OAuthGrant, url: str, form: dict[str, str], what: str) -> Answer:
    """One bounded POST (total deadline, size cap) with the client's authentication (the
    grant's own, as on every token request); unreachable is a LoginError."""
    try:
        return grant.post(url, form, what=what, timeout=grant.cfg.policy.idp_timeout)
    except GrantError as e:
        raise LoginError(f"{e} ({clean(url)})") from None


def _json(r: Answer) -> dict[str, Any] | None:
    try:
        data = json.loads(r.body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _error_code(r: Answer) -> str:
    data = _json(r)
    return safe_code(data.get("error"), "") if data else ""


def _error_text(r: Answer, grant: OAuthGrant) -> str:
    data = _json(r)
    if not data or "error" not in data:
        return f"HTTP {r.status}"
    code = safe_code(data.get("error"))
    desc = data.get("error_description")
    desc = clean(desc, grant.cfg.secrets(), limit=200) if isinstance(desc, str) else ""
    return f"{code}: {desc}" if desc else code


# --- logout ------------------------------------------------------------------------------------


def revoke(grant: Grant, token: Token) -> str:
    """Revoke at the provider (RFC 7009) when it offers it; says what happened."""
    if not isinstance(getattr(grant, "wrapped", grant), OAuthGrant):
        return "its tokens come from the config; nothing to revoke"
    grant = _oauth(grant)
    try:
        url = grant.endpoints().revocation_url
    except GrantError as e:
        return f"not revoked at the provider ({e})"
    if url is None:
        return "the provider offers no revocation endpoint; the tokens were only deleted here"
    pairs = [(token.refresh_token, "refresh_token"), (token.access_token, "access_token")]
    for value, hint in pairs:
        if not value:
            continue
        form = {"token": value, "token_type_hint": hint}
        try:
            r = _post(grant, url, form, "revocation request")
        except LoginError as e:
            return f"not revoked at the provider: {clean(str(e), [value])}"
        if r.status != 200:
            text = clean(_error_text(r, grant), [token.access_token, token.refresh_token])
            return f"revocation at the provider failed: {text}"
    return "revoked at the provider"
