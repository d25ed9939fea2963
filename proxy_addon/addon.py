"""The mitmproxy addon: routes requests, injects tokens, retries once on 401, redacts.

Loaded by `authproxy run`, or directly: `mitmdump -s proxy_addon/addon.py --set
authproxy_config=FILE`. Imports are absolute because mitmproxy loads a script by path.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal, NamedTuple

from mitmproxy import connection, ctx, exceptions, http, tls
from mitmproxy.addonmanager import Loader
from mitmproxy.utils import human

from proxy_addon import compat, present, replies
from proxy_addon.audit import Audit, strip_query_values
from proxy_addon.cache import CredentialCache
from proxy_addon.compat import Replayer
from proxy_addon.config import ConfigError, load_config
from proxy_addon.decision import decide, plain_route
from proxy_addon.dpop import NonceCache, nonce_asked, resource_proof
from proxy_addon.errors import TokenUnavailable
from proxy_addon.guards import unsafe_options
from proxy_addon.headerscan import has, header, names, put
from proxy_addon.health import HealthProbe, health_path
from proxy_addon.instrument import instrument
from proxy_addon.localguard import LocalGuard
from proxy_addon.metrics import Metrics
from proxy_addon.mtls import cert_routes, check_route_certs, client_cert_for, present_client_cert
from proxy_addon.present import REDACTED_PROOF, Presented, presented
from proxy_addon.redact import (
    Pairs,
    StreamScrubber,
    redacted_token,
    scrub_echoes,
    scrub_head,
    scrub_message,
)
from proxy_addon.retry import retry_decision
from proxy_addon.routes import Route
from proxy_addon.runtime import Runtime
from proxy_addon.shutdown import InFlight
from proxy_addon.status import CredentialView
from proxy_addon.statusaddon import StatusPage
from proxy_addon.store import StoreError
from proxy_addon.tokens import Token

__all__ = ["AuthProxy", "Injection", "Resend"]

logger = logging.getLogger("authproxy")

META = "authproxy"  # flow.metadata key: non-secret facts only, since metadata is saved with flows


class Injection(NamedTuple):
    """What the proxy did to one flow. A NamedTuple, not a dataclass: dataclasses fail in a
    module mitmproxy loads by path."""

    route: Route
    cache: CredentialCache
    token: Token
    attempt: int  # 1: the client's request; 2: the proxy's re-send after a 401
    request_streamed: bool
    refreshed: bool  # this request waited for a new token
    upgrade: bool  # a protocol upgrade (WebSocket): never re-sent
    shown: Presented  # the token as the route presents it, and its redacted mark
    proof: str | None = None  # the DPoP proof that went with the token (RFC 9449)
    nonce_retried: bool = False  # this is the re-send with the nonce the API asked for

    @property
    def mark(self) -> str:
        """What replaces the token wherever it must not be seen."""
        return self.shown.mark

    @property
    def dpop(self) -> bool:
        return self.proof is not None

    @property
    def also(self) -> Pairs:
        """Scrubbed from answers besides the token: the proof (bound to this request, but a
        replayable credential until it expires, and kept out of sight like the token)."""
        return ((self.proof, REDACTED_PROOF),) if self.proof is not None else ()


class Resend(NamedTuple):
    """A copy of a flow the proxy sends itself: a 401 retry, or a web UI replay."""

    kind: Literal["retry", "replay", "nonce"]
    of: str  # the original flow's id
    attempt: int


Pending = Awaitable[None] | None  # what a hook returns: None when it finished at once


def _fail_closed[F: Callable[..., Any]](hook: F) -> F:
    """Hooks never raise into mitmproxy: an unexpected error is logged, and a flow that has
    not been answered yet gets a 502 instead of going on (or hanging).

    A hook does its work synchronously when it can and returns None (issue 11: a coroutine per
    hook and request is measurable); when it must wait (a token refresh, a re-send), it returns
    an awaitable, which mitmproxy awaits. Either way, errors end here."""

    @functools.wraps(hook)
    def guarded(self: AuthProxy, flow: http.HTTPFlow, *args: Any) -> Pending:
        try:
            pending = hook(self, flow, *args)
        except Exception:
            self._failed(hook.__name__, flow)
            return None
        return None if pending is None else _finish_guarded(self, hook.__name__, flow, pending)

    return guarded  # type: ignore[return-value]


async def _then(pending: Awaitable[None], after: Callable[[], None]) -> None:
    """Await `pending`, then `after()` whatever happened (a hook that had to wait)."""
    try:
        await pending
    finally:
        after()


async def _finish_guarded(
    addon: AuthProxy, name: str, flow: http.HTTPFlow, pending: Awaitable[None]
) -> None:
    try:
        await pending
    except Exception:
        addon._failed(name, flow)


class AuthProxy:
    def __init__(
        self, replay: Replayer = compat.replay, *, guard: LocalGuard | None = None
    ) -> None:
        """`guard`: the peer check (`authproxy run`, the script's `addons`), run as one of our
        parts (see `parts`)."""
        self.runtime: Runtime | None = None
        self.inflight = InFlight()  # for a graceful stop (shutdown.py)
        # Flows carrying a live token, so every exit path (response, error, shutdown) can
        # redact it. Weak: a flow that is gone holds nothing.
        self._injected: weakref.WeakKeyDictionary[http.HTTPFlow, Injection] = (
            weakref.WeakKeyDictionary()
        )
        # Upgraded flows that got a token, kept after redaction: their WebSocket messages are
        # still scrubbed of it.
        self._sent: weakref.WeakKeyDictionary[http.HTTPFlow, Injection] = (
            weakref.WeakKeyDictionary()
        )
        # The proxy's own copies, so their hooks know what they are (never string metadata).
        self._resends: weakref.WeakKeyDictionary[http.HTTPFlow, Resend] = (
            weakref.WeakKeyDictionary()
        )
        # stream_large_bodies as last read, and in bytes: parsed again only when it changes.
        self._stream_option: str | None = None
        self._stream_bytes: int | None = None
        self.replay = replay  # the seam: mitmproxy's ReplayHandler, guarded; a fake in tests
        self._dpop_nonces = NonceCache()  # the last DPoP nonce each API origin gave
        self._cert_routes: tuple[Route, ...] = ()  # routes with a client certificate (mTLS)
        # route index -> the token as that route presents it, encoded once per token
        self._shown: dict[int, Presented] = {}
        self.metrics = Metrics()
        self.health = HealthProbe()
        self.status_page = StatusPage(lambda: self.runtime, lambda: self.metrics)
        self.audit = Audit(lambda: self.runtime.config.audit_log if self.runtime else None)
        # Small addons of their own, whose lifecycle hooks we call: as mitmproxy children
        # (`self.addons`), mitmproxy would walk them on every hook of every request, and an addon
        # in its chain costs more per request than all of authproxy's own work (issue 11).
        self.parts: tuple[Any, ...] = (self.status_page, self.audit, *([guard] if guard else []))
        # Called with each flow once its token is redacted (the web UI adds it to its view then).
        self.on_redacted: Callable[[http.HTTPFlow], None] | None = None
        # Whether the web UI shows a flow already (a replay started from it).
        self.visible: Callable[[http.HTTPFlow], bool] | None = None
        self._closing: list[threading.Thread] = []  # replaced runtimes, draining (install)

    # --- options ----------------------------------------------------------------------------

    def load(self, loader: Loader) -> None:
        compat.mark_request_forms()  # the status page answers only absolute-form requests
        compat.install_body_discard()  # an answer before a streamed body: see _answer
        self._guard_view()
        loader.add_option(
            "authproxy_config", str | None, None,  # type: ignore[arg-type]  # mitmproxy takes unions
            "Path of the authproxy YAML configuration.",
        )
        self._parts_hook("load", loader)

    def _parts_hook(self, name: str, *args: Any) -> None:
        """A lifecycle hook of our parts, after ours (mitmproxy's order for children). Each
        runs even when one before it fails, as mitmproxy runs each addon's; the first option
        error is raised once all have run, any other error is logged."""
        refused: exceptions.OptionsError | None = None
        for part in self.parts:
            hook = getattr(part, name, None)
            if hook is None:
                continue
            try:
                result = hook(*args)
                if inspect.iscoroutine(result):  # never dropped unawaited: a peer check, say
                    result.close()
                    raise TypeError(f"{type(part).__name__}.{name} must be synchronous")
            except exceptions.OptionsError as e:
                refused = refused or e
            except Exception:
                logger.exception("authproxy: %s of %s failed", name, type(part).__name__)
        if refused is not None:
            raise refused

    def configure(self, updated: set[str]) -> None:
        try:
            self._configure(updated)
        finally:  # the peer check's file modes, the audit log: whatever our own config says
            self._parts_hook("configure", updated)

    def _configure(self, updated: set[str]) -> None:
        if "authproxy_config" in updated:
            self._load(ctx.options.authproxy_config)
        if self.runtime is None or not self.runtime.config.credentials:
            return
        if problem := unsafe_options(ctx.options):
            raise exceptions.OptionsError(problem)
        bundle = self.runtime.ca_bundle
        if bundle and ctx.options.ssl_verify_upstream_trusted_ca != bundle:
            ctx.options.update(ssl_verify_upstream_trusted_ca=bundle)

    def _load(self, path: str | None) -> None:
        runtime = None
        if path:
            try:
                runtime = Runtime.build(load_config(Path(path)))
            except (ConfigError, StoreError) as e:
                raise exceptions.OptionsError(str(e)) from None
            try:
                check_route_certs(runtime.config.routes)
            except ValueError as e:
                runtime.close()
                raise exceptions.OptionsError(f"{path}: {e}") from None
        self.install(runtime, path)

    def install(self, runtime: Runtime | None, path: str | None) -> None:
        """Serve with `runtime` from now on (start, option change, reload.py). The old one
        drains its refreshes in flight and closes in a thread: traffic never waits for it."""
        if runtime is not None:
            instrument(runtime, self.metrics)
            logger.info(
                "authproxy: %d credential(s), %d route(s) from %s",
                len(runtime.caches),
                len(runtime.config.routes),
                path,
            )
        old, self.runtime = self.runtime, runtime
        self._shown.clear()  # tokens presented by routes that may be gone
        self._cert_routes = cert_routes(runtime.config.routes) if runtime else ()
        if old is not None:
            closer = threading.Thread(target=old.close, name="authproxy-close-old-config")
            closer.start()
            self._closing = [t for t in self._closing if t.is_alive()] + [closer]

    def _secrets(self) -> list[str]:
        return self.runtime.config.secrets() if self.runtime else []

    def carries_token(self, flow: http.HTTPFlow) -> bool:
        """Whether the flow holds a live, unredacted token right now."""
        return flow in self._injected

    def done(self) -> None:
        try:
            # mitmproxy's Save writes flows still in flight at shutdown; redact them first.
            for flow in list(self._injected.keys()):
                self._redact(flow)
            if self.runtime is not None:
                self.runtime.close()
            for closer in self._closing:  # a config replaced by a reload: let it commit, too
                closer.join()
        finally:
            self._parts_hook("done")

    # --- connections ------------------------------------------------------------------------

    def running(self) -> None:
        try:
            self._guard_view()
        finally:
            self._parts_hook("running")

    def client_connected(self, client: connection.Client) -> None:
        self._parts_hook("client_connected", client)  # the peer check, the worker's count

    def _guard_view(self) -> None:
        """Under a master with a flow view (mitmweb, mitmproxy's console, `authproxy run
        --web`), keep flows out of the view while they carry a live token: the view pushes every
        change of a flow to its UI."""
        master = getattr(ctx, "master", None)
        view = master.addons.get("view") if master is not None else None
        if view is not None and self.on_redacted is None:
            self.on_redacted, self.visible = compat.hide_in_flight(view, self.carries_token)

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        """Intercept TLS only where a route may apply; pass everything else through untouched."""
        rt = self.runtime
        if rt is None:
            return
        address = data.context.server.address
        if address is None or not rt.config.routes.intercepts(address[0], address[1]):
            data.ignore_connection = True

    def tls_start_server(self, data: tls.TlsData) -> None:
        """Mutual TLS to an API: the route's client certificate on this connection only."""
        address = data.conn.address if isinstance(data.conn, connection.Server) else None
        if not self._cert_routes or address is None or data.is_dtls:
            return
        pair = client_cert_for(self._cert_routes, address[0], address[1])
        if pair is None:
            return
        try:
            present_client_cert(compat.server_tls(data), *pair)
        except Exception as e:  # the API then sees no certificate and refuses a bound token
            logger.error("%s:%d: cannot use the route's client certificate: %s",
                         address[0], address[1], type(e).__name__)  # fmt: skip

    def http_connect(self, flow: http.HTTPFlow) -> None:
        _forget_proxy_password(flow)

    # --- requests ---------------------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> Pending:
        self.inflight.begin(flow)
        return self._requestheaders(flow)

    @_fail_closed
    def _requestheaders(self, flow: http.HTTPFlow) -> Pending:
        # Headers may go upstream right after this hook when the body is streamed, so the token
        # goes in here, not in `request`.
        _forget_proxy_password(flow)
        rt = self.runtime
        if rt is None or flow.response or flow.error:
            return None
        resend = self._resends.get(flow) if flow.is_replay else None  # ours are replays
        if resend is None and (self.visible is None or not self.visible(flow)):
            # Nearly every request: plain, with a token at hand. Done without waiting.
            route = plain_route(flow, rt.config.routes)
            if route is not None:
                cache = rt.caches[route.credential]
                token = cache.ready()
                if token is not None and token.token_type.lower() != "dpop":
                    self._put_token(flow, route, cache, token, None, refreshed=False)
                    return None
        return self._decide(flow, rt, resend)

    async def _decide(self, flow: http.HTTPFlow, rt: Runtime, resend: Resend | None) -> None:
        decision = decide(flow, rt.config.routes, resent=resend is not None)
        if decision.action == "status":
            if health_path(flow.request.path):  # /healthz, /readyz: for orchestrators
                answer = await self.health.answer(flow.request.path, rt.store, self.metrics,
                                                  head=flow.request.method == "HEAD")  # fmt: skip
                self._answer(flow, answer)
                return
            self._answer(flow, await self.status_page.answer(flow.request.path))
            return
        if decision.action == "refuse":
            assert decision.answer is not None
            self._refuse(flow, decision.route, decision.answer)
            return
        route = decision.route
        if route is None:
            return
        if not (flow.request.is_http2 or flow.request.is_http3):
            # The request line goes upstream in origin form: a server that routes by an
            # absolute-form target (RFC 9112 3.2.2) must see nothing but the routed host.
            flow.request.authority = ""
        if decision.action == "pass":
            return
        await self._inject(flow, route, resend)

    async def _inject(self, flow: http.HTTPFlow, route: Route, resend: Resend | None) -> None:
        req = flow.request
        assert self.runtime is not None
        cache = self.runtime.caches[route.credential]
        refreshes = cache.refreshes
        try:
            token = await cache.token()
        except TokenUnavailable as e:
            logger.warning("%s %s: no token for %s: %s", req.method, req.host, e.credential, e)
            self.metrics.inc("token_failures", route.credential)
            self._refuse(flow, route, replies.token_unavailable(e, self._secrets()))
            return
        except Exception:  # fail closed: never forward a routed request without its token
            logger.exception("credential %s: unexpected error getting a token", route.credential)
            self.metrics.inc("token_failures", route.credential)
            unexpected = TokenUnavailable(route.credential, "internal_error", "see the proxy log")
            self._refuse(flow, route, replies.token_unavailable(unexpected))
            return
        if resend is None and self.visible is not None and self.visible(flow):
            # A flow the web UI already shows (replayed from it): the live token goes into an
            # unseen copy, and this flow only gets the copy's answer.
            flow.response = await self._send_copy(flow, route, Resend("replay", flow.id, 1))
            return
        self._put_token(flow, route, cache, token, resend, refreshed=cache.refreshes != refreshes)

    def _put_token(
        self,
        flow: http.HTTPFlow,
        route: Route,
        cache: CredentialCache,
        token: Token,
        resend: Resend | None,
        *,
        refreshed: bool,
    ) -> None:
        req = flow.request
        # Absent from nearly every request: one pass over the names instead of a failed lookup
        # (mitmproxy's raises and catches a KeyError) for each.
        present_names = names(req.headers)
        if b"\0proxy-authorization\0" in present_names:  # our password is not for the API
            del req.headers["proxy-authorization"]
        upgrade = False
        if b"\0upgrade\0" in present_names:
            # Any switch but WebSocket (h2c, raw TCP) would carry the API's bytes past every
            # scrub.
            if req.headers.get("upgrade", "").strip().lower() not in ("", "websocket"):
                _drop_upgrade(req)
            upgrade = "upgrade" in req.headers
        shown = self._presented(route, token)
        present.apply(req, shown)
        proof = None
        if token.token_type.lower() == "dpop":  # else req.url need not be built
            proof = resource_proof(
                cache.grant, token.token_type, token.access_token, req.method, req.url,
                self._dpop_nonces,
            )  # fmt: skip
            if proof is not None:
                put(req.headers, b"dpop", proof)
        attempt = resend.attempt if resend is not None else 1
        inj = Injection(
            route, cache, token, attempt=attempt,
            request_streamed=bool(req.stream) and attempt == 1,
            refreshed=refreshed,
            upgrade=upgrade,
            shown=shown,
            proof=proof,
            nonce_retried=resend is not None and resend.kind == "nonce",
        )  # fmt: skip
        self._injected[flow] = inj
        if inj.upgrade:  # kept for its WebSocket messages, which are scrubbed too
            self._sent[flow] = inj
        self.metrics.inc("injected", route.credential)
        flow.metadata[META] = {"credential": route.credential, "route": route.index}
        if resend is not None:
            flow.metadata[META][f"{resend.kind}_of"] = resend.of

    def _presented(self, route: Route, token: Token) -> Presented:
        """The token as `route` presents it, with its redacted mark (a hash of it): computed
        once per token, not per request."""
        known = self._shown.get(route.index)
        # `is`: a reload may give the index another route; its token or presentation differ.
        if known is not None and known.token is token and known.how is route.present:
            return known
        shown = presented(token, route.present, redacted_token(route.credential, token))
        self._shown[route.index] = shown
        return shown

    def _answer(self, flow: http.HTTPFlow, response: http.Response) -> None:
        """Answer the client instead of forwarding. A body still to come (requestheaders) is
        read and dropped, then the answer goes back: streamed, it would go upstream without a
        token, and mitmproxy cannot answer a request whose body it streams. Killing such an
        upload instead can leave the client waiting: mitmproxy 12 may cancel the connection's
        reader while it waits for its event lock, and then never closes the socket. A body
        already streamed upstream (a later hook) cannot be answered: that flow is killed."""
        req = flow.request
        if req.timestamp_end is None:  # the body is still to come
            if req.stream:
                logger.info("%s %s: answered %d %s before its streamed body, which is read and "
                            "dropped", req.method, req.host, response.status_code,
                            response.headers.get(replies.ERROR_HEADER, ""))  # fmt: skip
            compat.discard_request_body(flow)
            req.stream = False
        elif req.stream:
            logger.warning("%s %s: answered %d %s; its body is streamed, so the connection is "
                           "closed instead", req.method, req.host, response.status_code,
                           response.headers.get(replies.ERROR_HEADER, ""))  # fmt: skip
            req.stream = False
            flow.response = response
            flow.kill()
            return
        flow.response = response

    def _stream_limit(self) -> int | None:
        """stream_large_bodies in bytes (None: off); the hooks ask for every answer, so the
        option is parsed only when its text changes."""
        option = getattr(ctx.options, "stream_large_bodies", None)
        if option != self._stream_option:
            self._stream_option, self._stream_bytes = option, human.parse_size(option)
        return self._stream_bytes

    def _refuse(self, flow: http.HTTPFlow, route: Route | None, response: http.Response) -> None:
        if response.status_code != 502 and route is not None:
            self.metrics.inc("refused", route.credential)
        self._answer(flow, response)
        flow.metadata.setdefault(META, {})["error"] = response.headers.get(replies.ERROR_HEADER)
        if route is not None:
            self._audit(flow, route)

    def _failed(self, hook: str, flow: http.HTTPFlow) -> None:
        logger.exception("authproxy: %s failed on %s %s", hook, flow.request.method,
                         flow.request.host)  # fmt: skip
        self._fail(flow)

    def _fail(self, flow: http.HTTPFlow) -> None:
        """The last resort of a hook that failed: redact, and answer 502 if nothing was sent."""
        inj = self._injected.get(flow)
        try:
            self._redact(flow)
        except Exception:
            logger.exception("authproxy: redacting failed")
            flow.request.headers.pop("authorization", None)
            self._injected.pop(flow, None)
        if flow.live and not flow.error:
            answer = replies.internal_error(inj.route.credential if inj else None)
            if flow.response is None:
                self._answer(flow, answer)
            else:
                flow.response = answer
            flow.metadata.setdefault(META, {})["error"] = "internal_error"

    async def credential_views(self) -> list[CredentialView]:
        return await self.status_page.credential_views()

    # --- responses --------------------------------------------------------------------------

    @_fail_closed
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """A streamed answer leaves right after this hook: scrub its head now, and its body
        as it passes."""
        _forget_proxy_password(flow)
        inj = self._injected.get(flow)
        resp = flow.response
        if inj is None or resp is None:
            return
        _drop_error_header(resp)  # only the proxy speaks with this header
        secret, mark = inj.token.access_token, inj.mark
        scrub_head(resp, secret, mark, also=inj.also)
        if not (resp.stream or self._body_may_stream_response(resp)):
            return
        encoding = header(resp.headers, b"content-encoding") or ""
        if encoding.strip(" ,").lower() in ("", "identity"):
            resp.stream = StreamScrubber(secret, mark, also=inj.also)
            return
        # An encoded stream cannot be checked chunk by chunk: withhold it.
        logger.warning("%s %s: streamed answer with Content-Encoding %r withheld: it cannot be "
                       "checked for an echoed token", flow.request.method, flow.request.host,
                       resp.headers.get("content-encoding"))  # fmt: skip
        answer = replies.unscannable_response(inj.route)
        resp.status_code, resp.reason = answer.status_code, answer.reason
        resp.headers = answer.headers
        resp.stream = _Withhold(answer.raw_content or b"")
        flow.metadata.setdefault(META, {})["error"] = "unscannable_response"

    def _body_may_stream_response(self, resp: http.Response) -> bool:
        """mitmproxy may switch to streaming late, once an answer of unknown length grows past
        stream_large_bodies, and then no hook runs before the body leaves: stream such
        answers through the scrubber from the start."""
        if has(resp.headers, b"content-length"):
            return False
        return self._stream_limit() is not None

    def response(self, flow: http.HTTPFlow) -> Pending:
        pending = self._response(flow)
        if pending is None:
            self.inflight.end(flow)
            return None
        return _then(pending, lambda: self.inflight.end(flow))

    @_fail_closed
    def _response(self, flow: http.HTTPFlow) -> Pending:
        _forget_proxy_password(flow)
        inj = self._injected.get(flow)
        if inj is None or flow.response is None:
            return None
        try:
            pending = self._answered(flow, inj)
        except BaseException:
            self._done_with(flow, inj)
            raise
        if pending is None:  # nearly every answer: nothing to wait for
            self._done_with(flow, inj)
            return None
        return _then(pending, lambda: self._done_with(flow, inj))

    def _done_with(self, flow: http.HTTPFlow, inj: Injection) -> None:
        self._redact(flow)
        if inj.attempt == 1:
            self._audit(flow, inj.route, refreshed=inj.refreshed)

    def _answered(self, flow: http.HTTPFlow, inj: Injection) -> Awaitable[None] | None:
        """Check the API's answer; an awaitable when it must be re-sent (a 401, a DPoP nonce)."""
        resp = flow.response
        assert resp is not None
        if not resp.stream:  # a streamed answer's head was handled in responseheaders
            _drop_error_header(resp)  # only the proxy speaks with it
        if not scrub_echoes(resp, inj.token, inj.mark, also=inj.also):
            logger.warning("%s %s: answer with Content-Encoding %r withheld: it cannot be "
                           "checked for an echoed token", flow.request.method, flow.request.host,
                           resp.headers.get("content-encoding"))  # fmt: skip
            flow.response = replies.unscannable_response(inj.route)
            flow.metadata.setdefault(META, {})["error"] = "unscannable_response"
            return None
        if resp.status_code == 101 and flow.websocket is None:
            logger.warning("%s %s: the API switched to a protocol other than WebSocket; "
                           "refused, since its bytes could not be checked for an echoed token",
                           flow.request.method, flow.request.host)  # fmt: skip
            flow.response = replies.unscannable_response(inj.route)
            flow.metadata.setdefault(META, {})["error"] = "unscannable_response"
            return None
        if resp.status_code != 401 and not inj.dpop:  # nothing to re-send
            return None
        return self._resend_if_refused(flow, inj, resp)

    async def _resend_if_refused(
        self, flow: http.HTTPFlow, inj: Injection, resp: http.Response
    ) -> None:
        if inj.dpop and await self._dpop_nonce_retry(flow, inj, resp):
            return
        retry, refresh, why = self._retry_plan(inj, resp)
        if resp.status_code == 401:
            logger.info(
                "%s %s%s answered 401 (credential %s): %s",
                flow.request.method,
                flow.request.host,
                flow.request.path.split("?")[0],
                inj.route.credential,
                "retrying once" if retry else f"not retried, {why}",
            )
        if refresh:
            try:
                await inj.cache.replace_rejected(inj.token)
            except TokenUnavailable as e:
                self.metrics.inc("token_failures", inj.route.credential)
                if retry:
                    flow.response = replies.token_unavailable(e, self._secrets())
                    flow.metadata.setdefault(META, {})["error"] = "token_unavailable"
                return
        if retry:
            self.metrics.inc("retried", inj.route.credential)
            flow.metadata.setdefault(META, {})["retried"] = True
            flow.response = await self._send_copy(
                flow, inj.route, Resend("retry", flow.id, inj.attempt + 1)
            )

    async def _dpop_nonce_retry(
        self, flow: http.HTTPFlow, inj: Injection, resp: http.Response
    ) -> bool:
        """RFC 9449 §9: keep the nonce an API gives; when it refuses a proof for want of one,
        send the request once more with it. Apart from the 401-refresh retry: no new token."""
        if has(resp.headers, b"dpop-nonce"):  # else the URL need not be built
            self._dpop_nonces.learn(flow.request.url, resp.headers)
        if inj.nonce_retried or inj.upgrade or inj.request_streamed or resp.stream:
            return False
        if nonce_asked(resp.status_code, resp.headers) is None:
            return False
        flow.metadata.setdefault(META, {})["dpop_nonce_retried"] = True
        flow.response = await self._send_copy(
            flow, inj.route, Resend("nonce", flow.id, inj.attempt)
        )
        return True

    @staticmethod
    def _retry_plan(inj: Injection, resp: http.Response) -> tuple[bool, bool, str]:
        """The retry-once rule, in one place: (re-send?, get a new token?, why). A 401 earns
        one new token and one re-send of the client's request; an upgrade (WebSocket) gets the
        new token for its next handshake but is not re-sent (its 401 goes back)."""
        if resp.status_code != 401:  # nearly every answer: nothing to decide
            return False, False, "not a 401"
        retry, why = retry_decision(
            status=resp.status_code,
            www_authenticate=resp.headers.get("www-authenticate"),
            already_retried=inj.attempt > 1,
            refreshable=inj.cache.grant.refreshable,
            request_streamed=inj.request_streamed,
            response_streamed=bool(resp.stream),
        )
        if retry and inj.upgrade:
            return False, True, "an upgrade is not re-sent; the next handshake gets a new token"
        return retry, retry, why

    async def _send_copy(self, flow: http.HTTPFlow, route: Route, resend: Resend) -> http.Response:
        """Send a copy of the request through mitmproxy's own upstream machinery (connection,
        TLS, certificate checks) and return its answer. The copy runs through every addon
        again, ours included, which injects the current token into it. The copy shares the
        original's body (bytes are never copied)."""
        copy = flow.copy()
        copy.is_replay = "request"
        copy.response = None
        copy.error = None
        present.strip(copy.request, route.present)  # never carry an old token along
        copy.metadata.pop(META, None)
        self._resends[copy] = resend
        try:
            await self.replay(copy)
        except Exception:  # the seam promises not to raise; fail closed if one does
            logger.exception("re-sending %s %s failed", flow.request.method, flow.request.host)
        finally:
            if copy in self._injected:  # never left holding a live token
                self._redact(copy)
        if copy.response is not None:
            return copy.response
        return replies.retry_failed(route, copy.error.msg if copy.error else "no response")

    def error(self, flow: http.HTTPFlow) -> None:
        self._error(flow)
        self.inflight.end(flow)

    @_fail_closed
    def _error(self, flow: http.HTTPFlow) -> None:
        _forget_proxy_password(flow)
        inj = self._injected.get(flow)
        self._redact(flow)
        if inj is not None and inj.attempt == 1:
            self._audit(flow, inj.route, refreshed=inj.refreshed)

    @_fail_closed
    def websocket_message(self, flow: http.HTTPFlow) -> None:
        """An API that echoes the token over a WebSocket: scrub what the server sends."""
        inj = self._sent.get(flow)
        if inj is None or flow.websocket is None or not flow.websocket.messages:
            return
        message = flow.websocket.messages[-1]
        if not message.from_client:
            mark = inj.mark
            message.content = scrub_message(message.content, inj.token.access_token, mark,
                                            also=inj.also)  # fmt: skip

    def _redact(self, flow: http.HTTPFlow) -> None:
        inj = self._injected.pop(flow, None)
        if inj is not None:
            present.redact(flow.request, inj.shown)
            if self.on_redacted is not None:
                self.on_redacted(flow)

    def _audit(self, flow: http.HTTPFlow, route: Route, *, refreshed: bool = False) -> None:
        req, resp = flow.request, flow.response
        end = (resp.timestamp_end if resp and resp.timestamp_end else None) or time.time()
        self.metrics.observe_request(route.credential, end - req.timestamp_start)
        if self.audit.log is None:
            return
        retried = bool(flow.metadata.get(META, {}).get("retried"))
        self.audit.record(
            credential=route.credential,
            route=route.describe(),
            method=req.method,
            host=req.host,
            path=strip_query_values(req.path),
            status=resp.status_code if resp else None,
            error=flow.metadata.get(META, {}).get("error")
            or (flow.error.msg if flow.error else None),
            refreshed=refreshed or retried,
            retried=retried,
            duration_ms=round((end - req.timestamp_start) * 1000, 1),
        )


class _Withhold:
    """A `response.stream` callable that drops the upstream body and sends `body` instead."""

    def __init__(self, body: bytes) -> None:
        self._body: bytes | None = body

    def __call__(self, chunk: bytes) -> bytes:
        out, self._body = self._body or b"", None
        return out


def _drop_upgrade(req: http.Request) -> None:
    del req.headers["upgrade"]
    tokens = [t for t in req.headers.get("connection", "").split(",") if t.strip()]
    kept = [t.strip() for t in tokens if t.strip().lower() not in ("upgrade", "http2-settings")]
    req.headers.pop("http2-settings", None)
    if kept:
        req.headers["connection"] = ", ".join(kept)
    else:
        req.headers.pop("connection", None)


_ERROR_HEADER = replies.ERROR_HEADER.lower().encode()


def _drop_error_header(resp: http.Response) -> None:
    if has(resp.headers, _ERROR_HEADER):
        del resp.headers[replies.ERROR_HEADER]


def _forget_proxy_password(flow: http.HTTPFlow) -> None:
    """mitmproxy's proxyauth keeps (user, password) in the flow's metadata, which flow files
    and the web UI carry: drop it as soon as proxyauth is done with it."""
    flow.metadata.pop("proxyauth", None)


addons = [AuthProxy(guard=LocalGuard())]
