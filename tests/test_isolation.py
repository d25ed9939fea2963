"""The suite never touches the real user's files: HOME and the XDG directories are fresh."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_home_is_a_fresh_directory_for_tests_and_their_processes(isolated_home: Path) -> None:
    assert Path.home() == isolated_home
    assert os.environ["XDG_STATE_HOME"].startswith(str(isolated_home))
    seen = subprocess.run(
        [sys.executable, "-c", "import pathlib; print(pathlib.Path.home())"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert seen == str(isolated_home)
    assert "AUTHPROXY_KEY" not in os.environ
