# Sourced by scripts/test and scripts/demo: make .venv with a supported Python
# (3.10-3.13) and install the project with the given extras into it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VECTORSTORE_VENV:-$root/.venv}"

find_python() {
    for py in "${PYTHON:-}" python3.13 python3.12 python3.11 python3.10 python3; do
        [ -n "$py" ] || continue
        command -v "$py" >/dev/null 2>&1 || continue
        if "$py" -c 'import sys; sys.exit(not (3, 10) <= sys.version_info[:2] <= (3, 13))' 2>/dev/null; then
            echo "$py"; return 0
        fi
    done
    echo "error: need Python 3.10-3.13 (set PYTHON=/path/to/python)" >&2
    return 1
}

ensure_venv() {  # ensure_venv EXTRAS
    if [ ! -x "$venv/bin/python" ]; then
        "$(find_python)" -m venv "$venv"
        "$venv/bin/python" -m pip install --quiet --upgrade pip
    fi
    local stamp="$venv/.installed-$1" deps="$root/pyproject.toml"
    if [ ! -f "$stamp" ] || [ "$deps" -nt "$stamp" ]; then
        "$venv/bin/python" -m pip install --quiet -e "$root[$1]"
        touch "$stamp"
    fi
}
