"""One shape for a ruleset, whichever backend it came from."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Rule:
    """One rule. ``target`` is the verdict or jump in iptables spelling (DROP, REJECT, ACCEPT,
    RETURN, MARK, or a chain name); ``packets``/``bytes`` are None when the kernel keeps no
    counter for it (a native nftables rule without a ``counter`` statement)."""

    text: str
    target: str | None = None
    comments: list[str] = field(default_factory=list)
    packets: int | None = None
    bytes: int | None = None
    goto: bool = False


@dataclass
class Chain:
    name: str
    policy: str | None = None  # DROP / ACCEPT for base chains, None for user chains
    packets: int | None = None  # policy counters (iptables keeps them; native nft does not)
    bytes: int | None = None
    rules: list[Rule] = field(default_factory=list)

    def jumps(self) -> list[str]:
        return [r.target for r in self.rules if r.target and r.target not in VERDICTS]

    def comments(self) -> list[str]:
        return [c for r in self.rules for c in r.comments]


@dataclass
class Table:
    family: str  # ip, ip6, inet, bridge, arp, netdev
    name: str
    backend: str  # iptables-legacy, iptables-nft, nftables
    chains: dict[str, Chain] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """``ip filter``, ``ip6 nat``, ``inet calico``: nft's own way to name a table."""
        return f"{self.family} {self.name}"


VERDICTS = frozenset(
    {
        "ACCEPT",
        "DROP",
        "REJECT",
        "RETURN",
        "QUEUE",
        "NFQUEUE",
        "MARK",
        "LOG",
        "NFLOG",
        "MASQUERADE",
        "SNAT",
        "DNAT",
        "REDIRECT",
        "CONNMARK",
        "CT",
        "NOTRACK",
        "TRACE",
        "CHECKSUM",
        "TCPMSS",
        "SET",
        "AUDIT",
        "TEE",
        "CLASSIFY",
        "DSCP",
        "TOS",
        "TPROXY",
        "ULOG",
        "CONTINUE",
    }
)
DROP_TARGETS = frozenset({"DROP", "REJECT"})
