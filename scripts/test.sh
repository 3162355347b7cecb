#!/usr/bin/env bash
# Installs what the tests need (scripts/setup.sh, idempotent) and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="$PWD/.venv/bin:$PWD/.tools/node_modules/.bin:$PATH"
.venv/bin/ruff check .
.venv/bin/ruff format --check .  # one formatter for the tree (ruff format)
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
