"""``iptables-save -c`` output -> tables (iptables-legacy and iptables-nft print the same text).

Every rule line carries the kernel's counters: ``[packets:bytes] -A CHAIN spec``; a chain line
``:INPUT DROP [packets:bytes]`` carries the policy's. Tables that iptables-nft cannot show
(native nftables tables that happen to use an iptables name) are printed as a comment,
``# Table `filter' is incompatible, use 'nft' tool.``: ``incompatible`` returns their names so
the nftables reader reads them instead.
"""

from __future__ import annotations

import re

from retina_agent.netfilter.model import Chain, Rule, Table

_CHAIN = re.compile(r"^:(\S+) (\S+)(?: \[(\d+):(\d+)\])?$")
_COUNTED_RULE = re.compile(r"^\[(\d+):(\d+)\] -A (\S+) ?(.*)$")
_RULE = re.compile(r"^-A (\S+) ?(.*)$")
_INCOMPATIBLE = re.compile(r"^# Table `([^']+)' is incompatible")


# One token of a rule spec: a double-quoted string (iptables-save escapes " and \\ inside it
# with a backslash) or a run of non-blanks. A regular expression, not shlex: shlex took 0.7 ms
# per rule, most of a 10,000-rule harvest (bench/netfilter_rules.py).
_TOKEN = re.compile(r'"((?:[^"\\]|\\.)*)"|(\S+)')
_UNESCAPE = re.compile(r"\\(.)")


def tokens(spec: str) -> list[str]:
    if '"' not in spec:
        return spec.split()
    out = []
    for m in _TOKEN.finditer(spec):
        quoted = m.group(1)
        if quoted is None:
            out.append(m.group(2))
        else:
            out.append(_UNESCAPE.sub(r"\1", quoted) if "\\" in quoted else quoted)
    return out


def parse_rule_spec(spec: str) -> tuple[str | None, list[str], bool]:
    """(target, comments, is a goto) of a rule spec such as ``-m comment --comment "x" -j DROP``."""
    words = tokens(spec)
    target, goto, comments = None, False, []
    for i, token in enumerate(words[:-1]):
        if token in ("-j", "--jump"):
            target = words[i + 1]
        elif token in ("-g", "--goto"):
            target, goto = words[i + 1], True
        elif token == "--comment":
            comments.append(words[i + 1])
    return target, comments, goto


def parse_save(text: str, family: str, backend: str) -> list[Table]:
    """Tables of one ``iptables-save -c`` (family ``ip``) or ``ip6tables-save -c`` (``ip6``)."""
    tables: list[Table] = []
    table: Table | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or line == "COMMIT":
            continue
        if line.startswith("*"):
            table = Table(family=family, name=line[1:], backend=backend)
            tables.append(table)
            continue
        if table is None:
            continue
        if m := _CHAIN.match(line):
            policy = None if m[2] == "-" else m[2]
            table.chains[m[1]] = Chain(
                m[1],
                policy,
                int(m[3]) if m[3] is not None and policy else None,
                int(m[4]) if m[4] is not None and policy else None,
            )
            continue
        packets = nbytes = None
        if m := _COUNTED_RULE.match(line):
            packets, nbytes, chain_name, spec = int(m[1]), int(m[2]), m[3], m[4]
        elif m := _RULE.match(line):
            chain_name, spec = m[1], m[2]
        else:
            continue
        target, comments, goto = parse_rule_spec(spec)
        chain = table.chains.setdefault(chain_name, Chain(chain_name))
        chain.rules.append(Rule(spec, target, comments, packets, nbytes, goto))
    return tables


def incompatible(text: str) -> list[str]:
    """Names of the tables ``iptables-nft-save`` refused to print (native nftables tables)."""
    return [m[1] for line in text.splitlines() if (m := _INCOMPATIBLE.match(line.strip()))]
