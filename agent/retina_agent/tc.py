"""Attach the data path's TC programs to interfaces (TCX links, or cls_bpf), remove only ours.

One program per direction (``bpf/datapath.c``) serves every TC plugin; which plugins run on
an interface is a bit mask in the program's ``dp_ifaces`` map, kept here from each plugin's
interface selector (``enable`` / ``disable``). An interface with no plugin has no program.

Attachment, chosen by probing (``dataPathAttach: auto``):
- **TCX** (kernel 6.6+): a bpf_link per interface and direction, at the head of the chain
  (BPF_F_BEFORE), so a program that ends the chain (a CNI's redirect) cannot hide packets from
  ours; ours return TCX_NEXT, so every program after it still runs, and legacy cls_bpf filters
  after the TCX chain too. The link is an fd of the agent: when the agent dies, even by
  SIGKILL, the kernel detaches it. Nothing to clean up, nothing stale.
- **cls_bpf** (older kernels): clsact + a direct-action filter named
  ``retina_dp_<direction>@<pid>.<start time>`` at priorities from ``PRIO_BASE``. We never
  replace or delete a filter that is not ours; a clsact qdisc is removed at shutdown only if we
  created it and nothing else uses it. Interfaces where we created clsact are written to
  ``<stateDir>/tc-state.json``, so a restart after a crash removes our stale filters and qdiscs.
  A filter is stale when the agent that owns it is gone; a second live agent takes the next
  free priority slot.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from retina_agent.bpf import syscall
from retina_agent.bpf.datapath import FEATURE_BITS, InterfaceBits
from retina_agent.links import Link, LinkSelector, LinkWatcher, current_links

log = logging.getLogger(__name__)

NAME_PREFIX = "retina_"
PRIO_BASE = 0xC000
PRIO_SLOTS = 8  # agents that can hold filters on one interface at once
PRIO_SLOT_STEP = 0x100
PARENTS = {"ingress": "ffff:fff2", "egress": "ffff:fff3"}
DIRECTIONS = ("ingress", "egress")
ENOENT, ENODEV, EEXIST = 2, 19, 17
TCX, CLS_BPF = "tcx", "cls_bpf"


def _bpf_name(msg) -> str | None:
    options = msg.get_attr("TCA_OPTIONS")
    return options.get_attr("TCA_BPF_NAME") if options else None


def process_tag(pid: int) -> str | None:
    """``<pid>.<start time in clock ticks since boot>`` of a running process, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            start = f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None
    return f"{pid}.{start}"


OWNER = process_tag(os.getpid()) or str(os.getpid())


def owner_of(name: str) -> str:
    return name.rpartition("@")[2]


def owner_alive(name: str) -> bool:
    """Is the process that attached this filter still running (same pid and start time)?

    The start time (clock ticks since boot) tells a reused pid from the owner, so no guess
    from the command line is needed (a benchmark runs the agent inside its own process). A
    filter of an agent in another PID namespace (the container before a restart) counts as
    stale: one agent runs per node.
    """
    owner = owner_of(name)
    if owner == OWNER:
        return True
    pid = owner.partition(".")[0]
    return pid.isdigit() and process_tag(int(pid)) == owner


def our_filters(ipr: IPRoute, index: int) -> list[tuple[str, int, int, str]]:
    """(direction, prio, handle, name) of every retina cls_bpf filter on one interface."""
    found = []
    for direction, parent in PARENTS.items():
        try:
            msgs = ipr.get_filters(index=index, parent=parent)
        except NetlinkError:
            continue
        for m in msgs:
            name = _bpf_name(m)
            if name and name.startswith(NAME_PREFIX) and m["handle"]:
                found.append((direction, m["info"] >> 16, m["handle"], name))
    return found


def _other_filters(ipr: IPRoute, index: int) -> bool:
    """Does anything but this agent (a CNI, another live agent) have filters here?"""
    for parent in PARENTS.values():
        try:
            for m in ipr.get_filters(index=index, parent=parent):
                name = _bpf_name(m) or ""
                if m["handle"] and owner_of(name) != OWNER:
                    return True
        except NetlinkError:
            continue
    return False


def choose_mode(wanted: str) -> str:
    """``auto``: TCX where the kernel has it, else cls_bpf. ``tcx`` falls back with a warning."""
    if wanted == CLS_BPF:
        return CLS_BPF
    if syscall.tcx_supported():
        return TCX
    if wanted == TCX:
        log.warning("dataPathAttach: tcx, but this kernel has no TCX (6.6+): using cls_bpf")
    return CLS_BPF


@dataclass
class _Attached:
    """What we hold on one interface: TCX link fds, or our cls_bpf filters' names."""

    links: dict[str, int] = field(default_factory=dict)  # direction -> bpf_link fd
    filters: set[str] = field(default_factory=set)  # directions with a cls_bpf filter


