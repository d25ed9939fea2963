"""The status page (`http://authproxy.local/`, its JSON and `/metrics`) as a small mitmproxy
addon: it reads the running proxy's credentials and counters and renders them; it never holds a
token. Whether a request is for the status page is `decision.decide`'s call (absolute-form
requests to the proxy only); the proxy hands such a request to `answer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from mitmproxy import ctx, http

from proxy_addon import replies
from proxy_addon.console import console_info
from proxy_addon.metrics import Metrics
from proxy_addon.status import CredentialView, describe
from proxy_addon.statuspage import status_response
from proxy_addon.store import Record, StoreError

if TYPE_CHECKING:
    from proxy_addon.runtime import Runtime

__all__ = ["StatusPage"]


class StatusPage:
    def __init__(
        self, runtime: Callable[[], Runtime | None], metrics: Callable[[], Metrics]
    ) -> None:
        # Both read at each request: a reload replaces the runtime, `--workers` the metrics.
        self._runtime, self._metrics = runtime, metrics

    def _secrets(self) -> list[str]:
        rt = self._runtime()
        return rt.config.secrets() if rt else []

    async def answer(self, path: str) -> http.Response:
        """The answer to a status-page request for `path`."""
        views = await self.credential_views()
        rt = self._runtime()
        refreshes = {n: c.refreshes for n, c in rt.caches.items()} if rt else {}
        m = self._metrics()
        info = console_info(
            rt, m, self._secrets(),
            listen=(ctx.options.listen_host, ctx.options.listen_port),
            config=ctx.options.authproxy_config,
        )  # fmt: skip
        counters = m.snapshot(refreshes)
        metrics = m.prometheus(refreshes, views)
        return status_response(path, views, counters, metrics, info=info)

    async def credential_views(self) -> list[CredentialView]:
        rt = self._runtime()
        if rt is None:
            return []

        def read() -> dict[str, Record | None]:
            # Row by row: one damaged row must not blank out the others.
            out: dict[str, Record | None] = {}
            for n, c in rt.caches.items():
                with contextlib.suppress(StoreError):
                    key = rt.config.credentials[n].store_key
                    out[n] = c.store.get(key) if c.store else None
            return out

        records = await asyncio.to_thread(read)
        now = time.time()
        views = [
            describe(cfg, records.get(name), now, rt.caches[name].status())
            for name, cfg in rt.config.credentials.items()
        ]
        secrets = self._secrets()
        return [
            dataclasses.replace(v, last_error=replies.scrub(v.last_error, secrets))
            if v.last_error
            else v
            for v in views
        ]
