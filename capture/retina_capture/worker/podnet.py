"""Find where a pod's traffic can be captured on this node: the host side of its veth.

Two CNI shapes are covered, both read from the kernel through netlink (pyroute2):

* routed CNIs (Calico, Cilium, kindnet, ...): the route to the pod IP leaves through the
  pod's veth itself (``ip route get <pod IP>`` -> ``dev cali1234``);
* bridge CNIs (bridge, flannel, ...): the route leaves through the bridge; the node's
  neighbour entry gives the pod's MAC and the bridge's forwarding table gives the port
  (the veth) that MAC sits behind.

When neither works (no neighbour entry yet, a pod on another node, an overlay) the address
is "unknown" and the worker captures on ``any`` filtered on that address instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from pyroute2 import IPRoute

log = logging.getLogger(__name__)


@dataclass
class InterfacePlan:
    """Interfaces to capture on, and addresses to restrict ``any`` to (empty = no restriction)."""

    interfaces: list[str]
    hosts: list[str] = field(default_factory=list)
    found: dict[str, str] = field(default_factory=dict)  # pod IP -> veth


def _link(ipr: IPRoute, index: int) -> tuple[str, str]:
    """(name, kind) of a link; kind is '' for plain devices."""
    msg = ipr.link("get", index=index)[0]
    return msg.get("IFLA_IFNAME"), msg.get(("IFLA_LINKINFO", "IFLA_INFO_KIND")) or ""


def find_host_veth(ip: str) -> str | None:
    """The host-side interface carrying ``ip``'s traffic, or ``None`` when it cannot be told."""
    with IPRoute() as ipr:
        try:
            routes = ipr.route("get", dst=ip)
        except Exception as exc:  # no route at all
            log.debug("no route to %s: %s", ip, exc)
            return None
        oif = routes[0].get("RTA_OIF") if routes else None
        if oif is None:
            return None
        name, kind = _link(ipr, oif)
        if kind == "veth":
            return name
        if kind != "bridge":
            return None
        macs = {n.get("NDA_LLADDR") for n in ipr.get_neighbours(dst=ip, ifindex=oif)} - {None}
        if not macs:
            return None
        for entry in ipr.fdb("dump"):
            if entry.get("NDA_MASTER") == oif and entry.get("NDA_LLADDR") in macs and entry["ifindex"] != oif:
                port_name, port_kind = _link(ipr, entry["ifindex"])
                if port_kind == "veth":
                    return port_name
    return None


def plan_interfaces(interfaces: tuple[str, ...], pod_ips: tuple[str, ...]) -> InterfacePlan:
    """Decide what to capture on.

    Without pod IPs: the ``--interfaces`` given. With pod IPs: each pod's veth when every one is
    known, otherwise ``any`` restricted to the pod IPs (a mix would capture some packets twice).
    """
    if not pod_ips:
        return InterfacePlan(interfaces=list(interfaces))
    found = {ip: veth for ip in pod_ips if (veth := find_host_veth(ip)) is not None}
    unknown = [ip for ip in pod_ips if ip not in found]
    if unknown:
        log.info(
            "no host veth known for %s: capturing on 'any' restricted to the pod IPs", ", ".join(unknown)
        )
        return InterfacePlan(interfaces=["any"], hosts=list(pod_ips), found=found)
    veths = sorted(set(found.values()))
    log.info("capturing pod traffic on %s", ", ".join(f"{ip}={found[ip]}" for ip in pod_ips))
    return InterfacePlan(interfaces=veths, found=found)
