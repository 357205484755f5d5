#!/usr/bin/env bash
# Installs what celery-batching needs on a fresh Debian/Ubuntu machine (run as root):
# redis-server and redis-sentinel from the distribution, a virtual environment in .venv with the
# project and its extras. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
    echo "==> installing redis-server (Debian package)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq redis-server >/dev/null
    # The package starts a system-wide instance on 6379; the project uses private ones.
    (service redis-server stop || systemctl stop redis-server) >/dev/null 2>&1 || true
fi
if ! command -v redis-sentinel >/dev/null 2>&1; then
    echo "==> installing redis-sentinel (Debian package; the Sentinel tests start private ones)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq redis-sentinel >/dev/null
    (service redis-sentinel stop || systemctl stop redis-sentinel) >/dev/null 2>&1 || true
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
