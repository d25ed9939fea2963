"""In-process micro-benchmark of authproxy's own work per request (issue 11, item 1).

    .venv/bin/python scripts/bench_hooks.py [--requests 5000] [--rounds 5] [--dpop] [--profile]

The end-to-end bench (scripts/bench.py) needs a quiet machine; this one measures CPU time in one
process, so the figures hold on a busy one. For a routed HTTPS keep-alive GET with a cached
token (a client_credentials credential whose token sits in the cache, as after the first call):

1. hooks: authproxy's hooks called directly, in mitmproxy's order (requestheaders,
   responseheaders, response), on flows built beforehand; beside it, the same calls on a no-op
   addon with four async hooks.
   The per-connection hooks (client_connected, http_connect, tls_clienthello,
   tls_start_server) are timed apart: a keep-alive connection pays them once.
2. stack: mitmproxy's HTTP/1 layer (the one inside the TLS tunnel) parsing the request,
   running every hook through the master's addon manager (one task per hook, as the proxy
   server does), and serialising request and response; once with the master `mitmdump -q`
   assembles, once with the one `authproxy run -q` assembles. No sockets and no TLS, so
   mitmproxy's real per-request cost is larger than its figure here, and the ratio printed is
   a lower bound of the end-to-end throughput ratio.

Rounds alternate between the variants; each figure is the best round (CPU time of the thread
that runs the event loop, as in the proxy). Beside the times, Python function calls per
request, counted under cProfile: a figure no other process on the machine can disturb. On a
shared virtual machine the times still move by ±20% between runs, more than the difference
sought; scripts/bench_instructions.py counts instructions for the same stack instead.
In the stack, every addon in mitmproxy's chain costs each request a coroutine, two generators
and a context manager per hook event, whether it has that hook or not (`--noop-stack`).
`--dpop` routes the request to a DPoP credential (a proof per request).
`--profile` prints cProfile's top functions for the hooks.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import logging
import pstats
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import yaml
from mitmproxy import connection, http, master, options
from mitmproxy.proxy import commands, context, events
from mitmproxy.proxy.layers.http import HttpLayer, HTTPMode
from mitmproxy.tools.dump import DumpMaster

from proxy_addon.addon import AuthProxy
from proxy_addon.dpop import DpopKey
from proxy_addon.localguard import LocalGuard
from proxy_addon.tokens import Token

HOST = "api.bench.test"
REQUEST = (
    f"GET /v1/items?page=2 HTTP/1.1\r\nHost: {HOST}\r\nUser-Agent: python-requests/2.32.3\r\n"
    "Accept-Encoding: gzip, deflate\r\nAccept: */*\r\nConnection: keep-alive\r\n\r\n"
).encode()
BODY = b'{"items": [1, 2, 3], "page": 2, "next": "/v1/items?page=3"}'
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nDate: Wed, 02 Dec 2026 10:00:00 GMT\r\n"
    b"Content-Length: " + str(len(BODY)).encode() + b"\r\nConnection: keep-alive\r\n\r\n" + BODY
)
ACCESS_TOKEN = "eyJhbGciOiJSUzI1NiJ9." + "a" * 600 + ".sig"  # a JWT's size


def write_config(work: Path, dpop: bool) -> Path:
    cred: dict[str, Any] = {
        "grant": "client_credentials",
        "token_url": "https://idp.bench.test/token",
        "client_id": "bench",
        "client_secret": "bench-secret-" + "s" * 20,
    }
    if dpop:
        cred["dpop"] = True
    cfg = {
        "credentials": {"api": cred},
        "routes": [{"host": HOST, "port": 443, "credential": "api"}],
        "store": {"backend": "memory"},
    }
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def seed_token(authproxy: AuthProxy, dpop: bool) -> None:
    """The state after the first call: a valid token in the cache (no IdP in this process)."""
    assert authproxy.runtime is not None
    cache = authproxy.runtime.caches["api"]
    now = time.time()
    token = Token(ACCESS_TOKEN, expires_at=now + 3600, obtained_at=now,
                  token_type="DPoP" if dpop else "Bearer")  # fmt: skip
    if dpop:
        grant = getattr(cache.grant, "wrapped", cache.grant)
        if getattr(grant, "dpop_key", None) is None:
            grant.dpop_key = DpopKey.generate()
    assert cache.store is not None
    cache.store.put(cache.store_key, token, None)


def mitmdump_master(opts: options.Options) -> master.Master:
    """What `mitmdump -q` runs (mitmproxy.tools.main: quiet = termlog error, flow_detail 0)."""
    m = DumpMaster(opts, with_termlog=True, with_dumper=True)
    return m


def authproxy_master(opts: options.Options) -> tuple[master.Master, AuthProxy]:
    """What `authproxy run -q` runs (runner._serve, _dump_master)."""
    from proxy_addon import runner

    authproxy = AuthProxy(guard=LocalGuard(harden=False))
    m = runner._dump_master(opts, authproxy, quiet=True)
    return m, authproxy


def activate(m: master.Master) -> None:
    """mitmproxy's `ctx` is process-global (the last master built); point it at `m`."""
    from mitmproxy import ctx

    ctx.master, ctx.options = m, m.options


