"""`authproxy run`: mitmproxy embedded with our addon placed ahead of its own.

mitmproxy's DumpMaster adds its default addons (save, savehar, dumper) in its constructor, so an
addon added later would run after them and they would see unredacted requests. We assemble the
master ourselves: our addon first, then mitmproxy's.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mitmproxy import addons, exceptions, master, options
from mitmproxy.addons import dumper, errorcheck, termlog

from . import compat
from .addon import AuthProxy
from .config import Config
from .localguard import LocalGuard
from .reload import Reloader
from .shutdown import DEFAULT_GRACE, GracefulStop
from .tempproxy import ONE_TIME_AUTH_ENV
from .workerstate import WorkerSlot, join_workers

__all__ = ["RunOptions", "StartupError", "run"]


class StartupError(Exception):
    """The proxy cannot start with these settings; the message says why."""


@dataclass
class RunOptions:
    config_path: Path
    config: Config
    listen: tuple[str, int] | None = None  # overrides the config's listen
    save_flows: str | None = None  # mitmproxy's save_stream_file
    quiet: bool = False
    web: bool = False  # serve mitmproxy's web UI (mitmweb) too
    audit_log: str | None = None
    sets: Sequence[str] = field(default_factory=list)  # "option=value", as mitmdump --set
    grace: float = DEFAULT_GRACE  # seconds in-flight requests get after the first SIGTERM/SIGINT
    worker: WorkerSlot | None = None  # one of `--workers N` (set by the supervisor)


def run(ro: RunOptions) -> int:
    return asyncio.run(_serve(ro))


async def _serve(ro: RunOptions) -> int:
    # mitmproxy's termlog filters by its own verbosity option; let records reach it.
    logging.getLogger().setLevel(logging.INFO)
    opts = options.Options()
    authproxy = AuthProxy(guard=LocalGuard())
    m = _web_master(opts, authproxy) if ro.web else _dump_master(opts, authproxy, ro.quiet)
    m.addons.add(_FreezeAfterStart(m))
    if ro.worker is not None:
        join_workers(authproxy, ro.worker)

    host, port = ro.listen or (ro.config.listen_host, ro.config.listen_port)
    settings: dict[str, object] = {
        "listen_host": host,
        "listen_port": port,
        "authproxy_config": str(ro.config_path),
    }
    if ro.config.proxy_auth:
        settings["proxyauth"] = ro.config.proxy_auth
    # `authproxy exec`'s temporary proxy: a password for its command alone (never in argv, which
    # every user can read).
    if one_time := os.environ.pop(ONE_TIME_AUTH_ENV, None):
        settings["proxyauth"] = one_time
    if ro.config.confdir:
        settings["confdir"] = str(ro.config.confdir)
    if ro.save_flows:
        settings["save_stream_file"] = ro.save_flows
    if ro.audit_log:
        settings["authproxy_audit_log"] = ro.audit_log
    if ro.web:
        settings["web_open_browser"] = False
    if ro.quiet:
        settings["termlog_verbosity"] = "warn"
    try:
        opts.update(**settings)
        if ro.sets:
            opts.set(*ro.sets)
    except exceptions.OptionsError as e:
        raise StartupError(str(e)) from None

    loop = asyncio.get_running_loop()
    stop = GracefulStop(m, authproxy.inflight, ro.grace)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.signal, sig)
    # SIGHUP: re-read the config and the store key (reload.py), never stop.
    loop.add_signal_handler(signal.SIGHUP, Reloader(authproxy, ro.config_path).signal)
    from .config_lint import config_warnings

    for warning in config_warnings(ro.config):  # what `check` says, in the log too
        logging.getLogger("authproxy").warning("config: %s", warning)
    if ro.web and ro.quiet:  # -q hides mitmweb's own line: the URL (with its token) still shows
        logging.getLogger("authproxy").warning("web UI: %s", m.web_url)  # type: ignore[attr-defined]
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    logging.getLogger("authproxy").info("authproxy %s (config %s)", where, ro.config_path)
    await m.run()
    await stop.finish()
    return 0


class _FreezeAfterStart:
    """Once listening: move everything start-up built (the route table, 10 000 Route objects
    for some configs) out of the cyclic GC's sight; walking them cost ~55 us per request.
    Then leave mitmproxy's chain, which it walks for every hook of every request."""

    def __init__(self, m: master.Master) -> None:
        self._master = m

    def running(self) -> None:
        gc.collect()
        gc.freeze()
        self._master.addons.remove(self)  # safe here: the chain is replaced, not changed


def _dump_master(opts: options.Options, authproxy: AuthProxy, quiet: bool) -> master.Master:
    m = master.Master(opts, with_termlog=False)
    m.addons.add(termlog.TermLog())
    m.addons.add(*addons.default_addons())
    if not quiet:
        m.addons.add(dumper.Dumper())
    m.addons.add(errorcheck.ErrorCheck())
    _place(m, authproxy)
    return m


def _place(m: master.Master, authproxy: AuthProxy) -> None:
    """Right after proxy authentication, before everything that saves, shows or rewrites flows."""
    compat.place_after_proxyauth(m, authproxy)


def _web_master(opts: options.Options, authproxy: AuthProxy) -> master.Master:
    """mitmweb. The addon keeps flows out of the UI's view while they carry a live token
    (compat.hide_in_flight, applied when it loads into any master with a view), and replays
    started from the UI send an unseen copy (AuthProxy.visible)."""
    from mitmproxy.tools.web.master import WebMaster

    m = WebMaster(opts, with_termlog=True)
    _place(m, authproxy)
    if authproxy.on_redacted is None:  # the addon found no view: never show live tokens
        raise StartupError("mitmweb has no flow view to protect; this mitmproxy is unsupported")
    return m
