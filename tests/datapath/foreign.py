"""Another owner's TC programs (a CNI such as Cilium), to test coexistence with ours.

Two small counting programs (``bpf/foreign.c``): one attached as a TCX link, one as a cls_bpf
filter. Each counts the UDP packets to one port that pass its hook, and returns TC_ACT_UNSPEC
(TCX_NEXT), so whatever follows it runs too.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from retina_agent.bpf import syscall
from retina_agent.bpf.client import load_programs
from retina_agent.bpf.maps import BpfMap
from retina_agent.bpf.spec import LoadedProgram, ProgramSpec

OBJECT = Path(__file__).parent / "bpf" / "objects" / "foreign.bpf.o"  # from bpf/foreign.c (conftest)
FILTER_NAME = "cni_foreign"
FILTER_PRIO = 1
EEXIST = 17


class ForeignPrograms:
    """A foreign TCX link and a foreign cls_bpf filter on one interface's ingress."""

    def __init__(self, dev: str, port: int) -> None:
        self.dev = dev
        self.index = int(Path(f"/sys/class/net/{dev}/ifindex").read_text())
        result = load_programs(
            [
                ProgramSpec(
                    plugin="foreign",
                    obj=str(OBJECT),
                    constants={"port": port},
                    programs=["foreign_tcx", "foreign_cls"],
                    maps=["seen_tcx", "seen_cls"],
                )
            ]
        )["foreign"]
        assert isinstance(result, LoadedProgram), result
        self.loaded = result
        self.link: int | None = None

    def attach(self) -> None:
        # TCX: appended (no BPF_F_BEFORE), as an owner that came first would be.
        self.link = syscall.link_create_tcx(
            self.loaded.programs["foreign_tcx"], self.index, "ingress", first=False
        )
        with IPRoute() as ipr:
            try:
                ipr.tc("add", "clsact", index=self.index)
            except NetlinkError as exc:
                if exc.code != EEXIST:  # someone made it already
                    raise
            ipr.tc(
                "add-filter",
                "bpf",
                index=self.index,
                handle=":1",
                fd=self.loaded.programs["foreign_cls"],
                name=FILTER_NAME,
                parent="ffff:fff2",
                classid=1,
                direct_action=True,
                prio=FILTER_PRIO,
            )

    def counts(self) -> tuple[int, int]:
        """(packets the TCX program saw, packets the cls_bpf filter saw)."""
        out = []
        for name in ("seen_tcx", "seen_cls"):
            m = BpfMap(self.loaded.maps[name], ctypes.c_uint32, ctypes.c_uint64)
            out.append(m.lookup(ctypes.c_uint32(0)).value)
        return out[0], out[1]

    def still_attached(self) -> tuple[bool, bool]:
        tcx_id = syscall.prog_info(self.loaded.programs["foreign_tcx"]).id
        tcx = tcx_id in syscall.prog_query(self.index, syscall.BPF_TCX_INGRESS)
        shown = subprocess.run(
            ["tc", "filter", "show", "dev", self.dev, "ingress"], capture_output=True, text=True
        ).stdout
        return tcx, FILTER_NAME in shown

    def close(self) -> None:
        if self.link is not None:
            os.close(self.link)
            self.link = None
        with IPRoute() as ipr, contextlib.suppress(NetlinkError):
            ipr.tc("del-filter", "bpf", index=self.index, handle=1, prio=FILTER_PRIO, parent="ffff:fff2")
        self.loaded.close()