def client_and_server(
    peer: tuple[Any, Any] = (("127.0.0.1", 50000), ("127.0.0.1", 8080)),
) -> tuple[connection.Client, connection.Server]:
    client = connection.Client(peername=peer[0], sockname=peer[1],
                               timestamp_start=time.time(), state=connection.ConnectionState.OPEN,
                               tls=True, sni=HOST, timestamp_tls_setup=time.time())  # fmt: skip
    server = connection.Server(address=(HOST, 443), tls=True, sni=HOST)
    server.timestamp_start = server.timestamp_tls_setup = time.time()
    server.state = connection.ConnectionState.OPEN  # after this, its address is fixed
    return client, server


class LayerDriver:
    """One keep-alive connection's HTTP/1 layer (inside the TLS tunnel, after CONNECT), driven
    as mitmproxy's ConnectionHandler drives it, minus sockets: a hook runs as a task through the
    master's addon manager, data for the server is answered with RESPONSE."""

    def __init__(self, m: master.Master) -> None:
        self.master = m
        client, server = client_and_server()
        self.client, self.server = client, server
        ctx = context.Context(client, m.options)
        ctx.server = server
        self.layer = HttpLayer(ctx, HTTPMode.transparent)
        self.answered = 0
        self.upstream = b""  # the last request head sent to the server
        self.started = False

    async def _hook(self, hook: commands.StartHook) -> None:
        (data,) = hook.args()
        await self.master.addons.handle_lifecycle(hook)
        if isinstance(data, http.HTTPFlow):
            await data.wait_for_resume()

    async def run(self, event: events.Event) -> None:
        queue = [event]
        while queue:
            for command in self.layer.handle_event(queue.pop(0)):
                if isinstance(command, commands.StartHook):
                    await asyncio.get_running_loop().create_task(self._hook(command))
                    if command.blocking:
                        queue.append(events.HookCompleted(command))
                elif isinstance(command, commands.SendData):
                    if command.connection is self.server:
                        self.upstream = command.data
                        queue.append(events.DataReceived(self.server, RESPONSE))
                    elif command.data.startswith(b"HTTP/1.1 200"):
                        self.answered += 1
                elif isinstance(command, commands.OpenConnection):
                    queue.append(events.OpenConnectionCompleted(command, None))
                elif isinstance(command, commands.Log | commands.RequestWakeup):
                    pass
                else:
                    raise RuntimeError(f"unexpected command {command!r}")

    async def request(self) -> None:
        if not self.started:
            self.started = True
            await self.run(events.Start())
        await self.run(events.DataReceived(self.client, REQUEST))


# --- hooks, called directly ------------------------------------------------------------------


class NoOp:
    """An addon with the four request hooks, doing nothing: what any addon costs."""

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        pass

    async def request(self, flow: http.HTTPFlow) -> None:
        pass

    async def responseheaders(self, flow: http.HTTPFlow) -> None:
        pass

    async def response(self, flow: http.HTTPFlow) -> None:
        pass


def make_flows(n: int, client: connection.Client, server: connection.Server) -> list[Any]:
    """(flow, response) pairs as mitmproxy's HTTP/1 layer builds them for REQUEST and
    RESPONSE; the response goes onto its flow between the request and response hooks."""
    from mitmproxy.net.http.http1 import read_request_head, read_response_head

    head, _ = REQUEST.split(b"\r\n\r\n", 1)
    rhead, _ = RESPONSE.split(b"\r\n\r\n", 1)
    out = []
    for _ in range(n):
        req = read_request_head(head.split(b"\r\n"))
        req.scheme, req.host, req.port = "https", HOST, 443
        req.timestamp_start = time.time()
        req.data.content = b""
        flow = http.HTTPFlow(client, server, live=True)
        flow.request = req
        resp = read_response_head(rhead.split(b"\r\n"))
        resp.data.content = BODY
        resp.timestamp_end = time.time()
        out.append((flow, resp))
    return out


Hook = Callable[[http.HTTPFlow], Awaitable[None] | None]


