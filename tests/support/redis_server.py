"""A real redis-server for tests: a free 127.0.0.1 port, a password, AOF, all in a tmp dir.

`RedisServer(tmp_path)` starts nothing; `start()` does and waits until it answers. `kill()`
is kill -9; `start()` again brings it back on the same port with the same data directory
(AOF with `appendfsync always`, so every acknowledged write survives).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def available() -> bool:
    return os.access(REDIS_SERVER, os.X_OK)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    def __init__(self, tmp_path: Path, *, appendfsync: str = "always") -> None:
        self.dir = tmp_path / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.password = "pw-" + secrets.token_hex(12)
        self.port = _free_port()
        self.appendfsync = appendfsync
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def client(self):  # type: ignore[no-untyped-def]
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password)

    def start(self) -> RedisServer:
        args = [
            REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
            "--requirepass", self.password, "--dir", str(self.dir),
            "--appendonly", "yes", "--appendfsync", self.appendfsync, "--save", "",
            "--daemonize", "no", "--logfile", str(self.dir / "redis.log"),
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                if self.client().ping():
                    return self
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log = (self.dir / "redis.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"redis-server did not start:\n{log}") from None
            time.sleep(0.02)

    def kill(self) -> None:
        """kill -9, and wait until the port is free again."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def dump(self) -> bytes:
        """Everything the server holds, raw: each key's name, DUMP payload and readable value."""
        r = self.client()
        out = []
        for key in r.scan_iter(count=1000):
            out.append(key)
            out.append(r.dump(key) or b"")
            kind = r.type(key)
            if kind == b"hash":
                for f, v in r.hgetall(key).items():
                    out += [f, v]
            elif kind == b"string":
                out.append(r.get(key) or b"")
        return b"\n".join(out)
