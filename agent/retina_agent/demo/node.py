"""A Kubernetes-like node built from Linux namespaces, for the demo, tests and benchmarks.

A ``LabNode`` is a bridge (like the bridge CNI's ``cni0``) plus one network namespace per
"pod", each joined to the bridge by a veth pair whose host side is named like a CNI's.
Everything it creates carries a per-lab prefix so that several labs can coexist and
``cleanup_stale`` can remove what a crashed run left behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import secrets
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field

#: Every name this module creates starts with this (namespaces, bridges, veths).
PREFIX = "rl"
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def setns(fd: int, nstype: int = CLONE_NEWNET) -> None:
    """setns(2) (``os.setns`` exists only from Python 3.12)."""
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def run(
    argv: Sequence[str], *, check: bool = True, netns: str | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run a command (never through a shell), optionally inside a network namespace."""
    full = ["ip", "netns", "exec", netns, *argv] if netns else list(argv)
    proc = subprocess.run(full, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(full)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


@dataclass
class LabPod:
    """One pod: a network namespace with ``eth0`` on the lab bridge."""

    name: str
    netns: str
    ip: str
    ip6: str
    host_veth: str
    mac: str = ""

    def run(
        self, argv: Sequence[str], *, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        return run(argv, check=check, netns=self.netns, timeout=timeout)

    def popen(self, argv: Sequence[str], **kwargs) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.netns, *argv], **kwargs)

    @contextlib.contextmanager
    def entered(self):
        """Run the body with this thread inside the pod's network namespace."""
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{self.netns}", os.O_RDONLY)
        try:
            setns(target)
            yield self
        finally:
            setns(own)
            os.close(own)
            os.close(target)


@dataclass
class LabNode:
    """A bridge plus pods. Use as a context manager, or call ``up()`` and ``down()``."""

    pod_names: Sequence[str] = ("a", "b")
    lab_id: str = field(default_factory=lambda: secrets.token_hex(2))
    subnet: str | None = None
    pods: dict[str, LabPod] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.subnet is None:
            # 10.200.0.0/16 .. 10.239.0.0/16 by lab id, a /24 per lab: addresses that only
            # exist inside this lab's namespaces.
            n = int(self.lab_id, 16)
            self.subnet = f"10.{200 + n % 40}.{(n // 40) % 256}.0/24"
        self.network = ipaddress.ip_network(self.subnet)
        self.gateway = str(self.network.network_address + 1)
        self.bridge = f"{PREFIX}br{self.lab_id}"
        self.network6 = ipaddress.ip_network(f"fd00:{self.lab_id}::/64")
        self.gateway6 = str(self.network6.network_address + 1)

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> LabNode:
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    def up(self) -> LabNode:
        run(["ip", "link", "add", self.bridge, "type", "bridge"])
        run(["ip", "addr", "add", f"{self.gateway}/{self.network.prefixlen}", "dev", self.bridge])
        run(["ip", "-6", "addr", "add", f"{self.gateway6}/64", "dev", self.bridge, "nodad"])
        run(["ip", "link", "set", self.bridge, "up"])
        for name in self.pod_names:
            self.add_pod(name)
        return self

    def add_pod(self, name: str) -> LabPod:
        index = len(self.pods) + 2
        netns = f"{PREFIX}-{self.lab_id}-{name}"
        host_veth = f"{PREFIX}v{self.lab_id}{name}"[:15]
        ip = str(self.network.network_address + index)
        ip6 = str(self.network6.network_address + index)
        run(["ip", "netns", "add", netns])
        pod = LabPod(name=name, netns=netns, ip=ip, ip6=ip6, host_veth=host_veth)
        self.pods[name] = pod
        run(["ip", "link", "add", host_veth, "type", "veth", "peer", "name", "eth0", "netns", netns])
        run(["ip", "link", "set", host_veth, "master", self.bridge])
        run(["ip", "link", "set", host_veth, "up"])
        pod.run(["ip", "link", "set", "lo", "up"])
        pod.run(["ip", "addr", "add", f"{ip}/{self.network.prefixlen}", "dev", "eth0"])
        pod.run(["ip", "-6", "addr", "add", f"{ip6}/64", "dev", "eth0", "nodad"])
        pod.run(["ip", "link", "set", "eth0", "up"])
        pod.run(["ip", "route", "add", "default", "via", self.gateway])
        pod.mac = pod.run(["cat", "/sys/class/net/eth0/address"]).stdout.strip()
        return pod

    def remove_pod(self, name: str) -> None:
        pod = self.pods.pop(name, None)
        if pod is None:
            return
        run(["ip", "link", "del", pod.host_veth], check=False)
        run(["ip", "netns", "del", pod.netns], check=False)

    def down(self) -> None:
        for name in list(self.pods):
            self.remove_pod(name)
        run(["ip", "link", "del", self.bridge], check=False)

    # -- helpers -----------------------------------------------------------------------------
    def __getitem__(self, name: str) -> LabPod:
        return self.pods[name]

    @property
    def host_veths(self) -> list[str]:
        return [p.host_veth for p in self.pods.values()]


def cleanup_stale(prefix: str = PREFIX) -> list[str]:
    """Remove namespaces and links named like a lab's (left by a crashed run). Returns names."""
    removed: list[str] = []
    for line in run(["ip", "netns", "list"], check=False).stdout.splitlines():
        ns = line.split()[0] if line.strip() else ""
        if ns.startswith(f"{prefix}-"):
            run(["ip", "netns", "del", ns], check=False)
            removed.append(ns)
    for line in run(["ip", "-o", "link", "show"], check=False).stdout.splitlines():
        parts = line.split(": ")
        if len(parts) < 2:
            continue
        name = parts[1].split("@")[0]
        if name.startswith((f"{prefix}br", f"{prefix}v")):
            run(["ip", "link", "del", name], check=False)
            removed.append(name)
    return removed
