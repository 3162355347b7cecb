# Copyright: retina-onprem contributors
# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
"""All node checks, in the order later checks rely on (memlock needs caps)."""

from typing import List

from . import filesystems, kernel, live_probes, privileges, tracepoints
from .context import NodeContext
from .model import CheckResult


def node_checks(ctx: NodeContext) -> List[CheckResult]:
    def add(result: CheckResult) -> None:
        ctx.results[result.id] = result

    add(kernel.check_kernel_version(ctx))
    add(kernel.check_btf(ctx))
    add(kernel.check_kernel_headers(ctx))
    add(live_probes.check_bpf_syscall(ctx))
    add(live_probes.check_libbpf(ctx))
    for fs in ("bpffs", "tracefs", "debugfs"):
        add(filesystems.check_filesystem(ctx, fs))
    tracefs = filesystems.tracefs_dir(ctx)
    for need in tracepoints.TRACEPOINTS:
        add(tracepoints.check_tracepoint(ctx, need, tracefs))
    add(kernel.check_kprobes(ctx, tracefs))
    add(live_probes.check_tc_clsact(ctx))
    add(privileges.check_capabilities(ctx))
    add(privileges.check_memlock(ctx))
    add(filesystems.check_cgroup(ctx))
    return list(ctx.results.values())
