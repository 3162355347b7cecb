#!/usr/bin/env bash
# Boots Debian's kernels (5.10, 6.1, 6.1-cloud, 6.12 by default) under qemu with the project
# installed, runs retina-preflight, the agent with every plugin and a small lab in each, and
# writes the report table to docs/kernels.md. Run as root after ./scripts/setup.sh.
# Arguments go to retina-kernel-matrix (e.g. --kernels 6.1,5.10 --out /tmp/km); see --help.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # images/ (the image build's wheel and base settings)
exec .venv/bin/retina-kernel-matrix --docs docs/kernels.md --fixtures tests/preflight/hosts "$@"
