"""Network interfaces of the node, and a netlink watch for ones that come and go."""

from __future__ import annotations

import fnmatch
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.rtnl import RTMGRP_LINK

log = logging.getLogger(__name__)

ARPHRD_ETHER = 1
# ifi_family of a device's own RTM_NEWLINK/RTM_DELLINK. A bridge also sends link messages about
# its ports with ifi_family AF_BRIDGE (port state, cost, flags, the forward-delay timer 15 s
# after a port comes up, RTM_DELLINK when a port leaves the bridge while the device stays).
# They carry no IFLA_LINKINFO: read as a device, a pod's veth would lose its kind ("pods"
# selectors stop matching it) or be taken for gone.
AF_UNSPEC = 0
# The node's ports carry its traffic exactly once: pods' veths, bonds and physical NICs (which
# have no link kind). Bridges, tunnels, ifb and dummies would count packets a second time.


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: str | None
    ether: bool
    enslaved_to_bond: bool = False

    @classmethod
    def from_message(cls, msg) -> Link:
        info = msg.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info else None
        slave_kind = info.get_attr("IFLA_INFO_SLAVE_KIND") if info else None
        return cls(
            index=msg["index"],
            name=msg.get_attr("IFLA_IFNAME") or "",
            kind=kind,
            ether=msg["ifi_type"] == ARPHRD_ETHER,
            enslaved_to_bond=slave_kind == "bond",
        )


class LinkSelector:
    """Which interfaces a TC plugin attaches to, by keyword or name glob.

    ``auto``: the node's ports (NICs, bonds, pod veths); ``pods``: pod veths only; ``host``:
    NICs and bonds only; anything else is a glob on the interface name (``eth*``).
    """

    def __init__(self, patterns: Sequence[str] = ("auto",)) -> None:
        self.patterns = list(patterns) or ["auto"]

    def matches(self, link: Link) -> bool:
        nic = link.kind == "bond" or (link.kind is None and link.ether and not link.enslaved_to_bond)
        for pattern in self.patterns:
            if pattern == "auto" and (nic or link.kind == "veth"):
                return True
            if pattern == "pods" and link.kind == "veth":
                return True
            if pattern == "host" and nic:
                return True
            if pattern not in ("auto", "pods", "host") and fnmatch.fnmatchcase(link.name, pattern):
                return True
        return False


def current_links() -> list[Link]:
    with IPRoute() as ipr:
        return [Link.from_message(m) for m in ipr.get_links()]


class LinkWatcher:
    """Calls ``on_new(link)`` / ``on_gone(link)`` from a thread as netlink reports changes."""

    def __init__(self, on_new: Callable[[Link], None], on_gone: Callable[[Link], None]) -> None:
        self.on_new = on_new
        self.on_gone = on_gone
        self._stop = threading.Event()
        self._bound = threading.Event()
        self._thread = threading.Thread(target=self._run, name="link-watch", daemon=True)

    def start(self) -> None:
        """Start watching; returns once the netlink socket listens (no event is missed after)."""
        self._thread.start()
        self._bound.wait(timeout=10)

    def stop(self) -> None:
        """Stop handling events. The thread is a daemon blocked in a netlink read; it is not
        waited for (it ends with the process, or at the next link event)."""
        self._stop.set()

    def _run(self) -> None:
        # pyroute2 ties a socket to the thread that made it: make it here.
        with IPRoute() as ipr:
            ipr.bind(groups=RTMGRP_LINK)
            self._bound.set()
            self._watch(ipr)

    def _watch(self, ipr: IPRoute) -> None:
        # A blocking get(), not select() + get(): pyroute2 0.9 reads everything the socket
        # holds but get() returns only part of it, keeping the rest in its own queue, where
        # select() cannot see it (a new pod's veth would wait for some unrelated event).
        while not self._stop.is_set():
            try:
                messages = ipr.get()
            except Exception:  # a socket error must not end the watch
                log.exception("netlink read failed")
                continue
            if self._stop.is_set():
                return
            for msg in messages:
                if msg.get("family", AF_UNSPEC) != AF_UNSPEC:
                    continue  # a bridge's news about one of its ports, not a device (see AF_UNSPEC)
                try:
                    link = Link.from_message(msg)
                    if msg["event"] == "RTM_NEWLINK":
                        self.on_new(link)
                    elif msg["event"] == "RTM_DELLINK":
                        self.on_gone(link)
                except Exception:
                    log.exception("handling a link event failed")
