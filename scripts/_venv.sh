# Sourced by scripts/demo, scripts/test and scripts/bench: finds a Python >= 3.12, creates .venv
# beside the project and keeps it in step with pyproject.toml. Sets $VENV_PY.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"

_py_ok() {  # is "$1" a Python >= 3.12 with venv?
    "$1" -c 'import sys, venv; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1
}

find_python() {
    local cand
    for cand in "${AUTHPROXY_PYTHON:-}" python3.13 python3.12 python3 \
        $(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.1[2-9]*/bin/python3 2>/dev/null | sort -rV); do
        [ -n "$cand" ] || continue
        if command -v "$cand" >/dev/null 2>&1 && _py_ok "$cand"; then
            command -v "$cand"
            return 0
        fi
    done
    return 1
}

if [ ! -x "$VENV/bin/python" ] || ! _py_ok "$VENV/bin/python"; then
    if ! PY="$(find_python)"; then
        echo "authproxy needs Python >= 3.12 (with the venv module); none was found." >&2
        echo "Looked for: \$AUTHPROXY_PYTHON, python3.13, python3.12, python3, pyenv's versions." >&2
        echo "Install one (e.g. 'apt-get install python3.12-venv' or 'pyenv install 3.12') and retry," >&2
        echo "or point AUTHPROXY_PYTHON at it." >&2
        exit 1
    fi
    echo "Creating $VENV with $PY" >&2
    rm -rf "$VENV"
    "$PY" -m venv "$VENV"
fi

# What to install: the package alone (scripts/demo sets AUTHPROXY_VENV_EXTRAS= before sourcing
# this), or with extras such as "test" (the default). A stamp per extras set says what is there.
EXTRAS="${AUTHPROXY_VENV_EXTRAS-test}"
WANT="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
STAMP="$VENV/.authproxy-installed${EXTRAS:+-$EXTRAS}"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    echo "Installing authproxy${EXTRAS:+ and its $EXTRAS dependencies} into $VENV" >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        -e "$ROOT${EXTRAS:+[$EXTRAS]}"
    echo "$WANT" >"$STAMP"
    # The package alone is in place too: the demo need not install again.
    [ -z "$EXTRAS" ] || echo "$WANT" >"$VENV/.authproxy-installed"
fi
VENV_PY="$VENV/bin/python"
export PATH="$VENV/bin:$PATH"
