#!/usr/bin/env bash
# Sets up everything (scripts/setup.sh) and runs the whole test suite.
# Tests start their own private redis-server, workers, Django and Flower on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/install_browser.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# Static checks first, each failing the run: lint, formatting, types (strict, library), import contracts.
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/lint-imports
# Docs: the site (mkdocs.yml, docs/) builds offline with warnings as errors, into site/.
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet
exec .venv/bin/python -m pytest "$@"
