#!/usr/bin/env bash
# The kernel matrix: Debian's kernels booted under qemu with preflight, the agent and a lab
# (kernels/retina_kernels; docs/kernels.md is its report). Run as root after ./scripts/setup.sh.
# Arguments go to the matrix (e.g. --kernels 6.1,5.10 --out /tmp/km); see --help.
set -euo pipefail
cd "$(dirname "$0")/.."
# images/ (the image build's wheel and base settings), the test lab and the matrix: not installed.
export PYTHONPATH="$PWD:$PWD/lab:$PWD/kernels${PYTHONPATH:+:$PYTHONPATH}"
exec .venv/bin/python -m retina_kernels.cli --docs docs/kernels.md --fixtures tests/preflight/hosts "$@"
