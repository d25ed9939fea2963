"""Throughput of a DPoP route against a Bearer route in the same run (issue 10's target: at
least 0.95x). One proxy, one demo IdP and API; two host names on the API, one routed with a
Bearer credential, one with a DPoP credential (a fresh proof per request, checked by the API).
Sequential keep-alive requests in alternating batches, so both see the same machine load.

Besides the rates, the CPU time per request of the proxy process (from /proc) and of this
process (the client, the demo API and IdP), so that a gap can be placed where it arises.

Run: `.venv/bin/python scripts/bench_dpop.py [--batches 6 --size 100]`."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from harness import CLIENT_ID, CLIENT_SECRET, Proxy  # noqa: E402

from proxy_addon.demo.api import ApiServer  # noqa: E402
from proxy_addon.demo.certs import make_pki  # noqa: E402
from proxy_addon.demo.idp import AuthServer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument(
        "--api-checks", action="store_true",
        help="let the demo API verify every proof too (its cost then counts against DPoP)",
    )  # fmt: skip
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pki = make_pki(work / "pki", ("localhost", "127.0.0.1", "example.test", "other.test"))
        idp = AuthServer(pki).start()
        idp.add_client(CLIENT_ID, CLIENT_SECRET)
        api = ApiServer(idp.is_valid, pki).start()
        api.dpop_jkt_of = idp.dpop_jkt_of
        if not args.api_checks:
            # The proxy's cost is what is measured: the API takes the proof's key on trust.
            api.dpop.verify = lambda proof, method, url, access_token=None: (  # type: ignore[method-assign]
                idp.dpop_jkt_of(access_token or "") or ""
            )
        cred = {"grant": "client_credentials", "token_url": idp.token_url,
                "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}  # fmt: skip
        proxy = Proxy(work, {
            "ca_certs": [str(pki.ca_cert)],
            "store": {"path": str(work / "db" / "t.db"), "key_file": str(work / "k" / "s.key")},
            "credentials": {"bearer": cred, "dpop": {**cred, "dpop": True}},
            "routes": [{"host": "example.test", "port": api.port, "credential": "bearer"},
                       {"host": "other.test", "port": api.port, "credential": "dpop"}],
        }).start("--quiet")  # fmt: skip
        try:
            urls = {"bearer": f"https://example.test:{api.port}/x",
                    "dpop": f"https://other.test:{api.port}/x"}  # fmt: skip
            sessions = {name: proxy.session() for name in urls}
            for name, url in urls.items():  # warm up: tokens, connections
                assert sessions[name].get(url, timeout=30).status_code == 200
            spent = dict.fromkeys(urls, 0.0)
            proxy_cpu = dict.fromkeys(urls, 0.0)
            own_cpu = dict.fromkeys(urls, 0.0)
            assert proxy.proc is not None
            pid = proxy.proc.pid
            for _ in range(args.batches):
                for name, url in urls.items():
                    cpu, own = _cpu_seconds(pid), time.process_time()
                    started = time.perf_counter()
                    for _ in range(args.size):
                        r = sessions[name].get(url, timeout=30)
                        assert r.status_code == 200, r.text
                    spent[name] += time.perf_counter() - started
                    proxy_cpu[name] += _cpu_seconds(pid) - cpu
                    own_cpu[name] += time.process_time() - own
            n = args.batches * args.size
            rates = {name: n / s for name, s in spent.items()}
            for name, rate in rates.items():
                print(f"{name:<7} {rate:8.1f} req/s  ({n} requests)   CPU per request: proxy "
                      f"{proxy_cpu[name] / n * 1e6:5.0f} us, client + API + IdP (this "
                      f"process) {own_cpu[name] / n * 1e6:5.0f} us")  # fmt: skip
            print(f"dpop/bearer {rates['dpop'] / rates['bearer']:.3f}x")
        finally:
            proxy.stop()
            api.stop()
            idp.stop()


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    main()
