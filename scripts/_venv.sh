# Sourced by scripts/demo and scripts/check: makes ./.venv with the project installed.
# Usage: ensure_venv [EXTRAS]   (e.g. ensure_venv dev)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
# Exact versions of every dependency (dev tools included): the gate runs the same tools everywhere.
CONSTRAINTS="$ROOT/constraints-dev.txt"

ensure_venv() {
    local extras="${1:-}"
    local python="${PYTHON:-python3}"
    if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo "cloudproxy needs Python 3.11 or newer (set PYTHON=/path/to/python3.11)" >&2
        exit 1
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        "$python" -m venv "$VENV"
    fi
    # Reinstall only when pyproject.toml, the pins or the extras changed: a no-op run stays fast.
    local key
    key="$(cat "$ROOT/pyproject.toml" "$CONSTRAINTS" | sha256sum | cut -c1-16)"
    local stamp="$VENV/.installed-$key-${extras:-base}"
    [ -f "$stamp" ] && return 0
    # The dev install is a superset of the plain one, so scripts/demo (no extras) accepts it and
    # does not undo what scripts/check installed.
    [ -z "$extras" ] && [ -f "$VENV/.installed-$key-dev" ] && return 0
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    local target="$ROOT"
    [ -n "$extras" ] && target="$ROOT[$extras]"
    "$VENV/bin/python" -m pip install --quiet -c "$CONSTRAINTS" -e "$target"
    rm -f "$VENV"/.installed-*
    touch "$stamp"
}
