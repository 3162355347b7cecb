"""What a plugin asks the loader for, and what it gets back."""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass, field


@dataclass
class ProgramSpec:
    """One plugin's BPF object: which prebuilt object, its load-time settings, and what to
    attach or hand back.

    ``obj`` names an object built by ``python -m retina_agent.bpf.build``
    (``dropreason`` -> ``retina_agent/bpf/objects/dropreason.bpf.o``) or is a path to one.
    ``constants`` are the C's ``const volatile`` globals (set before load: the verifier then
    prunes what they turn off); ``max_entries`` sizes maps.
    """

    plugin: str
    obj: str
    constants: dict[str, int] = field(default_factory=dict)
    max_entries: dict[str, int] = field(default_factory=dict)
    tracepoints: list[tuple[str, str]] = field(default_factory=list)  # ("cat:event", program)
    programs: list[str] = field(default_factory=list)  # programs handed back as fds (TC, socket)
    maps: list[str] = field(default_factory=list)
    # Resolved in the loader from the kernel's BTF: (constant, struct, member) sets the constant
    # to the member's byte offset (left at the C's default without BTF); enums are returned by name.
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
    """The loader could not load or attach a plugin's program."""
