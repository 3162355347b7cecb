"""Preflight fixtures from booted guests: the host tree the guest captured, labelled.

``retina-preflight --root`` reads a host tree; the guest copies the files preflight reads (see
guest.capture_tree) and records the live-only probes' results. Saved under
tests/preflight/hosts/debian-<release>/ with SOURCE.md (where it came from, what was reduced)
and live.json (the live run's verdicts, which ``--root`` on the tree must reproduce).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

SOURCE = """\
# {name}: captured from a booted guest, not hand-written

Captured by `scripts/kernel_matrix.sh` (kernels/retina_kernels/guest.py `capture_tree`) inside a
qemu guest running Debian's kernel package `{package}` {version} (suite {suite}, `uname -r`
{release}) with the matrix's Debian 12 root file system (the agent image's packages: no kernel
headers, as on a node without a headers package).

What is as the guest had it: the kernel config (`boot/config-{release}`, from the package), the
tracefs formats (`sys/kernel/tracing/events/...`), `kprobe_events`, `proc/` files, `etc/os-release`
(Debian 12: the root file system's, whatever the kernel's suite); no `lib/modules/{release}/build`.
What is reduced: `sys/kernel/btf/vmlinux` holds the first {btf_kept} bytes of the guest's
{btf_size}-byte file (preflight checks BTF's presence and size only); only the files preflight
reads were copied. `retina-preflight.probes.json` holds the live-only probes' results (bpf(),
libbpf, TC clsact, capabilities) from the guest's live run; `live.json` that run's verdicts.
"""


def save_fixture(result: dict, result_dir: Path, hosts: Path) -> Path:
    """Copy the guest's tree to ``hosts/debian-<release>`` with SOURCE.md and live.json."""
    release = result["kernel"]["release"]
    name = f"debian-{release}"
    target = hosts / name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(result_dir / "tree", target, symlinks=True)
    host, tree = result["host"], result["tree"]
    (target / "SOURCE.md").write_text(
        SOURCE.format(
            name=name,
            package=host["package"],
            version=host["package_version"],
            suite=host["suite"],
            release=release,
            btf_kept=tree["btf_kept_bytes"],
            btf_size=tree["btf_size"],
        )
    )
    report = result["preflight"]["report"]
    live = {
        "exit": result["preflight"]["exit"],
        "checks": {c["id"]: c["verdict"] for c in report["checks"]},
        "plugins": {p["name"]: p["status"] for p in report["plugins"]},
        "agent": {n: p["state"] for n, p in result.get("lab", {}).get("plugins", {}).items()},
    }
    (target / "live.json").write_text(json.dumps(live, indent=1, sort_keys=True) + "\n")
    return target
