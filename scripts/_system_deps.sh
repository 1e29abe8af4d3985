# Sourced by scripts/check: the system packages the tests need (Debian), installed if missing.
# tinyproxy-bin is the bare daemon the user-data test runs; `tinyproxy` would also start a
# system service. Quiet, and a no-op, when everything is already there.
# shellcheck shell=bash

ensure_system_deps() {
    if command -v tinyproxy >/dev/null 2>&1; then
        return 0
    fi
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if ! command -v sudo >/dev/null 2>&1; then
            echo "the tests need tinyproxy: run 'apt-get install tinyproxy-bin' as root" >&2
            exit 1
        fi
        sudo="sudo"
    fi
    echo "== installing tinyproxy-bin (needed by tests/test_user_data.py)"
    local out
    # apt's chatter (debconf notes) is shown only when something failed.
    if ! out=$($sudo apt-get update -qq 2>&1 &&
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tinyproxy-bin 2>&1); then
        printf '%s\n' "$out" >&2
        echo "could not install tinyproxy-bin (needed by tests/test_user_data.py)" >&2
        exit 1
    fi
    if ! command -v tinyproxy >/dev/null 2>&1; then
        echo "tinyproxy-bin installed, but no tinyproxy on PATH (expected /usr/bin/tinyproxy)" >&2
        exit 1
    fi
}

ensure_system_deps