class TcManager:
    """Keeps the data path attached to every interface some enabled plugin selects."""

    def __init__(self, state_dir: Path, mode: str = "auto") -> None:
        self.state_file = state_dir / "tc-state.json"
        self.wanted_mode = mode
        self.mode = CLS_BPF if mode == CLS_BPF else "unknown"
        self._lock = threading.Lock()
        self._programs: dict[str, int] = {}  # direction -> program fd
        self._ifaces: InterfaceBits | None = None  # ifindex -> feature bits
        self._features: dict[str, LinkSelector] = {}  # plugin -> its interface selector
        self._attached: dict[int, _Attached] = {}
        self._bits: dict[int, int] = {}  # ifindex -> bits written to dp_ifaces
        self._links: dict[int, Link] = {}
        self._created_clsact: dict[int, str] = {}  # ifindex -> name
        self._watcher: LinkWatcher | None = None
        self._paused = False
        self.stale_removed = 0  # stale filters and qdiscs removed at start (a metric)

    # -- lifecycle ---------------------------------------------------------------------------
    def cleanup_stale(self) -> list[str]:
        """Remove cls_bpf filters (and clsact) left by an earlier agent that did not stop
        cleanly. (TCX links cannot outlive their agent.)"""
        removed = []
        created = self._read_state()
        with self._lock, IPRoute() as ipr:
            for link in current_links():
                for direction, prio, handle, name in our_filters(ipr, link.index):
                    if owner_alive(name):
                        continue
                    if self._del_filter(ipr, link.index, direction, prio, handle):
                        removed.append(f"{link.name}/{direction}/{name}")
                if (
                    link.name in created.values()
                    and not _other_filters(ipr, link.index)
                    and self._del_clsact(ipr, link.index)
                ):
                    removed.append(f"{link.name}/clsact")
        self._write_state()
        self.stale_removed += len(removed)
        return removed

    def set_datapath(self, programs: dict[str, int], ifaces: InterfaceBits) -> None:
        """The loaded data path: a program fd per direction and its interface bits."""
        with self._lock:
            self._programs = dict(programs)
            self._ifaces = ifaces
            if self.mode == "unknown":
                self.mode = choose_mode(self.wanted_mode)
        log.info("data path attaches with %s", self.mode)

    def start(self) -> None:
        self._watcher = LinkWatcher(self._on_new_link, self._on_gone_link)
        self._watcher.start()
        for link in current_links():
            self._on_new_link(link)

    def enable(self, plugin: str, selector: LinkSelector) -> None:
        """Turn ``plugin`` on for every interface ``selector`` matches (now and later)."""
        with self._lock:
            self._features[plugin] = selector
            links = list(self._links.values())
        for link in links:
            self._sync(link)

    def disable(self, plugin: str) -> None:
        """Turn ``plugin`` off everywhere; the other plugins keep running."""
        with self._lock:
            if self._features.pop(plugin, None) is None:
                return
            links = list(self._links.values())
        for link in links:
            self._sync(link)

    def pause(self) -> None:
        """Detach every program of ours (the benchmark's "no agent" half); links stay known."""
        with self._lock, IPRoute() as ipr:
            self._paused = True
            for index in list(self._attached):
                self._detach(ipr, index)

    def resume(self) -> None:
        """Attach again everything ``pause`` removed."""
        with self._lock:
            self._paused = False
            links = list(self._links.values())
        for link in links:
            self._sync(link)

    def attached(self) -> dict[str, list[str]]:
        """Interface -> the plugins running on it (``pf``-style names are not used here)."""
        with self._lock:
            out = {}
            for index, bits in self._bits.items():
                if index in self._attached and index in self._links:
                    out[self._links[index].name] = sorted(p for p, b in FEATURE_BITS.items() if bits & b)
            return out

    def stop(self) -> None:
        if self._watcher:
            self._watcher.stop()
        with self._lock, IPRoute() as ipr:
            for index in list(self._attached):
                self._detach(ipr, index)
            for index in list(self._created_clsact):
                if not _other_filters(ipr, index):
                    self._del_clsact(ipr, index)
            self._created_clsact.clear()
            self._bits.clear()
            self._links.clear()  # a plugin stopping after this must not attach again
            self._write_state()

    # -- link events -------------------------------------------------------------------------
    def _on_new_link(self, link: Link) -> None:
        with self._lock:
            known = self._links.get(link.index)
            self._links[link.index] = link
            if known is not None and known.name != link.name:
                # Renamed (a CNI names a veth once it is set up), or a new device under an index
                # whose RTM_DELLINK was missed: let go of what we hold there before attaching
                # again (cls_bpf would take a second slot and count every packet twice; a TCX
                # hook refuses the program twice and the old link would outlive our stop).
                with IPRoute() as ipr:
                    self._detach(ipr, link.index)
        self._sync(link)

    def _on_gone_link(self, link: Link) -> None:
        with self._lock:
            self._links.pop(link.index, None)
            held = self._attached.pop(link.index, None)
            if held is not None:
                for fd in held.links.values():
                    os.close(fd)
            if self._bits.pop(link.index, None) is not None and self._ifaces is not None:
                self._ifaces.set(link.index, 0)
            if self._created_clsact.pop(link.index, None) is not None:
                self._write_state()

    def _sync(self, link: Link) -> None:
        """Bring one interface in line: its feature bits in dp_ifaces, the programs attached
        when any plugin wants it, detached when none does."""
        with self._lock, IPRoute() as ipr:
            if link.index not in self._links or self._ifaces is None:
                return
            bits = 0
            for plugin, selector in self._features.items():
                if selector.matches(link):
                    bits |= FEATURE_BITS[plugin]
            if bits != self._bits.get(link.index, 0):
                self._ifaces.set(link.index, bits)
                if bits:
                    self._bits[link.index] = bits
                else:
                    self._bits.pop(link.index, None)
            try:
                if bits and not self._paused:
                    self._attach(ipr, link)
                elif link.index in self._attached:
                    self._detach(ipr, link.index)
            except OSError as exc:  # NetlinkError is an OSError
                if exc.errno in (ENODEV, ENOENT) or getattr(exc, "code", 0) in (ENODEV, ENOENT):
                    return  # the link went away meanwhile
                log.warning("cannot attach the data path to %s: %s", link.name, exc)

    # -- attach / detach (caller holds the lock) -----------------------------------------------
    def _attach(self, ipr: IPRoute, link: Link) -> None:
        held = self._attached.setdefault(link.index, _Attached())
        for direction in DIRECTIONS:
            if direction in held.links or direction in held.filters:
                continue
            if self.mode == TCX:
                held.links[direction] = syscall.link_create_tcx(
                    self._programs[direction], link.index, direction
                )
            else:
                self._ensure_clsact(ipr, link)
                self._add_filter(ipr, link, direction)
                held.filters.add(direction)
            log.debug("attached the data path to %s %s", link.name, direction)

    def _detach(self, ipr: IPRoute, index: int) -> None:
        held = self._attached.pop(index, None)
        if held is None:
            return
        for fd in held.links.values():
            os.close(fd)  # closing the last fd of a TCX link detaches it
        if held.filters:
            for direction, prio, handle, name in our_filters(ipr, index):
                if owner_of(name) == OWNER:
                    self._del_filter(ipr, index, direction, prio, handle)

    def _add_filter(self, ipr: IPRoute, link: Link, direction: str) -> None:
        """Add our filter at its priority, or the next slot where another live agent is."""
        for slot in range(PRIO_SLOTS):
            try:
                ipr.tc(
                    "add-filter",
                    "bpf",
                    index=link.index,
                    handle=":1",
                    fd=self._programs[direction],
                    name=f"retina_dp_{direction}@{OWNER}",
                    parent=PARENTS[direction],
                    classid=1,
                    direct_action=True,
                    prio=PRIO_BASE + slot * PRIO_SLOT_STEP,
                )
                return
            except NetlinkError as exc:
                if exc.code != EEXIST:
                    raise
        raise NetlinkError(EEXIST, f"all {PRIO_SLOTS} priority slots are taken")

    def _ensure_clsact(self, ipr: IPRoute, link: Link) -> None:
        try:
            ipr.tc("add", "clsact", index=link.index)
        except NetlinkError as exc:
            if exc.code != EEXIST:
                raise
            return
        self._created_clsact[link.index] = link.name
        self._write_state()

    def _del_filter(self, ipr: IPRoute, index: int, direction: str, prio: int, handle: int) -> bool:
        try:
            ipr.tc("del-filter", "bpf", index=index, handle=handle, prio=prio, parent=PARENTS[direction])
            return True
        except NetlinkError as exc:
            if exc.code not in (ENODEV, ENOENT):
                log.warning("cannot remove TC filter prio %d on ifindex %d: %s", prio, index, exc)
            return False

    def _del_clsact(self, ipr: IPRoute, index: int) -> bool:
        try:
            ipr.tc("del", "clsact", index=index)
            return True
        except NetlinkError as exc:
            if exc.code not in (ENODEV, ENOENT, 22):
                log.warning("cannot remove clsact on ifindex %d: %s", index, exc)
            return False

    # -- state file ------------------------------------------------------------------------------
    def _read_state(self) -> dict[int, str]:
        """Interfaces where an earlier agent created clsact. A damaged file is reported and
        ignored: it must never stop the agent from starting."""
        try:
            data = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring %s: %s", self.state_file, exc)
            return {}
        if not isinstance(data, dict):
            log.warning(
                "ignoring %s: expected an object of ifindex -> interface name, got %s",
                self.state_file,
                type(data).__name__,
            )
            return {}
        state = {}
        for k, v in data.items():
            if str(k).isdigit() and isinstance(v, str):
                state[int(k)] = v
            else:
                log.warning("ignoring entry %r: %r in %s", k, v, self.state_file)
        return state

    def _write_state(self) -> None:
        try:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            self.state_file.write_text(json.dumps(self._created_clsact))
        except OSError as exc:
            log.warning("cannot write %s: %s", self.state_file, exc)
