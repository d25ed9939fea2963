"""`authproxy ARGS` run in the test's own process: `cli.main` with its output captured.

For commands whose behaviour needs no process of their own (config errors, `check`, `env`,
`completion`, `login` of a credential without sign-in ...): milliseconds instead of the second
a Python start with mitmproxy's imports takes."""

from __future__ import annotations

import signal
from dataclasses import dataclass

import pytest

from proxy_addon.cli import main

__all__ = ["Done", "authproxy"]


@dataclass(frozen=True, slots=True)
class Done:
    """As subprocess.CompletedProcess has it: exit status, stdout, stderr."""

    returncode: int
    stdout: str
    stderr: str


def authproxy(capsys: pytest.CaptureFixture[str], *args: str) -> Done:
    """`authproxy *args`; argparse's own exits (--version, a usage error) count as a status."""
    capsys.readouterr()  # only this command's output
    sigterm = signal.getsignal(signal.SIGTERM)  # main() installs its own handler
    try:
        code = main(list(args))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    out, err = capsys.readouterr()
    return Done(code, out, err)
