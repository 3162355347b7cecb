"""The drop counters of a ruleset: every DROP/REJECT rule and every dropping chain policy.

Label values are bounded so that a ruleset cannot blow up the series' size:

- ``rule``: the rule's text (iptables spec after ``-A CHAIN``, or nft's rendering), whitespace
  collapsed; longer than ``RULE_MAX`` (200) characters it is cut to 180 and ended with ``~`` and
  the first 12 hex digits of the SHA-256 of the whole text, so two long rules never share a
  value. A chain's policy is ``policy DROP``.
- ``policy``, ``policy_namespace``: at most 253 and 63 characters (Kubernetes' own limits); a
  drop that several policies share lists them sorted, comma-joined, cut at 253.
- ``chain``: at most 64 characters (iptables allows 28, nft 255).

Two rules with the same labels (identical text in one chain) are summed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from retina_agent.netfilter.model import DROP_TARGETS, Table
from retina_agent.netfilter.owners import name_owner

RULE_MAX = 200
RULE_KEEP = 180


@dataclass(frozen=True)
class DropKey:
    netns: str
    table: str
    chain: str
    rule: str
    owner: str
    policy: str
    policy_namespace: str


def bound_rule(text: str) -> str:
    text = " ".join(text.split())
    if len(text) <= RULE_MAX:
        return text
    return text[:RULE_KEEP] + "~" + hashlib.sha256(text.encode()).hexdigest()[:12]


def drop_counters(tables: list[Table], netns: str = "host") -> dict[DropKey, list[int]]:
    """{labels: [packets, bytes]} of every counted drop rule and dropping chain policy."""
    out: dict[DropKey, list[int]] = {}

    def put(table: Table, chain_name: str, rule_text: str, owner, packets: int, nbytes: int):
        key = DropKey(
            netns,
            table.label,
            chain_name[:64],
            rule_text,
            owner.owner,
            owner.policy[:253],
            owner.policy_namespace[:63],
        )
        total = out.setdefault(key, [0, 0])
        total[0] += packets
        total[1] += nbytes

    for table in tables:
        for chain in table.chains.values():
            for rule in chain.rules:
                if rule.target in DROP_TARGETS and rule.packets is not None:
                    put(
                        table,
                        chain.name,
                        bound_rule(rule.text),
                        name_owner(table, chain, rule),
                        rule.packets,
                        rule.bytes or 0,
                    )
            if chain.policy == "DROP" and chain.packets is not None:
                put(
                    table,
                    chain.name,
                    "policy DROP",
                    name_owner(table, chain, None),
                    chain.packets,
                    chain.bytes or 0,
                )
    return out


def uncounted(tables: list[Table]) -> int:
    """Drop rules and policies whose packets the kernel does not count (native nft without a
    ``counter`` statement, nft base chain policies)."""
    n = 0
    for table in tables:
        for chain in table.chains.values():
            n += sum(1 for r in chain.rules if r.target in DROP_TARGETS and r.packets is None)
            n += 1 if chain.policy == "DROP" and chain.packets is None else 0
    return n
