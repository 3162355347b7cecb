# Copyright: retina-onprem contributors
# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
"""The agent's plugins: the one place naming them and what each needs from the node.

Everything else reads this table or is generated from it:

- the agent (``retina_agent.catalogue`` is this file, through a symlink): the valid and the
  default ``enabledPlugin`` names;
- the preflight checks (``plugins.py``): which checks block or degrade each plugin;
- the ``retina_preflight`` module's ``plugins`` choices;
- static YAML, rewritten by ``scripts/plugin_catalogue.py`` (``--check`` is run by the tests and
  fails when a file drifts): the module's DOCUMENTATION, the agent and preflight roles'
  argument specs and defaults, and the agent role's per-plugin capabilities.

Adding a plugin (see docs/plugins.md): add its entry below, run
``.venv/bin/python scripts/plugin_catalogue.py``, then write its class in
``retina_agent/plugins/`` and add it to ``REGISTRY`` and its options to ``config.PluginOptions``
(tests/installer/test_plugin_catalogue.py fails until the agent has every plugin named here).

Plain data, standard library only: this file ships to managed nodes as module_utils and must
parse on the oldest node Python (3.6).
"""

from typing import NamedTuple, Tuple

# Preflight checks every eBPF plugin needs: the bpf() syscall loads the objects compiled into the
# agent image (no compiler, no kernel headers on the node), attached through tracefs or TC; maps
# are pinned in bpffs.
EBPF_CHECKS = ("kernel_version", "bpf_syscall", "tracefs", "bpffs")

# Linux capabilities of an eBPF plugin: load programs and read maps (BPF), attach to tracepoints
# and read perf buffers (PERFMON), raise the memlock limit (SYS_RESOURCE). TC plugins also add
# clsact qdiscs and filters (NET_ADMIN).
EBPF_CAPABILITIES = ("BPF", "PERFMON", "SYS_RESOURCE")
TC_CAPABILITIES = EBPF_CAPABILITIES + ("NET_ADMIN",)


class PluginSpec(NamedTuple):
    """One agent plugin, by its ``enabledPlugin`` name."""

    name: str
    hook: str  # where it hooks into the kernel, in words (reports and docs)
    default: bool  # enabled when ``enabledPlugin`` is not set (Retina's basic-mode default)
    ebpf: bool  # loads eBPF programs: needs EBPF_CHECKS
    capabilities: Tuple[str, ...]  # what the agent container needs for it
    needs: Tuple[str, ...] = ()  # preflight checks that block it when they fail
    strict: Tuple[str, ...] = ()  # ... that block it when they warn or fail
    degrades: Tuple[str, ...] = ()  # ... that degrade it on warn and block it on fail

    @property
    def net_admin(self) -> bool:
        return "NET_ADMIN" in self.capabilities


_PLUGINS = (
    PluginSpec("linuxutil", "procfs, sysfs and ethtool only", default=True, ebpf=False, capabilities=()),
    PluginSpec(
        "packetforward",
        "TC clsact on host interfaces",
        default=True,
        ebpf=True,
        capabilities=TC_CAPABILITIES,
        needs=("tc_clsact",),
    ),
    PluginSpec(
        "dropreason",
        "tracepoint skb:kfree_skb (reason field); BTF for drop bytes and pod attribution",
        default=True,
        ebpf=True,
        capabilities=EBPF_CAPABILITIES,
        degrades=("tracepoint:skb:kfree_skb", "btf"),
    ),
    PluginSpec(
        "dns",
        "TC clsact, DNS parsed in the kernel",
        default=True,
        ebpf=True,
        capabilities=TC_CAPABILITIES,
        needs=("tc_clsact",),
    ),
    PluginSpec(
        "tcpretrans",
        "tracepoint tcp:tcp_retransmit_skb",
        default=True,
        ebpf=True,
        capabilities=EBPF_CAPABILITIES,
        needs=("tracepoint:tcp:tcp_retransmit_skb",),
    ),
    PluginSpec(
        "packetparser",
        "TC clsact on pod veths (pod-level flows)",
        default=False,
        ebpf=True,
        capabilities=TC_CAPABILITIES,
        needs=("tc_clsact",),
    ),
    PluginSpec(
        "latency",
        "TC clsact, API-server latency in the kernel",
        default=False,
        ebpf=True,
        capabilities=TC_CAPABILITIES,
        needs=("tc_clsact",),
    ),
    # Reads the kernel's own rule counters (iptables-legacy, iptables-nft, nftables) each
    # interval; reading other network namespaces' rules (plugins.netfilter.namespaces) also needs
    # SYS_ADMIN (setns) and /run/netns, which the role adds only when namespaces are configured.
    PluginSpec(
        "netfilter",
        "netfilter rule counters (iptables-legacy, iptables-nft, nftables), per interval",
        default=False,
        ebpf=False,
        capabilities=("NET_ADMIN",),
    ),
)

PLUGINS = {spec.name: spec for spec in _PLUGINS}
PLUGIN_NAMES = tuple(PLUGINS)
DEFAULT_PLUGINS = tuple(spec.name for spec in _PLUGINS if spec.default)
