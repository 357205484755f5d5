#!/usr/bin/env bash
# Installs headless Chromium and ChromeDriver from Debian's packages, for the
# browser test of the demo page (tests/test_django_browser.py). Run as root;
# idempotent: a second run only checks.
set -euo pipefail

if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    echo "==> installing chromium and chromium-driver (Debian packages)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq chromium chromium-driver >/dev/null
fi
