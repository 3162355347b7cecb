#!/usr/bin/env bash
# Installs everything this project needs on a Debian 12 machine (run as root), idempotently:
# Debian packages, tracefs/debugfs/bpffs mounts, the agent's BPF objects (compiled here with
# clang, loaded by the agent with libbpf), a virtual environment in .venv with the project, and
# the npm test servers.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

if [ "$(id -u)" -ne 0 ]; then
  echo "setup.sh: run as root (it installs Debian packages and mounts tracefs/bpffs)" >&2
  exit 1
fi

APT_PACKAGES=(
  python3 python3-venv python3-dev bpftool libbpf1
  clang libbpf-dev  # BPF C compiled into objects by retina_agent.bpf.build (the agent loads them with libbpf1)
  iproute2 iptables nftables conntrack ethtool iperf3 dnsmasq-base tcpdump procps kmod
  prometheus prometheus-alertmanager git ca-certificates
  gcc libc6-dev libnetfilter-queue-dev  # builds netfilterqueue (tests' stand-in for netem delay)
  podman runc debootstrap  # container images built offline (scripts/build_images.sh)
  python3-nftables graphviz ipset  # netfilter plugin (libnftables JSON) and its tests; map pictures
  docker-registry containerd  # image delivery tests: a real registry (--push) and ctr import (images role)
  qemu-system-x86 e2fsprogs  # the kernel matrix: Debian kernels booted under qemu (tests/kernels)
  linux-perf  # bench/datapath.py: CPU time in BPF programs from samples, without run-time accounting
)
# Node.js for the Azurite test server: Debian's, unless a node/npm is already installed.
command -v npm >/dev/null 2>&1 || APT_PACKAGES+=(nodejs npm)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  echo "setup.sh: installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Kernel file systems the agent uses (the agent mounts them itself too when it can).
mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing
mountpoint -q /sys/kernel/debug || mount -t debugfs nodev /sys/kernel/debug
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf

# Virtual environment on Debian's python3; python3-nftables (built for it) is linked in.
if [ ! -x .venv/bin/python ]; then
  /usr/bin/python3 -m venv .venv
fi
SITE=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
ln -sfn /usr/lib/python3/dist-packages/nftables "$SITE/nftables"

# BPF objects (agent/retina_agent/bpf/objects/*.bpf.o): compiled before the project is installed
# (stale ones only), with Debian's python3 (the build needs nothing from the venv).
PYTHONPATH=agent /usr/bin/python3 -m retina_agent.bpf.build

STAMP=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -e "$STAMP" ]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e ".[test]"
  touch "$STAMP"
fi

# npm test servers (Azurite for Azure Blob).
if [ ! -x .tools/node_modules/.bin/azurite-blob ]; then
  mkdir -p .tools
  (cd .tools && npm install --silent --no-audit --no-fund azurite@3 >/dev/null)
fi

echo "setup.sh: ready (venv: $ROOT/.venv)"
