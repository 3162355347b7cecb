"""Native nftables tables through libnftables' JSON (Debian ``python3-nftables``).

A rule's counter is its ``counter`` statement (the kernel counts nothing for a rule without
one); base chain policies have no counter in native nftables, so a ``policy drop`` can be
reported but not counted. The rule text is rendered from the JSON expressions, nft style
(``tcp dport 5432 reject``), since libnftables does not hand out one rule's text.
"""

from __future__ import annotations

import json
from typing import Any

from retina_agent.netfilter.model import Chain, Rule, Table

_VERDICTS = {
    "drop": "DROP",
    "accept": "ACCEPT",
    "return": "RETURN",
    "continue": "CONTINUE",
    "reject": "REJECT",
    "queue": "QUEUE",
}


class NftUnavailable(Exception):
    """libnftables' Python binding is missing; the message says how to install it."""


def context():
    """A libnftables context with JSON output (the caller's network namespace)."""
    try:
        import nftables
    except ImportError:
        raise NftUnavailable(
            "the nftables Python module is missing: install Debian's "
            "python3-nftables (scripts/setup.sh links it into the venv)"
        ) from None
    nft = nftables.Nftables()
    nft.set_json_output(True)
    nft.set_handle_output(True)
    return nft


def _run(nft, command: str) -> list[dict]:
    rc, out, err = nft.cmd(command)
    if rc != 0:
        raise OSError(f"nft {command}: {err.strip() or rc}")
    return json.loads(out).get("nftables", []) if out.strip() else []


def list_tables(nft) -> list[tuple[str, str]]:
    return [(o["table"]["family"], o["table"]["name"]) for o in _run(nft, "list tables") if "table" in o]


def read_table(nft, family: str, name: str) -> Table:
    table = Table(family=family, name=name, backend="nftables")
    for obj in _run(nft, f"list table {family} {name}"):
        if "chain" in obj:
            c = obj["chain"]
            policy = c.get("policy")
            table.chains[c["name"]] = Chain(c["name"], policy.upper() if policy else None)
        elif "rule" in obj:
            r = obj["rule"]
            chain = table.chains.setdefault(r["chain"], Chain(r["chain"]))
            chain.rules.append(rule_from_json(r))
    return table


def rule_from_json(rule: dict) -> Rule:
    parts, target, goto, packets, nbytes = [], None, False, None, None
    for expr in rule.get("expr", []):
        ((kind, value),) = expr.items()
        if kind == "counter" and isinstance(value, dict):
            if packets is None:
                packets, nbytes = int(value.get("packets", 0)), int(value.get("bytes", 0))
            continue
        if kind in _VERDICTS:
            target = _VERDICTS[kind]
        elif kind in ("jump", "goto"):
            target, goto = value["target"], kind == "goto"
        elif kind == "xt" and value.get("type") == "target":
            target = value.get("name")
        parts.append(_render(kind, value))
    comments = [rule["comment"]] if rule.get("comment") else []
    text = " ".join(p for p in parts if p)
    if comments:
        text += f' comment "{comments[0]}"'
    return Rule(text, target, comments, packets, nbytes, goto)


def _operand(value: Any) -> str:
    if isinstance(value, dict):
        ((kind, inner),) = value.items()
        if kind == "payload":
            return f"{inner.get('protocol', 'payload')} {inner.get('field', '')}".strip()
        if kind in ("meta", "ct", "rt", "socket", "fib", "osf"):
            key = inner.get("key", "") if isinstance(inner, dict) else ""
            return f"{kind} {key}".strip()
        if kind == "set":
            return "{ " + ", ".join(_operand(v) for v in inner) + " }"
        if kind == "prefix":
            return f"{inner['addr']}/{inner['len']}"
        if kind == "range":
            return f"{_operand(inner[0])}-{_operand(inner[1])}"
        return kind
    if isinstance(value, list):
        return "{ " + ", ".join(_operand(v) for v in value) + " }"
    return str(value)


def _render(kind: str, value: Any) -> str:
    if kind == "match":
        op = value.get("op", "==")
        op = "" if op in ("==", "in") else f"{op} "
        return f"{_operand(value['left'])} {op}{_operand(value['right'])}"
    if kind in _VERDICTS:
        if kind == "reject" and isinstance(value, dict) and value.get("expr"):
            return f"reject with {value.get('type', '')} {value['expr']}".replace("  ", " ")
        return kind
    if kind in ("jump", "goto"):
        return f"{kind} {value['target']}"
    if kind == "xt":
        return f"xt {value.get('type')} {value.get('name')}"
    if kind == "limit" and isinstance(value, dict):
        return f"limit rate {value.get('rate')}/{value.get('per')}"
    if kind == "vmap" and isinstance(value, dict):
        return f"{_operand(value.get('key'))} vmap {_operand(value.get('data'))}"
    return kind
