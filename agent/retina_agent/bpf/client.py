"""Agent side of the loader: run the child, receive its fds."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

from retina_agent.bpf.spec import LoadedProgram, LoadError, ProgramSpec

MAX_FDS = 250  # SCM_RIGHTS carries at most 253 fds in one message


def explain(error: str, spec: ProgramSpec) -> str:
    """Add the likely fix to a loader error (libbpf's own words rarely name it)."""
    refused = "Operation not permitted" in error or "EPERM" in error
    if not refused:
        return error
    needs = ["CAP_BPF (or CAP_SYS_ADMIN)"]
    if spec.programs:
        needs.append("CAP_NET_ADMIN for TC programs")
    if spec.tracepoints:
        needs.append("CAP_PERFMON for tracepoints")
    return (
        f"{error} -- the kernel refused bpf(): the agent needs {', '.join(needs)}; in a "
        "container, a seccomp profile may also block bpf() and perf_event_open() "
        "(seccompProfile: Unconfined)"
    )


def load_programs(specs: list[ProgramSpec], timeout: float = 180.0) -> dict[str, LoadedProgram | LoadError]:
    """Load and attach every spec in one child process. Never raises for a plugin."""
    if not specs:
        return {}
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs:
        proc = subprocess.Popen(
            [sys.executable, "-m", "retina_agent.bpf.loader", str(theirs.fileno())],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            pass_fds=[theirs.fileno()],
        )
        theirs.close()
        try:
            _, stderr = proc.communicate(json.dumps([s.to_json() for s in specs]).encode(), timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            return {s.plugin: LoadError(f"BPF loader timed out after {timeout:.0f}s") for s in specs}
        ours.settimeout(5)
        try:
            msg, fds, _, _ = socket.recv_fds(ours, 1 << 20, MAX_FDS)
        except (TimeoutError, OSError):
            msg, fds = b"", []
        if not msg:
            tail = stderr.decode(errors="replace").strip().splitlines()[-3:]
            reason = f"BPF loader exited with {proc.returncode}: {' | '.join(tail)}"
            return {s.plugin: LoadError(reason) for s in specs}
    results: dict[str, LoadedProgram | LoadError] = {}
    by_plugin = {s.plugin: s for s in specs}
    for plugin, r in json.loads(msg).items():
        if "error" in r:
            results[plugin] = LoadError(explain(r["error"], by_plugin[plugin]))
            continue
        results[plugin] = LoadedProgram(
            plugin=plugin,
            maps={k: fds[i] for k, i in r["maps"].items()},
            programs={k: fds[i] for k, i in r["programs"].items()},
            links=[fds[i] for i in r["links"]],
            enums={k: {int(v): n for v, n in e.items()} for k, e in r.get("enums", {}).items()},
            warnings=r.get("warnings", []),
        )
    return results
