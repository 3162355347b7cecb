"""What a plugin asks the loader for, and what it gets back."""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass, field


@dataclass
class ProgramSpec:
    """One plugin's BPF object: C source, compile flags and what to attach or load."""

    plugin: str
    source: str
    cflags: list[str] = field(default_factory=list)
    tracepoints: list[tuple[str, str]] = field(default_factory=list)  # ("cat:event", fn)
    sched_cls: list[str] = field(default_factory=list)  # functions loaded as TC programs
    maps: list[str] = field(default_factory=list)
    # Resolved in the loader from the kernel's BTF: (macro, struct, member) become
    # ``-D<macro>=<byte offset>`` (left undefined without BTF); enums are returned by name.
    btf_offsets: list[tuple[str, str, str]] = field(default_factory=list)
    btf_enums: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> ProgramSpec:
        data = dict(data)
        data["tracepoints"] = [tuple(tp) for tp in data.get("tracepoints", [])]
        data["btf_offsets"] = [tuple(o) for o in data.get("btf_offsets", [])]
        return cls(**data)


@dataclass
class LoadedProgram:
    """The fds the agent holds for one plugin. Closing them detaches its tracepoints."""

    plugin: str
    maps: dict[str, int]
    programs: dict[str, int]
    links: list[int]
    enums: dict[str, dict[int, str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def close(self) -> None:
        for fd in [*self.links, *self.programs.values(), *self.maps.values()]:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.links.clear()
        self.programs.clear()
        self.maps.clear()


class LoadError(Exception):
    """The loader could not compile, load or attach a plugin's program."""