def request_hooks(addons: list[Any]) -> list[tuple[str, list[Hook]]]:
    names = ("requestheaders", "request", "responseheaders", "response")
    return [(n, [getattr(a, n) for a in addons if hasattr(a, n)]) for n in names]


async def drive_hooks(hooks: list[tuple[str, list[Hook]]], pairs: list[Any]) -> float:
    """CPU seconds spent calling `hooks` on each flow, in mitmproxy's order."""
    (_, rqh), (_, rq), (_, rsh), (_, rs) = hooks
    clock = time.thread_time
    started = clock()
    for flow, resp in pairs:
        for group in (rqh, rq):
            for hook in group:
                res = hook(flow)
                if res is not None:
                    await res
        flow.response = resp
        for group in (rsh, rs):
            for hook in group:
                res = hook(flow)
                if res is not None:
                    await res
    return clock() - started


def connection_hooks(authproxy: AuthProxy, guard: LocalGuard, n: int) -> float:
    """CPU seconds per connection for the hooks a tunnel meets once: the peer check, CONNECT,
    the client's and the server's TLS. Objects are built beforehand; only the hooks are timed."""
    from mitmproxy import tls
    from mitmproxy.test import tflow

    opts = options.Options()
    # A real loopback connection of this process, so the peer check finds its owner in
    # /proc/net/tcp as it does for a real client (and serves it).
    listener = socket.create_server(("127.0.0.1", 0))
    with listener, socket.create_connection(listener.getsockname()) as sock:
        peer = (sock.getsockname(), listener.getsockname())
        conns = []
        for _ in range(n):
            client, server = client_and_server(peer)
            connect = tflow.tflow()
            connect.request.method = "CONNECT"
            ctx = context.Context(client, opts)
            ctx.server = server
            hello = tls.ClientHelloData(ctx, None)  # type: ignore[arg-type]
            conns.append((client, connect, hello, tls.TlsData(server, ctx)))
        started = time.thread_time()
        for client, connect, hello, server_tls in conns:
            guard.client_connected(client)
            authproxy.http_connect(connect)
            authproxy.tls_clienthello(hello)
            authproxy.tls_start_server(server_tls)
        spent = time.thread_time() - started
    assert all(c.error is None and not h.ignore_connection for c, _, h, _ in conns)
    return spent / n


# --- the run ---------------------------------------------------------------------------------


# Per request, end to end, of bare `mitmdump -q` at 16 concurrent clients in issue 11's run
# (825 req/s): the denominator of the throughput estimate.
MITMDUMP_US = 1e6 / 825


def best(rounds: list[float]) -> float:
    """The least disturbed round: other processes only ever add to a round's time."""
    return min(rounds)


