"""Instructions per request, bare `mitmdump -q` against `authproxy run -q`: a measure no other
process on the machine can disturb (issue 11, item 1).

    .venv/bin/python scripts/bench_instructions.py [--requests 200] [--dpop] [--noop-addon]
    .venv/bin/python scripts/bench_instructions.py --end-to-end [--clients 16]

The time figures of scripts/bench.py and scripts/bench_hooks.py move by ±20% between rounds on
a shared virtual machine, more than the difference they are after. This runs the same
in-process stack as bench_hooks (mitmproxy's HTTP/1 layer and addon manager, every hook through
the master, no sockets, no TLS) under valgrind's callgrind, which counts the CPU instructions
each variant executes for the same requests, in one process: the figures repeat to a fraction
of a percent. Instructions are not time (cache misses and branch mispredictions are not
counted), but for the same interpreter doing more or less of the same kind of work they are
proportional to it.

`--end-to-end` counts the real thing instead: bare `mitmdump -q` and `authproxy run -q`, each
its own process under callgrind (collection switched on and off from outside with
`callgrind_control`), serving the keep-alive HTTPS GETs of scripts/bench.py's load generator
(CONNECT, TLS in the tunnel, a local HTTPS API and IdP, outside valgrind). Only the proxy's
own instructions count, sockets and TLS included. It needs valgrind only, and takes about five
minutes per proxy.

Needs valgrind and a C compiler (Debian: `apt-get install valgrind gcc`): a two-line helper,
built in a temporary directory, tells callgrind where each variant's requests begin and end.
Under valgrind the run takes three to four minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HELPER = """
#include <valgrind/callgrind.h>
void region_start(void) { CALLGRIND_ZERO_STATS; CALLGRIND_TOGGLE_COLLECT; }
void region_stop(const char *name) { CALLGRIND_TOGGLE_COLLECT; CALLGRIND_DUMP_STATS_AT(name); }
"""
INSIDE = "AUTHPROXY_BENCH_INSTRUCTIONS_HELPER"  # set for the run under valgrind


def build_helper(work: Path) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    header = Path("/usr/include/valgrind/callgrind.h")
    if cc is None or not header.exists():
        sys.exit("needs a C compiler and valgrind's headers (Debian: apt-get install valgrind gcc)")
    src, lib = work / "region.c", work / "region.so"
    src.write_text(HELPER)
    subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(lib), str(src)], check=True)
    return lib


def outside(args: argparse.Namespace) -> int:
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        sys.exit("needs valgrind (Debian: apt-get install valgrind)")
    with tempfile.TemporaryDirectory(prefix="authproxy-bench-instr-") as tmp:
        work = Path(tmp)
        lib = build_helper(work)
        cmd = [valgrind, "--tool=callgrind", "--collect-atstart=no",
               f"--callgrind-out-file={work}/cg.out", sys.executable, __file__,
               "--requests", str(args.requests), *(["--dpop"] if args.dpop else []),
               *(["--noop-addon"] if args.noop_addon else [])]  # fmt: skip
        env = {**os.environ, INSIDE: str(lib), "PYTHONHASHSEED": "0"}
        run = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if run.returncode != 0:
            sys.stderr.write(run.stdout + run.stderr)
            return 1
        counts = {}
        for dump in work.glob("cg.out.*"):
            text = dump.read_text(errors="replace")
            name = re.search(r"^desc: Trigger: Client Request: (\S+)", text, re.M)
            total = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
            if name and total:
                counts[name.group(1)] = int(total.group(1)) / args.requests
    bare, auth = counts["bare"], counts["authproxy"]
    kind = "DPoP" if args.dpop else "Bearer"
    print(f"routed HTTPS keep-alive GET, cached {kind} token; CPU instructions per request "
          f"(callgrind, {args.requests} requests each, one process)")  # fmt: skip
    print(f"mitmdump -q (bare)   {bare:12,.0f}")
    print(f"authproxy run -q     {auth:12,.0f}")
    print(f"added by authproxy   {auth - bare:12,.0f}  ({(auth - bare) / bare:+.2%})")
    print(f"ratio bare/authproxy {bare / auth:.3f} (in-process, no TLS or sockets: mitmproxy's "
          "share of a real request is larger, so the end-to-end ratio is closer to 1)")
    if (noop := counts.get("bare+noop")) is not None:
        print(f"bare + a no-op addon {noop:12,.0f}  ({(noop - bare) / bare:+.2%}: what one more "
              "addon in mitmproxy's chain costs, hooks or not)")  # fmt: skip
    return 0


async def inside(args: argparse.Namespace, lib: str) -> int:
    sys.path.insert(0, str(Path(__file__).parent))
    import bench_hooks as bh
    from mitmproxy import options

    region = ctypes.CDLL(lib)
    with tempfile.TemporaryDirectory(prefix="authproxy-bench-instr-") as tmp:
        cfg = bh.write_config(Path(tmp), args.dpop)
        logging.getLogger().setLevel(logging.INFO)  # as runner._serve
        opts_a = options.Options()
        m_auth, authproxy = bh.authproxy_master(opts_a)
        opts_a.update(listen_host="127.0.0.1", authproxy_config=str(cfg),
                      termlog_verbosity="warn")  # fmt: skip
        bh.seed_token(authproxy, args.dpop)
        opts_b = options.Options()
        m_bare = bh.mitmdump_master(opts_b)
        opts_b.update(listen_host="127.0.0.1", termlog_verbosity="error", flow_detail=0)
        masters = [("bare", m_bare), ("authproxy", m_auth)]
        if args.noop_addon:
            opts_c = options.Options()
            m_noop = bh.mitmdump_master(opts_c)
            m_noop.addons.add(bh.NoOp())
            opts_c.update(listen_host="127.0.0.1", termlog_verbosity="error", flow_detail=0)
            masters.append(("bare+noop", m_noop))
        drivers = {}
        for name, m in masters:
            bh.activate(m)
            await m.addons.trigger_event(bh._running())
            drivers[name] = bh.LayerDriver(m)
        for d in drivers.values():
            bh.activate(d.master)
            for _ in range(50):  # caches filled, the token read from the store
                await d.request()
        assert bh.ACCESS_TOKEN.encode() in drivers["authproxy"].upstream
        gc.collect()
        gc.freeze()  # as authproxy run after start-up
        for name, d in drivers.items():
            bh.activate(d.master)
            before = d.answered
            region.region_start()
            for _ in range(args.requests):
                await d.request()
            region.region_stop(name.encode())
            assert d.answered - before == args.requests
    return 0


def _serve(client: Any, n: int, path: str, failed: list[object]) -> None:
    for _ in range(n):
        if (status := client.get(path)) != 200:
            failed.append(status)


def end_to_end(args: argparse.Namespace) -> int:
    """Each proxy process under callgrind; `requests` GETs from `clients` keep-alive clients."""
    import glob
    import threading

    sys.path.insert(0, str(Path(__file__).parent))
    import bench as b

    valgrind, control = shutil.which("valgrind"), shutil.which("callgrind_control")
    if valgrind is None or control is None:
        sys.exit("needs valgrind (Debian: apt-get install valgrind)")
    work = Path(tempfile.mkdtemp(prefix="authproxy-bench-instr-e2e-"))
    confdir = work / "mitmproxy"
    secret = "bench-secret-" + os.urandom(12).hex()
    pki = b.make_pki(work / "pki", ("localhost", "127.0.0.1", b.API_HOST))
    idp = b.AuthServer(pki, access_token_ttl=24 * 3600).start()
    idp.add_client(b.CLIENT_ID, secret)
    api = b.ApiServer(idp.is_valid, pki).start()
    env = b.proxy_env(secret)
    bearer = b.bearer_token(idp, secret, pki)
    target = b.Target(api.port, {b.BARE: {"Authorization": f"Bearer {bearer}"}})
    proxies = [
        b.bare_mitmdump(work, confdir, pki),
        b.authproxy(b.AUTHPROXY, work, confdir, pki, idp, api, routes=b.FEW_ROUTES),
    ]
    per_client = max(1, args.requests // args.clients)
    counts: dict[str, float] = {}
    try:
        for i, proxy in enumerate(proxies):  # one after the other: the first writes the CA
            out = work / f"cg.{i}"
            proxy.argv = [valgrind, "--tool=callgrind", "--instr-atstart=no",
                          f"--callgrind-out-file={out}", *proxy.argv]  # fmt: skip
            with proxy.log_path.open("ab") as log:
                proxy.proc = subprocess.Popen(proxy.argv, stdout=log, stderr=subprocess.STDOUT,
                                              env=env, cwd=b.ROOT)  # fmt: skip
            b.wait_for_proxy(proxy.proc, proxy.port, proxy.ca, timeout=600)
            clients = [target.client(proxy) for _ in range(args.clients)]
            for client in clients:  # connections open, TLS done, the token fetched
                # A first token request can time out at the IdP while valgrind translates the
                # proxy's code for the first time: a few tries.
                answers = [client.get(b.API_PATH) for _ in range(3)]
                while answers.count(200) < 3 and len(answers) < 20:
                    answers.append(client.get(b.API_PATH))
                if answers.count(200) < 3:
                    sys.exit(f"{proxy.name}: warm-up failed: {answers}\n{proxy.log_tail()}")
            pid = str(proxy.proc.pid)
            for command in (["-z"], ["-i", "on"]):
                subprocess.run([control, *command, pid], check=True, capture_output=True)
            failed: list[object] = []
            threads = [threading.Thread(target=_serve, args=(c, per_client, b.API_PATH, failed))
                       for c in clients]  # fmt: skip
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            subprocess.run([control, "-d", f"region{i}", pid], check=True, capture_output=True)
            subprocess.run([control, "-i", "off", pid], check=True, capture_output=True)
            for client in clients:
                client.close()
            proxy.stop()  # callgrind writes its files as the process ends
            if failed:
                sys.exit(f"{proxy.name}: {len(failed)} request(s) failed: {failed[:3]}")
            for dump in glob.glob(f"{out}*"):
                text = Path(dump).read_text(errors="replace")
                total = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
                if total and re.search(rf"^desc: Trigger: dump region{i}$", text, re.M):
                    counts[proxy.name] = int(total.group(1)) / (per_client * args.clients)
    finally:
        for proxy in proxies:
            proxy.stop()
        idp.stop()
        api.stop()
        shutil.rmtree(work, ignore_errors=True)
    bare, auth = counts[b.BARE], counts[b.AUTHPROXY]
    print(f"end to end: routed HTTPS keep-alive GETs, {args.clients} client(s), "
          f"{per_client * args.clients} requests; CPU instructions per request of the proxy "
          "process (callgrind)")  # fmt: skip
    print(f"mitmdump -q (bare)   {bare:12,.0f}")
    print(f"authproxy run -q     {auth:12,.0f}")
    print(f"added by authproxy   {auth - bare:12,.0f}  ({(auth - bare) / bare:+.2%})")
    print(f"ratio bare/authproxy {bare / auth:.3f}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=200, help="per variant")
    parser.add_argument("--end-to-end", action="store_true",
                        help="count the real proxy processes instead (see above)")
    parser.add_argument("--clients", type=int, default=16,
                        help="keep-alive clients with --end-to-end (default 16)")  # fmt: skip
    parser.add_argument("--dpop", action="store_true", help="a DPoP credential (proof per call)")
    parser.add_argument("--noop-addon", action="store_true",
                        help="also count bare mitmdump with one more (no-op) addon")  # fmt: skip
    parsed = parser.parse_args()
    if helper := os.environ.get(INSIDE):
        sys.exit(asyncio.run(inside(parsed, helper)))
    sys.exit(end_to_end(parsed) if parsed.end_to_end else outside(parsed))
