#!/usr/bin/env bash
# Installs what celery-batching needs on a fresh Debian/Ubuntu machine (run as root):
# redis-server and redis-sentinel from the distribution, a virtual environment in .venv with the
# project and its extras. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

# A Debian package, installed once; it starts a system-wide instance, which the
# project does not use (tests and the demo start private ones), so it is stopped.
install_package() {
    local package=$1
    if ! command -v "$package" >/dev/null 2>&1; then
        echo "==> installing $package (Debian package)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq "$package" >/dev/null
        (service "$package" stop || systemctl stop "$package") >/dev/null 2>&1 || true
    fi
}
install_package redis-server
install_package redis-sentinel  # the Sentinel tests start private sentinels

if ! command -v ip >/dev/null 2>&1; then
    echo "==> installing iproute2 (ip netns, for tests/test_multihost.py)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq iproute2 >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    echo "==> creating .venv"
    python3 -m venv .venv
fi
stamp=.venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)
if [ ! -f "$stamp" ]; then
    echo "==> installing Python packages (first run takes a few minutes)"
    .venv/bin/pip install -q --upgrade pip
    # The CPU build of torch first, so nothing pulls a multi-GB CUDA build.
    .venv/bin/pip install -q "torch==2.13.0"
    .venv/bin/pip install -q -e ".[models,django,dev,docs]"
    rm -f .venv/.installed-*
    touch "$stamp"
fi
