# Sourced by scripts/test and scripts/demo: create or reuse .venv and install the project.
# Works on a fresh Debian/Ubuntu machine (installs python3-venv with apt-get if needed and
# we are root) and on machines with their own Python (pyenv, Homebrew).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"

if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "p2pupdate needs Python >= 3.11 (found: $("$PY" --version 2>&1)); set PYTHON=..." >&2
    exit 2
fi

if [ ! -x .venv/bin/python ]; then
    echo "==> creating .venv with $("$PY" --version)"
    if ! "$PY" -m venv .venv 2>/dev/null; then
        rm -rf .venv
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            echo "==> installing python3-venv"
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
            "$PY" -m venv .venv
        else
            echo "cannot create a virtualenv: install python3-venv" >&2
            exit 2
        fi
    fi
fi

pip_install() {
    # pip's own exit code decides; its noise about unreachable local indexes is dropped.
    local log
    log="$(mktemp)"
    if ! .venv/bin/python -m pip install -q --disable-pip-version-check "$@" >"$log" 2>&1; then
        grep -v '^WARNING: Location' "$log" >&2 || true
        rm -f "$log"
        echo "pip install $* failed" >&2
        exit 2
    fi
    grep -v '^WARNING: Location' "$log" || true
    rm -f "$log"
}

# System tools for real network namespaces (iproute2, nftables NAT, coturn for STUN/TURN;
# systemd-analyze for the unit tests): the network tests (scripts/test) and the demo's
# homes part (scripts/demo) need them.  Installed when run as root on Debian and they are
# missing; quiet and idempotent: nothing is fetched when all are present.  If the install
# fails (no network), the caller goes on and what needs a missing tool skips, saying so.
netlab_tools() {  # netlab_tools CALLER
    local missing=()
    command -v ip >/dev/null || missing+=(iproute2)
    command -v nft >/dev/null || missing+=(nftables)
    command -v turnserver >/dev/null || missing+=(coturn)
    command -v systemd-analyze >/dev/null || missing+=(systemd)
    if [ "${#missing[@]}" -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "==> installing ${missing[*]}"
        if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >/dev/null 2>&1; then
            echo "$1: could not install ${missing[*]}; what needs them will skip" >&2
        fi
    fi
}

# Reinstall only when pyproject.toml changed since the last install into this .venv.
stamp=".venv/.p2pupdate-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "==> installing p2pupdate and its dev tools into .venv"
    pip_install --upgrade pip
    pip_install -e '.[dev]'
    echo "$want" >"$stamp"
fi
export PATH="$ROOT/.venv/bin:$PATH"
