"""`authproxy demo` says how to reuse it from another terminal, and that works."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path


def test_the_demo_can_be_used_from_another_terminal(tmp_path: Path) -> None:
    out = tmp_path / "demo.out"
    with out.open("w") as sink:
        demo = subprocess.Popen(
            [sys.executable, "-m", "proxy_addon", "demo"],
            stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT, cwd=tmp_path,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while "The proxy keeps running" not in (text := out.read_text()):
            assert demo.poll() is None and time.monotonic() < deadline, text
            time.sleep(0.05)  # polling the demo's output file
        assert "From another terminal, while the demo runs:" in text
        env_line = re.search(r'^  eval "\$\((authproxy --config \S+ env)\)"; curl (\S+)$',
                             text, re.M)  # fmt: skip
        assert env_line is not None, text
        assert re.search(r"^  export AUTHPROXY_DEMO_SECRET=\S+$", text, re.M)
        # Another terminal: no secret in its environment.
        other = {k: v for k, v in os.environ.items()
                 if k != "AUTHPROXY_DEMO_SECRET" and not k.lower().endswith("_proxy")}  # fmt: skip
        cli = env_line[1].replace("authproxy", f"{sys.executable} -m proxy_addon", 1)
        script = f'eval "$({cli})" || exit 99; curl -sS --fail --max-time 30 {env_line[2]}'
        r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=other,
                           timeout=60)  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["token_fp"]
        tokens = subprocess.run(
            [*cli.removesuffix(" env").split(), "tokens"], capture_output=True, text=True,
            env=other, timeout=60,
        )  # fmt: skip
        assert tokens.returncode == 0, tokens.stderr
        assert "valid" in tokens.stdout
        demo.send_signal(signal.SIGTERM)
        demo.wait(timeout=30)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
