"""The throw-away child that loads prebuilt BPF objects with libbpf and hands fds to the agent.

Run as ``python -m retina_agent.bpf.loader SOCKET_FD``: reads a JSON list of ProgramSpec on
stdin, loads each spec's object on its own (one failing plugin does not stop the others):
refuses a stale object, sets its constants (with the kernel's struct offsets from BTF) and map
sizes, loads it, attaches its tracepoints, then sends ONE SEQPACKET message on SOCKET_FD: a
JSON header that maps names to positions, and every fd as SCM_RIGHTS. A child, so that what
loading costs (libbpf, the kernel's BTF parsed here) is returned to the system when it exits.
"""

from __future__ import annotations

import json
import os
import socket
import sys

from retina_agent.bpf import build, syscall
from retina_agent.bpf.btf import Btf, BtfError
from retina_agent.bpf.libbpf import BpfObject, LibbpfError
from retina_agent.bpf.spec import ProgramSpec
from retina_agent.bpf.tracefs import TracepointError

_btf: Btf | None = None
_btf_error: str | None = None


def _kernel_btf() -> Btf | None:
    global _btf, _btf_error
    if _btf is None and _btf_error is None:
        try:
            _btf = Btf.from_kernel()
        except BtfError as exc:
            _btf_error = str(exc)
    return _btf


def _btf_facts(spec: ProgramSpec) -> tuple[dict[str, int], dict[str, dict[int, str]], list[str]]:
    """Constants for the spec's struct offsets, its enums, and warnings for what is missing."""
    constants: dict[str, int] = {}
    enums: dict[str, dict[int, str]] = {}
    warnings: list[str] = []
    if not (spec.btf_offsets or spec.btf_enums):
        return constants, enums, warnings
    btf = _kernel_btf()
    if btf is None:
        return constants, enums, [f"no kernel BTF: {_btf_error}"]
    for constant, struct_name, member in spec.btf_offsets:
        try:
            constants[constant] = btf.member_offset(struct_name, member)
        except BtfError as exc:
            warnings.append(str(exc))
    for name in spec.btf_enums:
        try:
            enums[name] = btf.enum(name)
        except BtfError as exc:
            warnings.append(str(exc))
    return constants, enums, warnings


def _load_one(spec_json: dict, fds: list[int]) -> dict:
    spec = ProgramSpec.from_json(spec_json)
    btf_constants, enums, warnings = _btf_facts(spec)
    result: dict = {
        "maps": {},
        "programs": {},
        "links": [],
        "enums": {k: {str(v): n for v, n in e.items()} for k, e in enums.items()},
        "warnings": warnings,
    }
    mine: list[int] = []  # this spec's fds (dups: the object closes its own)
    try:
        path = build.object_path(spec.obj)
        build.check(path)
        with BpfObject(path) as obj:
            obj.set_constants({**spec.constants, **btf_constants})
            obj.set_max_entries(spec.max_entries)
            obj.load()
            for tracepoint, fn in spec.tracepoints:
                prog = obj.program_fd(fn)
                link = syscall.attach_tracepoint(prog, tracepoint)
                result["links"].append(len(fds) + len(mine))
                mine.append(link)
                # the program too: its run time counts in the agent's data-path budget
                result["programs"][fn] = len(fds) + len(mine)
                mine.append(os.dup(prog))
            for fn in spec.programs:
                result["programs"][fn] = len(fds) + len(mine)
                mine.append(os.dup(obj.program_fd(fn)))
            for name in spec.maps:
                result["maps"][name] = len(fds) + len(mine)
                mine.append(os.dup(obj.map_fd(name)))
    except (build.StaleObject, LibbpfError, TracepointError, OSError) as exc:  # report, never crash
        for fd in mine:
            os.close(fd)
        return {"error": str(exc).strip()}
    fds.extend(mine)
    return result


def main() -> None:
    sock = socket.socket(fileno=int(sys.argv[1]))
    specs = json.load(sys.stdin)
    fds: list[int] = []
    results = {s["plugin"]: _load_one(s, fds) for s in specs}
    socket.send_fds(sock, [json.dumps(results).encode()], fds)
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
