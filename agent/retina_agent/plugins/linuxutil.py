"""linuxutil: socket states and kernel network counters from procfs and sysfs, no eBPF.

- ``tcp_state{state}``: TCP sockets per state (/proc/net/tcp, tcp6)
- ``tcp_connection_remote{address="AllIPs"}``: TCP sockets with a remote peer
- ``tcp_connection_stats{statistic_name}``: TcpExt and MPTcpExt counters (/proc/net/netstat)
- ``ip_connection_stats{statistic_name}``: IpExt counters (/proc/net/netstat)
- ``udp_connection_stats{statistic_name="ACTIVE"}``: open UDP sockets (/proc/net/udp, udp6)
- ``interface_stats{interface_name,statistic_name}``: error and drop counters of every
  interface (sysfs ``statistics/``), per interface and summed under ``all_interfaces`` as
  Retina reports them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from retina_agent.metrics import add, retina_gauge
from retina_agent.plugins.base import Plugin

# include/net/tcp_states.h
TCP_STATES = {
    1: "ESTABLISHED",
    2: "SYN_SENT",
    3: "SYN_RECV",
    4: "FIN_WAIT1",
    5: "FIN_WAIT2",
    6: "TIME_WAIT",
    7: "CLOSE",
    8: "CLOSE_WAIT",
    9: "LAST_ACK",
    10: "LISTEN",
    11: "CLOSING",
}
RETINA_STATES = (
    "ESTABLISHED",
    "SYN_SENT",
    "SYN_RECV",
    "FIN_WAIT1",
    "FIN_WAIT2",
    "TIME_WAIT",
    "CLOSE_WAIT",
    "LAST_ACK",
    "LISTEN",
    "CLOSING",
    "UNKNOWN",
)


def read_sockets(path: Path) -> list[tuple[int, bool]]:
    """(state, has a remote peer) per socket line of /proc/net/{tcp,tcp6,udp,udp6}."""
    try:
        lines = path.read_text().splitlines()[1:]
    except OSError:
        return []
    sockets = []
    for line in lines:
        parts = line.split()
        if len(parts) < 4:
            continue
        remote_addr = parts[2].split(":")[0]
        sockets.append((int(parts[3], 16), remote_addr.strip("0") != ""))
    return sockets


def read_netstat(path: Path) -> dict[str, dict[str, int]]:
    """/proc/net/netstat and /proc/net/snmp: {"TcpExt": {"ListenDrops": 0, ...}, ...}."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    tables: dict[str, dict[str, int]] = {}
    for header, values in zip(lines[::2], lines[1::2], strict=False):
        name, _, keys = header.partition(":")
        _, _, nums = values.partition(":")
        try:
            tables[name] = dict(zip(keys.split(), map(int, nums.split()), strict=False))
        except ValueError:
            continue
    return tables


def read_interface_stats(sysfs: Path) -> dict[str, dict[str, int]]:
    """Error and drop counters of each interface from /sys/class/net/*/statistics."""
    stats: dict[str, dict[str, int]] = {}
    try:
        names = os.listdir(sysfs / "class" / "net")
    except OSError:
        return stats
    for ifname in names:
        directory = sysfs / "class" / "net" / ifname / "statistics"
        values = {}
        try:
            for stat in os.listdir(directory):
                if "err" in stat or "drop" in stat:
                    values[stat] = int((directory / stat).read_text())
        except (OSError, ValueError):
            continue
        stats[ifname] = values
    return stats


class LinuxUtil(Plugin):
    name = "linuxutil"

    def start(self, loaded=None) -> None:
        super().start(loaded)
        options = self.ctx.config.plugins.linuxutil
        self.proc_net = Path(options.procfs) / "net"
        self.sysfs = Path(options.sysfs)
        self.snapshot: dict = {}
        self.harvest()

    def harvest(self) -> None:
        tcp = read_sockets(self.proc_net / "tcp") + read_sockets(self.proc_net / "tcp6")
        states = dict.fromkeys(RETINA_STATES, 0)
        for state, _ in tcp:
            name = TCP_STATES.get(state, "UNKNOWN")
            if name == "CLOSE":
                name = "UNKNOWN"
            states[name] += 1
        udp = read_sockets(self.proc_net / "udp") + read_sockets(self.proc_net / "udp6")
        netstat = read_netstat(self.proc_net / "netstat")
        self.snapshot = {
            "states": states,
            "remote": sum(1 for state, remote in tcp if remote and state != 10),
            "tcp_stats": {**netstat.get("TcpExt", {}), **netstat.get("MPTcpExt", {})},
            "ip_stats": netstat.get("IpExt", {}),
            "udp_active": len(udp),
            "interfaces": read_interface_stats(self.sysfs),
        }

    def collect(self) -> Iterable:
        s = self.snapshot
        tcp_state = retina_gauge("tcp_state", "TCP sockets on the node by state", ["state"])
        for state, n in s["states"].items():
            add(tcp_state, [state], n)
        remote = retina_gauge(
            "tcp_connection_remote", "TCP sockets with a remote peer (all addresses)", ["address"]
        )
        add(remote, ["AllIPs"], s["remote"])
        tcp_stats = retina_gauge("tcp_connection_stats", "TcpExt and MPTcpExt counters", ["statistic_name"])
        for key, value in sorted(s["tcp_stats"].items()):
            add(tcp_stats, [key], value)
        ip_stats = retina_gauge("ip_connection_stats", "IpExt counters", ["statistic_name"])
        for key, value in sorted(s["ip_stats"].items()):
            add(ip_stats, [key], value)
        udp = retina_gauge("udp_connection_stats", "UDP socket statistics", ["statistic_name"])
        add(udp, ["ACTIVE"], s["udp_active"])
        iface = retina_gauge(
            "interface_stats",
            "Interface error and drop counters (per interface, and summed "
            "under interface_name=all_interfaces as Retina does)",
            ["interface_name", "statistic_name"],
        )
        totals: dict[str, int] = {}
        for ifname, values in sorted(s["interfaces"].items()):
            for key, value in sorted(values.items()):
                add(iface, [ifname, key], value)
                totals[key] = totals.get(key, 0) + value
        for key, value in sorted(totals.items()):
            add(iface, ["all_interfaces", key], value)
        return [tcp_state, remote, tcp_stats, ip_stats, udp, iface]
