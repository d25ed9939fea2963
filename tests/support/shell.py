"""Reading back what `authproxy env` prints for a POSIX shell."""

from __future__ import annotations

import shlex


def sh_values(output: str) -> dict[str, str]:
    """The variables of `export NAME=value` lines (comments skipped), as a shell would set them."""
    values = {}
    for line in output.splitlines():
        if line.startswith("#"):
            continue
        word, name_value = shlex.split(line)
        assert word == "export", line
        name, _, value = name_value.partition("=")
        values[name] = value
    return values
