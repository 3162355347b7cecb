"""The throw-away child that compiles with bcc and hands fds to the agent.

Run as ``python -m retina_agent.bpf.loader SOCKET_FD``: reads a JSON list of ProgramSpec on
stdin, compiles and loads each spec on its own (one failing plugin does not stop the others),
attaches its tracepoints, then sends ONE SEQPACKET message on SOCKET_FD: a JSON header that
maps names to positions, and every fd as SCM_RIGHTS. It exits with ``os._exit`` so that bcc's
clean-up does not disable the perf events the agent now owns.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile

from retina_agent.bpf.btf import Btf, BtfError
from retina_agent.bpf.spec import ProgramSpec

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


def _btf_facts(spec: ProgramSpec) -> tuple[list[str], dict[str, dict[int, str]], list[str]]:
    """-D flags for the spec's struct offsets, its enums, and warnings for what is missing."""
    cflags, enums, warnings = [], {}, []
    if not (spec.btf_offsets or spec.btf_enums):
        return cflags, enums, warnings
    btf = _kernel_btf()
    if btf is None:
        return cflags, enums, [f"no kernel BTF: {_btf_error}"]
    for macro, struct_name, member in spec.btf_offsets:
        try:
            cflags.append(f"-D{macro}={btf.member_offset(struct_name, member)}")
        except BtfError as exc:
            warnings.append(str(exc))
    for name in spec.btf_enums:
        try:
            enums[name] = btf.enum(name)
        except BtfError as exc:
            warnings.append(str(exc))
    return cflags, enums, warnings


def _verifier_reason(lines: list[str]) -> list[str]:
    """Why the verifier refused a program (bcc prints its whole log): the instruction it stopped
    at and its reason, the two lines before its ``processed N insns`` summary."""
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("processed ") and " insns" in lines[i]:
            last = [ln.strip()[:200] for ln in lines[max(0, i - 2) : i] if ln.strip()]
            return [f"verifier: {' / '.join(last)}"] if last else []
    return []


def _compile_one(spec_json: dict, fds: list[int]) -> dict:
    from bcc import BPF  # only ever imported in this child

    spec = ProgramSpec.from_json(spec_json)
    btf_cflags, enums, warnings = _btf_facts(spec)
    # clang writes compile errors to fd 2: catch them per plugin for the agent's log.
    with tempfile.TemporaryFile() as errbuf:
        saved = os.dup(2)
        os.dup2(errbuf.fileno(), 2)
        try:
            try:
                bpf = BPF(text=spec.source, cflags=spec.cflags + btf_cflags)
                result: dict = {
                    "maps": {},
                    "programs": {},
                    "links": [],
                    "enums": {k: {str(v): n for v, n in e.items()} for k, e in enums.items()},
                    "warnings": warnings,
                }
                for tracepoint, fn in spec.tracepoints:
                    bpf.attach_tracepoint(tp=tracepoint, fn_name=fn)
                    result["links"].append(len(fds))
                    fds.append(bpf.tracepoint_fds[tracepoint.encode()])
                    # the program too: its run time counts in the agent's data-path budget
                    result["programs"][fn] = len(fds)
                    fds.append(bpf.funcs[fn.encode()].fd)
                for fn in spec.sched_cls:
                    result["programs"][fn] = len(fds)
                    fds.append(bpf.load_func(fn, BPF.SCHED_CLS).fd)
                for name in spec.maps:
                    result["maps"][name] = len(fds)
                    fds.append(bpf.get_table(name).map_fd)
                return result
            except Exception as exc:  # report, never crash the batch
                os.dup2(saved, 2)
                errbuf.seek(0)
                lines = errbuf.read().decode(errors="replace").splitlines()
                detail = [ln for ln in lines if "error" in ln.lower()][:5] + _verifier_reason(lines)
                message = str(exc).strip()
                if detail:
                    message += ": " + " | ".join(detail)
                return {"error": message}
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def main() -> None:
    sock = socket.socket(fileno=int(sys.argv[1]))
    specs = json.load(sys.stdin)
    fds: list[int] = []
    results = {s["plugin"]: _compile_one(s, fds) for s in specs}
    socket.send_fds(sock, [json.dumps(results).encode()], fds)
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
