"""The node's pod network, as the bridge CNI makes it: a bridge with the gateway address and,
per pod without ``hostNetwork``, a network namespace joined to it by a veth pair.

Names start with ``rn`` and the runner's id, so two runners (and ``retina_lab.LabNode``) coexist.
Addresses come from a /24 that exists only inside these namespaces.
"""

from __future__ import annotations

import ipaddress
import threading
from dataclasses import dataclass

from retina_agent.demo.node import run  # moved there by cd2ebec (the demo node is product code)


@dataclass(frozen=True)
class PodNetns:
    netns: str
    ip: str
    host_veth: str

    @property
    def podman_network(self) -> str:
        return f"ns:/run/netns/{self.netns}"


class PodNetwork:
    def __init__(self, runner_id: str, subnet: str) -> None:
        self.runner_id = runner_id
        self.network = ipaddress.ip_network(subnet)
        self.gateway = str(self.network.network_address + 1)
        self.bridge = f"rnbr{runner_id}"[:15]
        self._used: dict[str, int] = {}  # pod uid -> host index
        self._lock = threading.Lock()

    def up(self) -> None:
        run(["ip", "link", "add", self.bridge, "type", "bridge"])
        run(["ip", "addr", "add", f"{self.gateway}/{self.network.prefixlen}", "dev", self.bridge])
        run(["ip", "link", "set", self.bridge, "up"])

    def down(self) -> None:
        for uid in list(self._used):
            self.remove(uid)
        run(["ip", "link", "del", self.bridge], check=False)

    def _names(self, index: int) -> tuple[str, str]:
        return f"rn-{self.runner_id}-{index}", f"rnv{self.runner_id}{index}"[:15]

    def add(self, pod_uid: str) -> PodNetns:
        with self._lock:
            index = next(i for i in range(2, self.network.num_addresses - 1) if i not in self._used.values())
            self._used[pod_uid] = index
        netns, veth = self._names(index)
        ip = str(self.network.network_address + index)
        try:
            run(["ip", "netns", "add", netns])
            run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns])
            run(["ip", "link", "set", veth, "master", self.bridge])
            run(["ip", "link", "set", veth, "up"])
            for argv in (
                ["ip", "link", "set", "lo", "up"],
                ["ip", "addr", "add", f"{ip}/{self.network.prefixlen}", "dev", "eth0"],
                ["ip", "link", "set", "eth0", "up"],
                ["ip", "route", "add", "default", "via", self.gateway],
            ):
                run(argv, netns=netns)
        except Exception:
            self.remove(pod_uid)
            raise
        return PodNetns(netns, ip, veth)

    def remove(self, pod_uid: str) -> None:
        with self._lock:
            index = self._used.pop(pod_uid, None)
        if index is None:
            return
        netns, veth = self._names(index)
        run(["ip", "link", "del", veth], check=False)
        run(["ip", "netns", "del", netns], check=False)