async def main(args: argparse.Namespace) -> int:
    n, rounds = args.requests, args.rounds
    with tempfile.TemporaryDirectory(prefix="authproxy-bench-hooks-") as tmp:
        cfg = write_config(Path(tmp), args.dpop)
        logging.getLogger().setLevel(logging.INFO)  # as runner._serve
        opts_a = options.Options()
        m_auth, authproxy = authproxy_master(opts_a)
        opts_a.update(listen_host="127.0.0.1", authproxy_config=str(cfg),
                      termlog_verbosity="warn")  # fmt: skip
        seed_token(authproxy, args.dpop)
        opts_b = options.Options()
        m_bare = mitmdump_master(opts_b)
        opts_b.update(listen_host="127.0.0.1", termlog_verbosity="error", flow_detail=0)
        for m in (m_bare, m_auth):  # what the proxy server triggers before serving
            activate(m)
            await m.addons.trigger_event(_running())
        guard = next(a for a in authproxy.parts if isinstance(a, LocalGuard))
        hooks_auth = request_hooks([authproxy])
        hooks_noop = request_hooks([NoOp()])

        client, server = client_and_server()
        # Warm up: the first token() reads the store; caches fill.
        await drive_hooks(hooks_auth, make_flows(50, client, server))
        probe = make_flows(1, client, server)
        await drive_hooks(hooks_auth, probe)
        sent = probe[0][0].request
        assert "<redacted:api:" in sent.headers.get("authorization", ""), sent.headers
        drivers = {"bare": LayerDriver(m_bare), "authproxy": LayerDriver(m_auth)}
        if args.noop_stack:  # what one more (no-op) addon in the chain costs in dispatch
            opts_c = options.Options()
            m_noop = mitmdump_master(opts_c)
            m_noop.addons.add(NoOp())
            opts_c.update(listen_host="127.0.0.1", termlog_verbosity="error", flow_detail=0)
            activate(m_noop)
            await m_noop.addons.trigger_event(_running())
            drivers["bare + no-op addon"] = LayerDriver(m_noop)
        for d in drivers.values():
            activate(d.master)
            for _ in range(50):
                await d.request()
        # The token went upstream through the authproxy stack, and only there.
        assert ACCESS_TOKEN.encode() in drivers["authproxy"].upstream
        assert ACCESS_TOKEN.encode() not in drivers["bare"].upstream
        gc.collect()
        gc.freeze()  # as authproxy run after start-up (runner._FreezeAfterStart)

        if args.profile:
            pairs = make_flows(n, client, server)
            prof = cProfile.Profile()
            prof.enable()
            await drive_hooks(hooks_auth, pairs)
            prof.disable()
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(25)
            pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(45)
            print(out.getvalue())
            return 0

        # Python function calls per request: a count the machine's load cannot disturb.
        prof = cProfile.Profile()
        pairs = make_flows(n, client, server)
        prof.enable()
        await drive_hooks(hooks_auth, pairs)
        prof.disable()
        calls = _calls(prof) / n
        del pairs
        stack_calls = {}
        for name, d in drivers.items():
            activate(d.master)
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(n):
                await d.request()
            prof.disable()
            stack_calls[name] = _calls(prof) / n
        hook_times: dict[str, list[float]] = {"authproxy": [], "no-op": []}
        stack_times: dict[str, list[float]] = {name: [] for name in drivers}
        for _ in range(rounds):
            activate(m_auth)
            for name, hooks in (("authproxy", hooks_auth), ("no-op", hooks_noop)):
                pairs = make_flows(n, client, server)
                hook_times[name].append(await drive_hooks(hooks, pairs) / n)
                del pairs
            for name, d in drivers.items():
                activate(d.master)
                before = d.answered
                started = time.thread_time()
                for _ in range(n):
                    await d.request()
                spent = time.thread_time() - started
                assert d.answered - before == n, (name, d.answered - before)
                stack_times[name].append(spent / n)
        activate(m_auth)
        per_conn = connection_hooks(authproxy, guard, 200)

    us = 1e6
    a, z = best(hook_times["authproxy"]), best(hook_times["no-op"])
    bare, auth = best(stack_times["bare"]), best(stack_times["authproxy"])
    kind = "DPoP" if args.dpop else "Bearer"
    print(f"routed HTTPS keep-alive GET, cached {kind} token; CPU time per request, best of "
          f"{rounds} rounds x {n} requests (median in brackets)")  # fmt: skip
    print(f"hooks: authproxy {a * us:6.1f} us ({_median(hook_times['authproxy']) * us:.1f})   "
          f"no-op addon {z * us:5.1f} us   ratio {a / z:.1f}x a no-op addon   "
          f"{calls:.0f} Python calls per request")  # fmt: skip
    print(f"per connection (peer check, CONNECT, TLS hooks): authproxy {per_conn * us:6.1f} us")
    for name, times in stack_times.items():
        print(f"stack, {name:<18} {best(times) * us:7.1f} us ({_median(times) * us:.1f})   "
              f"{stack_calls[name]:.0f} Python calls per request")  # fmt: skip
    print(f"stack: added by authproxy {(auth - bare) * us:5.1f} us per request; "
          f"ratio bare/authproxy {bare / auth:.3f} (in-process: no TLS, no sockets, so "
          "mitmproxy's share is understated)")  # fmt: skip
    added = max(auth - bare, a - z)
    print(f"estimate end to end: {MITMDUMP_US:.0f} us per request for bare mitmdump (issue 11) "
          f"-> ratio {MITMDUMP_US / (MITMDUMP_US + added * us):.3f}, "
          f"+{added * 1e3:.3f} ms p50 with one client")  # fmt: skip
    return 0


def _calls(prof: cProfile.Profile) -> float:
    return float(sum(v[1] for v in pstats.Stats(prof).stats.values()))  # type: ignore[attr-defined]


def _median(times: list[float]) -> float:
    return sorted(times)[len(times) // 2]


def _running() -> Any:
    from mitmproxy.addons.proxyserver import Proxyserver  # noqa: F401  (hooks registered)
    from mitmproxy.hooks import RunningHook

    return RunningHook()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=200, help="per round and variant")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--noop-stack", action="store_true",
                        help="also time the bare stack with one more (no-op) addon")  # fmt: skip
    parser.add_argument("--dpop", action="store_true", help="a DPoP credential (proof per call)")
    parser.add_argument("--profile", action="store_true", help="cProfile the hooks instead")
    sys.exit(asyncio.run(main(parser.parse_args())))
