#!/usr/bin/env bash
# Builds kubectl-retina as one file (a PEX) for every CPython 3.9-3.13 found here, its krew
# archive and manifest, into build/kubectl-plugin/ (see delivery/kubectl_plugin.py).
#   ./scripts/build_kubectl_plugin.sh [--out DIR] [--url-base URL] [--python PATH ...]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/pex ]; then
  echo "build_kubectl_plugin.sh: .venv or pex is missing: run ./scripts/setup.sh first" >&2
  exit 1
fi
exec .venv/bin/python -m delivery.kubectl_plugin "$@"
