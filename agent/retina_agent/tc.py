"""Attach TC (clsact, cls_bpf direct-action) programs to interfaces, and remove only ours.

Coexistence rules (Cilium and other CNIs attach TC programs too):
- our filters are named ``retina_<program>@<pid>.<start time>`` (the agent process that owns
  them: the start time tells a restarted container's PID 1 from the one before it) and use
  priorities from ``PRIO_BASE`` up; programs return TC_ACT_UNSPEC so the next filter runs;
- we never replace or delete a filter that is not ours;
- a clsact qdisc is removed at shutdown only if we created it and nothing else uses it.
The interfaces where we created clsact are written to a state file, so that a restart after a
crash removes our stale filters and qdiscs. A filter is stale when the agent that owns it is
gone; filters of a live agent (tests and benchmarks run several) are left alone, and a second
agent takes the next free priority slot.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from retina_agent.links import Link, LinkSelector, LinkWatcher, current_links

log = logging.getLogger(__name__)

NAME_PREFIX = "retina_"
PRIO_BASE = 0xC000
PRIO_SLOTS = 8  # agents that can hold filters on one interface at once
PRIO_SLOT_STEP = 0x100
PARENTS = {"ingress": "ffff:fff2", "egress": "ffff:fff3"}
ENOENT, ENODEV, EEXIST = 2, 19, 17


@dataclass(frozen=True)
class TcProgram:
    name: str  # filter name, starts with NAME_PREFIX
    fd: int
    direction: str  # ingress | egress
    prio: int
    selector: LinkSelector


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
    """Is the agent process that attached this filter still running (same pid and start)?

    A filter of an agent in another PID namespace (the container before a restart) counts as
    stale: one agent runs per node.
    """
    owner = owner_of(name)
    if owner == OWNER:
        return True
    pid = owner.partition(".")[0]
    if not pid.isdigit() or process_tag(int(pid)) != owner:
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"retina" in f.read()
    except OSError:
        return False


def our_filters(ipr: IPRoute, index: int) -> list[tuple[str, int, int, str]]:
    """(direction, prio, handle, name) of every retina filter on one interface."""
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


class TcManager:
    """Keeps registered TC programs attached to every selected interface, as links come and go."""

    def __init__(self, state_dir: Path) -> None:
        self.state_file = state_dir / "tc-state.json"
        self._lock = threading.Lock()
        self._programs: list[TcProgram] = []
        self._attached: dict[int, set[str]] = {}  # ifindex -> filter names
        self._links: dict[int, Link] = {}
        self._created_clsact: dict[int, str] = {}  # ifindex -> name
        self._watcher: LinkWatcher | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def cleanup_stale(self) -> list[str]:
        """Remove filters left by an earlier agent that did not stop cleanly."""
        removed = []
        created = self._read_state()
        with self._lock, IPRoute() as ipr:
            for link in current_links():
                for direction, prio, handle, name in our_filters(ipr, link.index):
                    if owner_alive(name):
                        continue
                    if self._del_filter(ipr, link.index, direction, prio, handle):
                        removed.append(f"{link.name}/{direction}/{name}")
                if link.name in created.values() and not _other_filters(ipr, link.index):
                    self._del_clsact(ipr, link.index)
                    removed.append(f"{link.name}/clsact")
        self._write_state()
        return removed

    def start(self) -> None:
        self._watcher = LinkWatcher(self._on_new_link, self._on_gone_link)
        self._watcher.start()
        for link in current_links():
            self._on_new_link(link)

    def add_program(self, program: TcProgram) -> None:
        with self._lock:
            self._programs.append(program)
            links = list(self._links.values())
        for link in links:
            self._attach(link, [program])

    def attached(self) -> dict[str, list[str]]:
        with self._lock:
            return {self._links[i].name: sorted(n) for i, n in self._attached.items()
                    if i in self._links}

    def stop(self) -> None:
        if self._watcher:
            self._watcher.stop()
        with self._lock, IPRoute() as ipr:
            for index in list(self._attached):
                for direction, prio, handle, name in our_filters(ipr, index):
                    if owner_of(name) == OWNER:
                        self._del_filter(ipr, index, direction, prio, handle)
            for index in list(self._created_clsact):
                if not _other_filters(ipr, index):
                    self._del_clsact(ipr, index)
            self._attached.clear()
            self._created_clsact.clear()
            self._write_state()

    # -- link events -------------------------------------------------------------------------
    def _on_new_link(self, link: Link) -> None:
        with self._lock:
            known = self._links.get(link.index)
            self._links[link.index] = link
            if known is not None and known.name == link.name:
                programs = [p for p in self._programs
                            if p.name not in self._attached.get(link.index, set())]
            else:
                programs = list(self._programs)
        self._attach(link, programs)

    def _on_gone_link(self, link: Link) -> None:
        with self._lock:
            self._links.pop(link.index, None)
            self._attached.pop(link.index, None)
            if self._created_clsact.pop(link.index, None) is not None:
                self._write_state()

    def _attach(self, link: Link, programs: list[TcProgram]) -> None:
        wanted = [p for p in programs if p.selector.matches(link)]
        if not wanted:
            return
        with self._lock, IPRoute() as ipr:
            if link.index not in self._links:
                return
            try:
                self._ensure_clsact(ipr, link)
                for p in wanted:
                    if p.name in self._attached.get(link.index, set()):
                        continue
                    self._add_filter(ipr, link, p)
                    self._attached.setdefault(link.index, set()).add(p.name)
                    log.debug("attached %s to %s %s", p.name, link.name, p.direction)
            except NetlinkError as exc:
                if exc.code in (ENODEV, ENOENT):  # the link went away meanwhile
                    return
                log.warning("cannot attach TC programs to %s: %s", link.name, exc)

    # -- netlink helpers (caller holds the lock) ---------------------------------------------
    def _add_filter(self, ipr: IPRoute, link: Link, p: TcProgram) -> None:
        """Add ``p`` at its priority, or the next slot where another live agent holds it."""
        for slot in range(PRIO_SLOTS):
            try:
                ipr.tc("add-filter", "bpf", index=link.index, handle=":1", fd=p.fd,
                       name=f"{p.name}@{OWNER}", parent=PARENTS[p.direction], classid=1,
                       direct_action=True, prio=p.prio + slot * PRIO_SLOT_STEP)
                return
            except NetlinkError as exc:
                if exc.code != EEXIST:
                    raise
        raise NetlinkError(EEXIST, f"all {PRIO_SLOTS} priority slots of {p.name} are taken")

    def _ensure_clsact(self, ipr: IPRoute, link: Link) -> None:
        try:
            ipr.tc("add", "clsact", index=link.index)
        except NetlinkError as exc:
            if exc.code != EEXIST:
                raise
            return
        self._created_clsact[link.index] = link.name
        self._write_state()

    def _del_filter(self, ipr: IPRoute, index: int, direction: str, prio: int,
                    handle: int) -> None:
        try:
            ipr.tc("del-filter", "bpf", index=index, handle=handle, prio=prio,
                         parent=PARENTS[direction])
        except NetlinkError as exc:
            if exc.code not in (ENODEV, ENOENT):
                log.warning("cannot remove TC filter prio %d on ifindex %d: %s", prio, index, exc)

    def _del_clsact(self, ipr: IPRoute, index: int) -> None:
        try:
            ipr.tc("del", "clsact", index=index)
        except NetlinkError as exc:
            if exc.code not in (ENODEV, ENOENT, 22):
                log.warning("cannot remove clsact on ifindex %d: %s", index, exc)

    def _read_state(self) -> dict[int, str]:
        try:
            return {int(k): v for k, v in json.loads(self.state_file.read_text()).items()}
        except (FileNotFoundError, ValueError):
            return {}

    def _write_state(self) -> None:
        try:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            self.state_file.write_text(json.dumps(self._created_clsact))
        except OSError as exc:
            log.warning("cannot write %s: %s", self.state_file, exc)
