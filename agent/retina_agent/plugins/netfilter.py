"""netfilter: packets and bytes dropped by each DROP/REJECT rule and dropping chain policy,
named by the rule and by what wrote it (Calico, kube-router, kube-proxy), no eBPF.

Each harvest reads the counters the kernel already keeps for every rule (iptables-legacy,
iptables-nft, native nftables; see ``retina_agent.netfilter.reader``) in the host network
namespace and in the namespaces listed in ``plugins.netfilter.namespaces``; nothing runs per
packet. The owner and the policy come from the chain layout and rule comments
(``retina_agent.netfilter.owners``); label values are bounded (``retina_agent.netfilter.drops``).

- ``netfilter_drop_count``, ``netfilter_drop_bytes`` (cumulative, Retina-style untyped):
  ``netns, table, chain, rule, owner, policy, policy_namespace``; only rules that have dropped
  something unless ``includeZero`` (so an idle 10,000-rule Calico node adds no series)
- ``netfilter_rules{netns,backend}``: rules read; ``netfilter_uncounted_drop_rules{netns}``:
  drop rules the kernel keeps no counter for (native nft without ``counter``, nft policies)
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Iterable
from pathlib import Path

from retina_agent.metrics import add, gauge, retina_gauge
from retina_agent.netfilter import drops, reader
from retina_agent.plugins.base import Plugin, PluginUnavailable

log = logging.getLogger(__name__)
HOST = "host"
LABELS = ["netns", "table", "chain", "rule", "owner", "policy", "policy_namespace"]


class Netfilter(Plugin):
    name = "netfilter"

    def start(self, loaded=None) -> None:
        super().start(loaded)
        self.options = self.ctx.config.plugins.netfilter
        self.counters: dict[drops.DropKey, list[int]] = {}
        self.rules: dict[tuple[str, str], int] = {}
        self.uncounted: dict[str, int] = {}
        self._reported: set[str] = set()
        first = self._read_all()
        if not first:
            raise PluginUnavailable(
                "no network namespace could be read: " + "; ".join(sorted(self._reported))
            )

    def _namespaces(self) -> list[tuple[str, Path | None]]:
        found: list[tuple[str, Path | None]] = []
        for entry in self.options.namespaces:
            if entry == HOST:
                found.append((HOST, None))
                continue
            path = reader.netns_path(entry)
            matches = sorted(glob.glob(str(path))) if glob.has_magic(str(path)) else [str(path)]
            found += [(Path(m).name, Path(m)) for m in matches]
        return found

    def _read_all(self) -> int:
        counters: dict[drops.DropKey, list[int]] = {}
        rules: dict[tuple[str, str], int] = {}
        uncounted: dict[str, int] = {}
        read = 0
        for label, path in self._namespaces():
            try:
                ruleset = reader.read_netns(path)
            except OSError as exc:  # a pod's namespace went away, or no permission
                self._report(f"{label}: {exc}")
                continue
            read += 1
            for problem in ruleset.problems:
                self._report(f"{label}: {problem}")
            for key, value in drops.drop_counters(ruleset.tables, label).items():
                if value[0] or self.options.include_zero:
                    counters[key] = value
            for table in ruleset.tables:
                n = sum(len(c.rules) for c in table.chains.values())
                rules[(label, table.backend)] = rules.get((label, table.backend), 0) + n
            uncounted[label] = drops.uncounted(ruleset.tables)
        with self._lock:
            self.counters, self.rules, self.uncounted = counters, rules, uncounted
        return read

    def _report(self, problem: str) -> None:
        if problem not in self._reported:  # once per distinct problem, not every interval
            self._reported.add(problem)
            log.warning("netfilter: %s", problem)

    def harvest(self) -> None:
        self._read_all()

    def collect(self) -> Iterable:
        with self._lock:
            counters, rules, uncounted = self.counters, self.rules, self.uncounted
        count = retina_gauge(
            "netfilter_drop_count",
            "Packets dropped by a netfilter rule or chain policy (kernel rule counter), by rule and owner",
            LABELS,
        )
        nbytes = retina_gauge(
            "netfilter_drop_bytes",
            "Bytes dropped by a netfilter rule or chain policy (kernel rule counter), by rule and owner",
            LABELS,
        )
        for key, (packets, size) in sorted(counters.items(), key=lambda kv: tuple(vars(kv[0]).values())):
            labels = [key.netns, key.table, key.chain, key.rule, key.owner, key.policy, key.policy_namespace]
            add(count, labels, packets)
            add(nbytes, labels, size)
        total = gauge("netfilter_rules", "Netfilter rules read in the last harvest", ["netns", "backend"])
        for (netns, backend), n in sorted(rules.items()):
            add(total, [netns, backend], n)
        blind = gauge(
            "netfilter_uncounted_drop_rules",
            "Drop rules and chain policies the "
            "kernel keeps no counter for (native nftables without a counter "
            "statement, nftables chain policies)",
            ["netns"],
        )
        for netns, n in sorted(uncounted.items()):
            add(blind, [netns], n)
        return [count, nbytes, total, blind]
