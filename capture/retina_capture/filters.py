"""Capture filters: Retina's include/exclude lists and raw tcpdump expressions.

Retina accepts ``--include-filter`` and ``--exclude-filter`` as comma lists of endpoints:

======================  =====================================
``10.0.0.4``            any traffic to or from that address
``10.0.0.4:80``         that address, port 80 (TCP, UDP or SCTP)
``10.0.0.4:*``          same as ``10.0.0.4``
``*:53``                any address, port 53
``fd00::4``             an IPv6 address
``[fd00::4]:80``        an IPv6 address with a port (brackets, as in URLs)
======================  =====================================

They become one pcap expression::

    (<tcpdump filter>) and (<include 1> or <include 2> ...) and not (<exclude 1> or ...)

This module is shared by the node worker and the kubectl plugin, so that a bad filter is
refused with the same message on the laptop and on the node.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

#: Characters no pcap expression needs but a shell would act on. The worker never uses a
#: shell, but a filter holding one of these is a mistake or an attack either way.
SHELL_METACHARACTERS = frozenset(";`$'\"\\{}\n\r\0")


class FilterError(ValueError):
    """A filter that cannot be used. The message names the flag and how to fix it."""


@dataclass(frozen=True)
class Endpoint:
    """One include/exclude item: an address, a port, or both (``None`` means any)."""

    ip: str | None
    port: int | None

    def to_pcap(self) -> str:
        """The pcap expression matching this endpoint in either direction."""
        parts = []
        if self.ip is not None:
            parts.append(f"host {self.ip}")
        if self.port is not None:
            parts.append(f"port {self.port}")
        return " and ".join(parts)

    def __str__(self) -> str:
        ip = "*" if self.ip is None else (f"[{self.ip}]" if ":" in self.ip else self.ip)
        return ip if self.port is None else f"{ip}:{self.port}"


def _parse_port(text: str, item: str, flag: str) -> int | None:
    if text == "*":
        return None
    if not text.isdigit() or not 0 < int(text) <= 65535:
        raise FilterError(f"{flag}: {item!r} has port {text!r}; a port is 1-65535 or '*'")
    return int(text)


def _parse_ip(text: str, item: str, flag: str) -> str | None:
    if text == "*":
        return None
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise FilterError(
            f"{flag}: {item!r} is not an address; use IP, IP:port, *:port or IP:* "
            "(IPv6 with a port in brackets: [fd00::1]:80)"
        ) from None


def parse_endpoint(item: str, flag: str = "--include-filter") -> Endpoint:
    """Parse one list item (see the module docstring for the forms)."""
    item = item.strip()
    if not item:
        raise FilterError(f"{flag}: empty item; remove the extra comma")
    if item.startswith("["):  # [v6] or [v6]:port
        close = item.find("]")
        if close < 0:
            raise FilterError(f"{flag}: {item!r} opens '[' without ']'; write [fd00::1]:80")
        ip, rest = item[1:close], item[close + 1 :]
        if rest and not rest.startswith(":"):
            raise FilterError(f"{flag}: {item!r}: after ']' only ':port' may follow")
        port = _parse_port(rest[1:], item, flag) if rest else None
        return Endpoint(_parse_ip(ip, item, flag), port)
    if item.count(":") > 1:  # bare IPv6 address, no port
        return Endpoint(_parse_ip(item, item, flag), None)
    ip, _, port_text = item.partition(":")
    port = _parse_port(port_text, item, flag) if port_text else None
    endpoint = Endpoint(_parse_ip(ip, item, flag), port)
    if endpoint.ip is None and endpoint.port is None:
        raise FilterError(f"{flag}: {item!r} matches everything; drop it or name an IP or port")
    return endpoint


def parse_endpoint_list(text: str | None, flag: str = "--include-filter") -> list[Endpoint]:
    """Parse a comma list; ``None`` or an empty string give an empty list."""
    if text is None or not text.strip():
        return []
    return [parse_endpoint(item, flag) for item in text.split(",")]


def check_expression(expr: str, flag: str = "--tcpdump-filter") -> str:
    """Refuse raw expressions that could be read as options or that carry shell syntax.

    This is only a first guard: the worker also compiles the final expression with
    ``tcpdump -d`` before capturing.
    """
    stripped = expr.strip()
    if stripped.startswith("-"):
        raise FilterError(
            f"{flag}: {stripped!r} starts with '-', which tcpdump would read as an option; "
            "give only a pcap expression such as 'udp port 53'"
        )
    bad = sorted({c for c in stripped if c in SHELL_METACHARACTERS})
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        raise FilterError(
            f"{flag}: contains {shown}, shell syntax no pcap expression needs; "
            "write a plain expression such as 'host 10.0.0.4 and tcp port 80'"
        )
    return stripped


def _any_of(endpoints: list[Endpoint]) -> str:
    return " or ".join(f"({e.to_pcap()})" for e in endpoints)


def build_expression(
    tcpdump_filter: str = "",
    include: list[Endpoint] | None = None,
    exclude: list[Endpoint] | None = None,
    hosts: list[str] | None = None,
) -> str:
    """Combine the raw filter, include/exclude endpoints and pod hosts into one expression.

    ``hosts`` restricts the capture to traffic of those addresses (used when a pod's veth is
    unknown and the worker captures on ``any``). An empty result means "everything".
    """
    clauses = []
    if tcpdump_filter.strip():
        clauses.append(f"({tcpdump_filter.strip()})")
    if hosts:
        clauses.append("(" + " or ".join(f"host {h}" for h in hosts) + ")")
    if include:
        clauses.append(f"({_any_of(include)})")
    if exclude:
        clauses.append(f"not ({_any_of(exclude)})")
    return " and ".join(clauses)
