"""Test and benchmark helpers around the agent process: its TC filters on the host, its CPU and memory.

Running the agent itself (``AgentProcess``, ``Metrics``, ``wait_for``, ``free_port``) is product
code used by ``retina-demo``: ``retina_agent.demo.agent_process``, imported here for the tests.
"""

from __future__ import annotations

import os
import subprocess

from retina_agent.demo.agent_process import AgentProcess, Metrics, free_port, wait_for

__all__ = ["AgentProcess", "Metrics", "free_port", "our_tc_filters", "process_stats", "wait_for"]


def our_tc_filters(pid: int | None = None) -> list[str]:
    """What the agent runs on each interface, as ``dev/direction/retina_<plugin>_<dir>@owner``.

    Read from the kernel: our cls_bpf filters (``tc filter show``) and our TCX links (the
    agent's bpf_link fds in ``/proc/<pid>/fdinfo``). The data path is one program per
    direction; the plugins it runs on an interface are the bits of its ``dp_ifaces`` map, so
    each running plugin is listed (``retina_pp_ingress`` when packetparser runs there).
    ``pid``: one agent's only.
    """
    found = []
    names = {}
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    for line in links.splitlines():
        index, dev = line.split(": ")[0], line.split(": ")[1].split("@")[0]
        names[int(index)] = dev
        for direction in ("ingress", "egress"):
            out = subprocess.run(
                ["tc", "filter", "show", "dev", dev, direction], capture_output=True, text=True
            ).stdout
            for filt in out.split("\nfilter "):
                words = filt.split()
                for w in words:
                    if w.startswith("retina_") and (pid is None or f"@{pid}." in w):
                        prog_id = int(words[words.index("id") + 1]) if "id" in words else 0
                        found += _expand(dev, int(index), direction, w, prog_id)
    for owner_pid in [pid] if pid is not None else _retina_pids():
        for ifindex, direction, prog_id in _tcx_links(owner_pid):
            dev = names.get(ifindex, str(ifindex))
            from retina_agent.tc import process_tag

            owner = process_tag(owner_pid) or f"{owner_pid}."
            found += _expand(dev, ifindex, direction, f"retina_dp_{direction}@{owner}", prog_id)
    return found


def _expand(dev: str, ifindex: int, direction: str, name: str, prog_id: int) -> list[str]:
    """One entry per plugin the data path runs on this interface (from its dp_ifaces map)."""
    base, _, owner = name.partition("@")
    if not base.startswith("retina_dp_") or not prog_id:
        return [f"{dev}/{direction}/{name}"]
    from retina_agent.bpf import syscall
    from retina_agent.bpf.datapath import FEATURE_BITS, FEATURE_SHORT

    bits = _iface_bits(syscall, prog_id, ifindex)
    return [
        f"{dev}/{direction}/retina_{FEATURE_SHORT[p]}_{direction}@{owner}"
        for p, bit in FEATURE_BITS.items()
        if bits & bit
    ]


def _iface_bits(syscall, prog_id: int, ifindex: int) -> int:
    from retina_agent.bpf.datapath import InterfaceBits

    try:
        prog_fd = syscall.prog_fd_by_id(prog_id)
    except OSError:
        return 0
    maps: dict[str, int] = {}
    try:
        for map_id in syscall.prog_info(prog_fd).map_ids:
            fd = syscall.map_fd_by_id(map_id)
            maps[syscall.map_info(fd).name] = fd
        if "dp_ifaces" not in maps or "dp_ifaces_hi" not in maps:
            return 0
        return InterfaceBits(maps["dp_ifaces"], maps["dp_ifaces_hi"]).get(ifindex)
    finally:
        os.close(prog_fd)
        for fd in maps.values():
            os.close(fd)


def _retina_pids() -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if b"retina" in f.read():
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


def _tcx_links(pid: int) -> list[tuple[int, str, int]]:
    """(ifindex, direction, program id) of each TCX link the process holds."""
    links = []
    try:
        fds = os.listdir(f"/proc/{pid}/fdinfo")
    except OSError:
        return links
    for fd in fds:
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                info = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
        except OSError:
            continue
        if info.get("link_type", "").strip() != "tcx":
            continue
        attach = info.get("attach_type", "").strip()
        direction = "ingress" if "ingress" in attach or attach.startswith("46") else "egress"
        links.append((int(info["ifindex"]), direction, int(info["prog_id"])))
    return links


def agent_map_fd(pid: int, name: str) -> int:
    """An fd of the agent's BPF map ``name``, found from a program of its TC data path (a
    duplicate: the caller closes it)."""
    from retina_agent.bpf import syscall

    links = _tcx_links(pid)
    if not links:
        raise AssertionError(f"process {pid} holds no TCX link: no data path to find {name} from")
    prog_fd = syscall.prog_fd_by_id(links[0][2])
    try:
        for map_id in syscall.prog_info(prog_fd).map_ids:
            fd = syscall.map_fd_by_id(map_id)
            if syscall.map_info(fd).name == name:
                return fd
            os.close(fd)
    finally:
        os.close(prog_fd)
    raise AssertionError(f"no map {name} in the agent's data path")


def process_stats(pid: int) -> tuple[float, int]:
    """(CPU seconds used, resident set size in bytes) of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    with open(f"/proc/{pid}/status") as f:
        rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return cpu, rss_kb * 1024
