#!/usr/bin/env bash
# Installs what the tests need (scripts/setup.sh, idempotent) and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="$PWD/.venv/bin:$PWD/.tools/node_modules/.bin:$PATH"
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
