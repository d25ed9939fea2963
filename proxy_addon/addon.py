"""The mitmproxy addon: routes requests, injects tokens, retries once on 401, redacts.

Loaded by `authproxy run`, or directly: `mitmdump -s proxy_addon/addon.py --set
authproxy_config=FILE`. Imports are absolute because mitmproxy loads a script by path.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from mitmproxy import ctx, exceptions, http, tls
from mitmproxy.addonmanager import Loader
from mitmproxy.addons.clientplayback import ReplayHandler

from proxy_addon import replies
from proxy_addon.audit import AuditLog, strip_query_values
from proxy_addon.cache import CredentialCache, TokenUnavailable
from proxy_addon.config import ConfigError, load_config
from proxy_addon.console import console_info
from proxy_addon.guards import request_refusal, unsafe_options
from proxy_addon.instrument import instrument
from proxy_addon.metrics import Metrics
from proxy_addon.redact import redacted_authorization, redacted_token, scrub_echoes
from proxy_addon.retry import retry_decision
from proxy_addon.routes import Route
from proxy_addon.runtime import Runtime
from proxy_addon.status import CredentialView, describe
from proxy_addon.statuspage import STATUS_HOST, status_response
from proxy_addon.store import StoreError
from proxy_addon.tokens import Token

__all__ = ["AuthProxy"]

logger = logging.getLogger("authproxy")

META = "authproxy"  # flow.metadata key: non-secret facts only, since metadata is saved with flows


class Injection(NamedTuple):
    # A NamedTuple, not a dataclass: dataclasses fail in a module mitmproxy loads by path.
    route: Route
    cache: CredentialCache
    token: Token
    request_streamed: bool
    refreshed: bool  # this request waited for a new token


class AuthProxy:
    def __init__(self) -> None:
        self.runtime: Runtime | None = None
        # Flows carrying a live token, so every exit path (response, error, shutdown) can
        # redact it. Weak: a flow that is gone holds nothing.
        self._injected: weakref.WeakKeyDictionary[http.HTTPFlow, Injection] = (
            weakref.WeakKeyDictionary()
        )
        self.metrics = Metrics()
        self.audit: AuditLog | None = None
        # Called with each flow once its token is redacted (the web UI adds it to its view then).
        self.on_redacted: Callable[[http.HTTPFlow], None] | None = None
        # Whether the web UI shows a flow already (a replay started from it).
        self.visible: Callable[[http.HTTPFlow], bool] | None = None

    # --- options ----------------------------------------------------------------------------

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "authproxy_config", str | None, None, "Path of the authproxy YAML configuration."
        )
        loader.add_option(
            "authproxy_audit_log", str | None, None,
            "Append one JSON line per authenticated API call to this file (overrides the "
            "config's audit_log).",
        )  # fmt: skip

    def configure(self, updated: set[str]) -> None:
        if "authproxy_config" in updated:
            self._load(ctx.options.authproxy_config)
        if "authproxy_config" in updated or "authproxy_audit_log" in updated:
            self._open_audit()
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
            instrument(runtime, self.metrics)
            logger.info(
                "authproxy: %d credential(s), %d route(s) from %s",
                len(runtime.caches),
                len(runtime.config.routes),
                path,
            )
        old, self.runtime = self.runtime, runtime
        if old is not None:
            old.close()

    def _open_audit(self) -> None:
        configured = self.runtime.config.audit_log if self.runtime else None
        path = ctx.options.authproxy_audit_log or configured
        if self.audit is not None and (path is None or Path(path) != self.audit.path):
            self.audit.close()
            self.audit = None
        if path and self.audit is None:
            try:
                self.audit = AuditLog(Path(path))
            except OSError as e:
                raise exceptions.OptionsError(f"cannot open the audit log {path}: {e}") from None

    def _secrets(self) -> list[str]:
        return self.runtime.config.secrets() if self.runtime else []

    def carries_token(self, flow: http.HTTPFlow) -> bool:
        """Whether the flow holds a live, unredacted token right now."""
        return flow in self._injected

    def done(self) -> None:
        # mitmproxy's Save writes flows still in flight at shutdown; redact them first.
        for flow in list(self._injected.keys()):
            self._redact(flow)
        if self.runtime is not None:
            self.runtime.close()
        if self.audit is not None:
            self.audit.close()

    # --- connections ------------------------------------------------------------------------

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        """Intercept TLS only where a route may apply; pass everything else through untouched."""
        rt = self.runtime
        if rt is None:
            return
        address = data.context.server.address
        if address is None or not rt.config.routes.intercepts(address[0], address[1]):
            data.ignore_connection = True

    # --- requests ---------------------------------------------------------------------------

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        # Headers may go upstream right after this hook when the body is streamed, so the token
        # goes in here, not in `request`.
        rt = self.runtime
        if rt is None or flow.response or flow.error:
            return
        req = flow.request
        if req.host == STATUS_HOST and req.scheme == "http":
            self._answer(flow, await self._status(req.path))
            return
        route = rt.config.routes.match(req.scheme, req.host, req.port, req.path)
        if route is None:
            if req.scheme == "http" and (
                refused := rt.config.routes.https_only_match(req.host, req.path)
            ):
                self._refuse(flow, refused, replies.plain_http_refused(refused))
            return
        if refusal := request_refusal(flow, route):
            self._refuse(flow, route, refusal)
            return
        retry_of = flow.metadata.get(META, {}).get("retry_of")
        if "authorization" in req.headers and retry_of is None:
            if route.existing_authorization == "keep":
                return
            if route.existing_authorization == "reject":
                self._refuse(flow, route, replies.authorization_present(route))
                return
        cache = rt.caches[route.credential]
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
        if retry_of is None and self.visible is not None and self.visible(flow):
            # A flow the web UI already shows (replayed from it): the live token goes into an
            # unseen copy, and this flow only gets the copy's answer.
            flow.response = await self._send_copy(flow, route, {"replay_of": flow.id})
            return
        req.headers["authorization"] = f"{token.token_type} {token.access_token}"
        self._injected[flow] = Injection(
            route, cache, token, request_streamed=bool(req.stream),
            refreshed=cache.refreshes != refreshes,
        )  # fmt: skip
        self.metrics.inc("injected", route.credential)
        flow.metadata[META] = {"credential": route.credential, "route": route.index}
        if retry_of is not None:
            flow.metadata[META]["retry_of"] = retry_of

    def _answer(self, flow: http.HTTPFlow, response: http.Response) -> None:
        # A response set here is sent once the body is read; a streamed body would already be
        # on its way upstream (without a token), so stop streaming it.
        flow.request.stream = False
        flow.response = response

    def _refuse(self, flow: http.HTTPFlow, route: Route, response: http.Response) -> None:
        if response.status_code != 502:
            self.metrics.inc("refused", route.credential)
        self._answer(flow, response)
        flow.metadata.setdefault(META, {})["error"] = response.headers.get(replies.ERROR_HEADER)
        self._audit(flow, route)

    async def _status(self, path: str) -> http.Response:
        views = await self.credential_views()
        refreshes = self._refreshes()
        info = console_info(
            self.runtime, self.metrics, self._secrets(),
            listen=(ctx.options.listen_host, ctx.options.listen_port),
            config=ctx.options.authproxy_config,
        )  # fmt: skip
        counters = self.metrics.snapshot(refreshes)
        metrics = self.metrics.prometheus(refreshes, views)
        return status_response(path, views, counters, metrics, info=info)

    def _refreshes(self) -> dict[str, int]:
        rt = self.runtime
        return {n: c.refreshes for n, c in rt.caches.items()} if rt else {}

    async def credential_views(self) -> list[CredentialView]:
        rt = self.runtime
        if rt is None:
            return []

        def read() -> dict[str, object]:
            # Row by row: one damaged row must not blank out the others.
            out: dict[str, object] = {}
            for n, c in rt.caches.items():
                with contextlib.suppress(StoreError):
                    key = rt.config.credentials[n].store_key
                    out[n] = c.store.get(key) if c.store else None
            return out

        records = await asyncio.to_thread(read)
        now = time.time()
        views = [
            describe(cfg, records.get(name), now, rt.caches[name].status())  # type: ignore[arg-type]
            for name, cfg in rt.config.credentials.items()
        ]
        secrets = self._secrets()
        return [
            dataclasses.replace(v, last_error=replies.scrub(v.last_error, secrets))
            if v.last_error
            else v
            for v in views
        ]

    # --- responses --------------------------------------------------------------------------

    async def response(self, flow: http.HTTPFlow) -> None:
        inj = self._injected.get(flow)
        if inj is None or flow.response is None:
            return
        # Only the proxy speaks with this header; an API's would be taken for ours.
        flow.response.headers.pop(replies.ERROR_HEADER, None)
        scrub_echoes(flow.response, inj.token, redacted_token(inj.route.credential, inj.token))
        try:
            retry, why = retry_decision(
                status=flow.response.status_code,
                www_authenticate=flow.response.headers.get("www-authenticate"),
                already_retried="retry_of" in flow.metadata.get(META, {}),
                refreshable=inj.cache.grant.refreshable,
                request_streamed=inj.request_streamed,
                response_streamed=bool(flow.response.stream),
            )
            if flow.response.status_code == 401:
                logger.info(
                    "%s %s%s answered 401 (credential %s): %s",
                    flow.request.method,
                    flow.request.host,
                    flow.request.path.split("?")[0],
                    inj.route.credential,
                    "retrying once" if retry else f"not retried, {why}",
                )
            if retry:
                await self._retry(flow, inj)
        finally:
            self._redact(flow)
            if "retry_of" not in flow.metadata.get(META, {}):
                self._audit(flow, inj.route, refreshed=inj.refreshed)

    async def _retry(self, flow: http.HTTPFlow, inj: Injection) -> None:
        try:
            await inj.cache.replace_rejected(inj.token)
        except TokenUnavailable as e:
            self.metrics.inc("token_failures", inj.route.credential)
            flow.response = replies.token_unavailable(e, self._secrets())
            flow.metadata[META]["error"] = "token_unavailable"
            return
        self.metrics.inc("retried", inj.route.credential)
        flow.metadata[META]["retried"] = True
        flow.response = await self._send_copy(flow, inj.route, {"retry_of": flow.id})

    async def _send_copy(
        self, flow: http.HTTPFlow, route: Route, marker: dict[str, str]
    ) -> http.Response:
        """Send a copy of the request through mitmproxy's own upstream machinery (connection,
        TLS, certificate checks) and return its answer. The copy runs through every addon
        again, ours included, which injects the current token into it."""
        copy = flow.copy()
        copy.is_replay = "request"
        copy.response = None
        copy.error = None
        copy.request.headers.pop("authorization", None)  # never carry an old token along
        copy.metadata[META] = {**flow.metadata.get(META, {}), **marker}
        copy.metadata[META].pop("retried", None)
        await ReplayHandler(copy, ctx.options).replay()
        if copy.response is not None:
            return copy.response
        return replies.retry_failed(route, copy.error.msg if copy.error else "no response")

    def error(self, flow: http.HTTPFlow) -> None:
        inj = self._injected.get(flow)
        self._redact(flow)
        if inj is not None and "retry_of" not in flow.metadata.get(META, {}):
            self._audit(flow, inj.route, refreshed=inj.refreshed)

    def _redact(self, flow: http.HTTPFlow) -> None:
        inj = self._injected.pop(flow, None)
        if inj is not None:
            flow.request.headers["authorization"] = redacted_authorization(
                inj.route.credential, inj.token
            )
            if self.on_redacted is not None:
                self.on_redacted(flow)

    def _audit(self, flow: http.HTTPFlow, route: Route, *, refreshed: bool = False) -> None:
        req, resp = flow.request, flow.response
        end = (resp.timestamp_end if resp and resp.timestamp_end else None) or time.time()
        self.metrics.observe_request(route.credential, end - req.timestamp_start)
        if self.audit is None:
            return
        retried = bool(flow.metadata.get(META, {}).get("retried"))
        self.audit.write(
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


addons = [AuthProxy()]
