"""A graceful stop for `authproxy run`: the first SIGTERM/SIGINT closes the listeners and lets
the requests in flight (and the token refreshes they wait for) finish within a grace period
(`--grace`); then the shutdown hooks run (the token cache gives a refresh in flight up to its
`drain_timeout` to commit a rotated refresh token). A second signal ends the process at once.

A request is in flight from the addon's `requestheaders` hook, before the token work, until its
`response` or `error` hook is done. mitmproxy's own addons after it in the chain (save, dumper)
have synchronous hooks, so they finish in the same step of the event loop, before a waiting stop
can go on; an async `response` hook of a user's script after ours may still be running then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
import weakref

from mitmproxy import http, master

__all__ = ["DEFAULT_GRACE", "GracefulStop", "InFlight"]

logger = logging.getLogger("authproxy")

DEFAULT_GRACE = 5.0  # seconds


class InFlight:
    """The requests between the addon's first hook for them (`requestheaders`) and its last
    (`response` or `error`). AuthProxy calls `begin` and `end`: two addons of their own at both
    ends of mitmproxy's chain cost more per request than all of authproxy's work (issue 11),
    since mitmproxy dispatches every hook to every addon."""

    def __init__(self) -> None:
        self._flows: weakref.WeakSet[http.HTTPFlow] = weakref.WeakSet()
        self._idle = asyncio.Event()
        self._idle.set()
        self.stopping = False

    def __len__(self) -> int:
        return len(self._flows)

    def begin(self, flow: http.HTTPFlow) -> None:
        self._flows.add(flow)
        self._idle.clear()

    def end(self, flow: http.HTTPFlow) -> None:
        if (
            self.stopping
            and flow.response
            and flow.request.http_version.startswith("HTTP/1")
        ):
            # The client's next request would find the listener gone; tell it to reconnect.
            flow.response.headers["connection"] = "close"
        self._flows.discard(flow)
        if not self._flows:
            self._idle.set()

    async def idle(self) -> None:
        while self._flows:
            self._idle.clear()
            await self._idle.wait()


class GracefulStop:
    """The signal handler of `authproxy run`."""

    def __init__(self, m: master.Master, inflight: InFlight, grace: float) -> None:
        self._master = m
        self._inflight = inflight
        self._grace = grace
        self._task: asyncio.Task[None] | None = None
        self.deadline: float | None = None  # monotonic; set by the first signal

    def signal(self, signum: int) -> None:
        if self._task is not None:
            return
        self.deadline = time.monotonic() + self._grace
        logger.warning(
            "authproxy: %s: no new connections; waiting up to %gs for %d request(s) in flight "
            "(send it again to stop at once)",
            signal.Signals(signum).name, self._grace, len(self._inflight),
        )  # fmt: skip
        loop = asyncio.get_running_loop()
        # From now on a signal ends the process at once, even while a shutdown hook blocks the
        # event loop (a refresh in flight is given time to commit its token).
        for s in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(s)
            signal.signal(s, _exit_now)
        self._task = loop.create_task(self._stop())

    async def _stop(self) -> None:
        deadline = self.deadline or time.monotonic()
        self._inflight.stopping = True
        try:
            ps = self._master.addons.get("proxyserver")
            if ps is not None:
                await ps.servers.update([])  # close the listeners; connections stay open
            try:
                await asyncio.wait_for(self._inflight.idle(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                logger.warning(
                    "authproxy: %d request(s) still in flight after %gs; stopping anyway",
                    len(self._inflight), self._grace,
                )  # fmt: skip
            else:
                await _drain(ps, max(0.0, deadline - time.monotonic()))
        finally:
            self._master.shutdown()

    async def finish(self) -> None:
        """After the master stopped: wait for worker threads (a token request to the IdP) until
        the deadline, then leave without them. Python would otherwise wait for each at exit,
        as long as the IdP takes."""
        if self.deadline is None:
            return
        loop = asyncio.get_running_loop()
        # At least a moment: idle worker threads end at once, a busy one does not.
        remaining = max(1.0, self.deadline - time.monotonic())
        try:
            await asyncio.wait_for(loop.shutdown_default_executor(), remaining)
        except TimeoutError:
            logger.warning(
                "authproxy: a token request is still running after the grace period; "
                "exiting without its answer"
            )
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            os._exit(0)


def _exit_now(signum: int, frame: object) -> None:
    # In a signal handler: no logging (its locks may be held), no cleanup; the flow file gets
    # no more flows, so none half-redacted either.
    with contextlib.suppress(OSError):
        os.write(2, f"authproxy: {signal.Signals(signum).name} again: stopping now\n".encode())
    os._exit(128 + signum)


async def _drain(ps: object, timeout: float) -> None:
    """Until the answers already handed to the connections have been written out."""
    writers = [
        io.writer
        for handler in list(getattr(ps, "connections", {}).values())
        for io in list(handler.transports.values())
        if io.writer is not None and hasattr(io.writer, "drain")
    ]
    if not writers or timeout <= 0:
        return

    async def drain(writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, RuntimeError):  # that connection is gone
            await writer.drain()

    await asyncio.wait([asyncio.ensure_future(drain(w)) for w in writers], timeout=timeout)
