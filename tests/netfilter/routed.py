"""A node wired the way Calico wires one, inside namespaces the test makes.

``RoutedNode`` is a network namespace that plays the node's host namespace, plus one namespace
per pod joined to it by a veth named like Calico's (``cali`` + 11 hex digits). As with Calico:
the pod's ``eth0`` has a /32 and a default route via 169.254.1.1, the node side answers ARP
for it (``proxy_arp``) and routes each pod's /32 to its veth; the node forwards. Nothing is
added to the real host namespace, so rules written into the node namespace touch no one else.
"""

from __future__ import annotations

import hashlib
import secrets
import subprocess
from pathlib import Path

from retina_agent.demo.node import PREFIX, LabPod, run


class RoutedNode:
    def __init__(self, pod_names: tuple[str, ...] = ("a", "b", "c")) -> None:
        self.lab_id = secrets.token_hex(2)
        self.netns = f"{PREFIX}-{self.lab_id}-node"
        self.path = Path("/run/netns") / self.netns
        self.pod_names = pod_names
        self.pods: dict[str, LabPod] = {}
        n = int(self.lab_id, 16)
        self.prefix = f"10.{48 + n % 16}.{(n // 16) % 256}"

    def run(self, argv: list[str], **kwargs):
        return run(argv, netns=self.netns, **kwargs)

    def __enter__(self) -> RoutedNode:
        try:
            run(["ip", "netns", "add", self.netns])
            self.run(["ip", "link", "set", "lo", "up"])
            self.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
            # Proxy ARP answers for an address the node routes out of another link; a real
            # node's default route covers 169.254.1.1, this one gets a route of its own.
            self.run(["ip", "route", "add", "169.254.1.1/32", "dev", "lo"])
            for index, name in enumerate(self.pod_names, start=2):
                self._add_pod(name, f"{self.prefix}.{index}")
        except BaseException:
            self.__exit__()
            raise
        return self

    def _add_pod(self, name: str, ip: str) -> None:
        netns = f"{PREFIX}-{self.lab_id}-{name}"
        veth = "cali" + hashlib.sha1(netns.encode()).hexdigest()[:11]
        run(["ip", "netns", "add", netns])
        pod = LabPod(name=name, netns=netns, ip=ip, ip6="", host_veth=veth)
        self.pods[name] = pod
        self.run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns])
        self.run(["ip", "link", "set", veth, "up"])
        self.run(["sysctl", "-qw", f"net.ipv4.conf.{veth}.proxy_arp=1"])
        self.run(["sysctl", "-qw", f"net.ipv4.neigh.{veth}.proxy_delay=0"])
        self.run(["ip", "route", "add", f"{ip}/32", "dev", veth, "scope", "link"])
        pod.run(["ip", "link", "set", "lo", "up"])
        pod.run(["ip", "addr", "add", f"{ip}/32", "dev", "eth0"])
        pod.run(["ip", "link", "set", "eth0", "up"])
        pod.run(["ip", "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link"])
        pod.run(["ip", "route", "add", "default", "via", "169.254.1.1", "dev", "eth0"])

    def __exit__(self, *exc) -> None:
        for pod in self.pods.values():
            run(["ip", "netns", "del", pod.netns], check=False)
        self.pods.clear()
        # Sets live in the namespace and go with it, as do its rules and links.
        run(["ip", "netns", "del", self.netns], check=False)

    def __getitem__(self, name: str) -> LabPod:
        return self.pods[name]

    def restore(self, tool: str, text: str) -> None:
        """Load rules with ``iptables-legacy-restore``/``iptables-nft-restore --noflush``."""
        done = subprocess.run(
            ["ip", "netns", "exec", self.netns, tool, "--noflush"],
            input=text,
            capture_output=True,
            text=True,
            timeout=30,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed: {done.stderr}\n{text}")

    def ipset(self, name: str, *members: str, kind: str = "hash:net") -> None:
        self.run(["ipset", "create", name, kind, "family", "inet"])
        for member in members:
            self.run(["ipset", "add", name, member])
