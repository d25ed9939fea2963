"""Reloading a running proxy: SIGHUP, or `authproxy reload` (which sends it).

The config file and the store key are read again, in a thread, while the proxy keeps serving
with what it has. Only a config that loads and opens its store replaces the running one; one
that does not is logged with the reason and changes nothing. The replaced runtime lets its
refreshes in flight commit before it closes (AuthProxy.install), off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from mitmproxy import exceptions

from .addon import AuthProxy
from .config import Config, ConfigError, load_config
from .mtls import check_route_certs
from .runtime import Runtime
from .store import StoreError

__all__ = ["Reloader", "restart_needed"]

logger = logging.getLogger("authproxy")


def restart_needed(old: Config, new: Config) -> list[str]:
    """The settings a reload cannot apply to the running listener (pure)."""
    changed = []
    if (old.listen_host, old.listen_port) != (new.listen_host, new.listen_port):
        changed.append("listen")
    if old.proxy_auth != new.proxy_auth:
        changed.append("proxy_auth")
    if old.confdir != new.confdir:
        changed.append("confdir")
    return changed


class Reloader:
    """One reload at a time; a signal during a reload asks for one more afterwards (the file
    may have changed again after it was read)."""

    def __init__(self, authproxy: AuthProxy, path: Path) -> None:
        self.authproxy, self.path = authproxy, path
        self._task: asyncio.Task[None] | None = None
        self._again = False
        self.reloads = 0  # reloads applied (tests poll it)
        self.failures = 0  # reloads refused

    def signal(self) -> None:
        """The SIGHUP handler (runs on the event loop)."""
        if self._task is not None:
            self._again = True
            return
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        try:
            while True:
                self._again = False
                await self.reload()
                if not self._again:
                    return
        finally:
            self._task = None

    async def reload(self) -> bool:
        """Re-read the config and the key; True when the new ones serve from now on."""
        path = self.path
        logger.info("reloading %s", path)
        try:
            config = await asyncio.to_thread(load_config, path)
            await asyncio.to_thread(check_route_certs, config.routes)
            runtime = await asyncio.to_thread(Runtime.build, config)
        except (ConfigError, StoreError, ValueError) as e:
            self.failures += 1
            # A warning: an error logged would look like a failed start to mitmproxy.
            logger.warning("reload refused, still serving the previous config: %s", e)
            return False
        except Exception:  # never let a reload end the proxy
            self.failures += 1
            logger.exception("reload failed, still serving the previous config")
            return False
        old = self.authproxy.runtime
        self.authproxy.install(runtime, str(path))
        try:
            # Re-applies what follows from the config: audit log, CA bundle, option checks.
            self.authproxy.configure({"authproxy_audit_log"})
        except exceptions.OptionsError as e:
            logger.warning("reloaded %s, but: %s", path, e)
        if old is not None and (changed := restart_needed(old.config, config)):
            logger.warning(
                "reloaded %s; the change of %s takes effect only after a restart",
                path, ", ".join(changed),
            )  # fmt: skip
        else:
            logger.info("reloaded %s", path)
        self.reloads += 1
        return True
