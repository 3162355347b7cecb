#!/usr/bin/env bash
# Builds the container images named in deploy/images.yaml (agent, operator) with rootful Podman,
# offline: a Debian 12 base from debootstrap (made once, then cached), the project's wheel, and
# images/<kind>/Containerfile. Prints each image's size and build time.
#   sudo ./scripts/build_images.sh [--rebuild-base] [--no-cache] [--save DIR] [--push REGISTRY [--insecure-registry]] [--no-build]
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "build_images.sh: run as root (rootful podman; debootstrap needs root)" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ] || ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null; then
  echo "build_images.sh: .venv, podman or debootstrap is missing: run ./scripts/setup.sh first" >&2
  exit 1
fi
exec .venv/bin/python -m images.build "$@"
