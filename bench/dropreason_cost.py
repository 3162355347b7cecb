"""Kernel cost per drop of dropreason's ``on_kfree_skb``: a baseline object against this tree's.

The dropreason object of a git ref (``--baseline``, default ``main``; built from that ref's
sources into a temporary folder) and this tree's are loaded side by side, each in the variants
that matter, with the agent's own constants (the plugin's ``prepare`` and the loader's BTF
offsets), and attached to ``skb:kfree_skb``; then exactly one of them is enabled at a time while
a UDP flood from pod a overflows a socket in pod b that never reads (SOCKET_RCVBUFF drops),
order rotated every round. Per variant and object: the median over the rounds of ns per run
(run-time accounting, BPF_ENABLE_STATS) and its interquartile spread; the per-round ratio
tree / baseline, as a median too, so that drift in the machine's load cancels.

Variants: ``basic`` (no pod level), ``pod`` (pod level, both pods of interest: every drop is
counted per flow) and ``pod_other`` (pod level, neither pod of interest: what a drop of other
traffic costs). The tracepoint is node-wide: other drops on the machine run the programs too
(a small share beside the flood's).

Run as root: ``.venv/bin/python bench/dropreason_cost.py [--rounds 30 --window 0.5]``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from retina_agent.bpf import build, syscall
from retina_agent.bpf.libbpf import BpfObject
from retina_agent.bpf.loader import _btf_facts
from retina_agent.bpf.maps import BpfMap
from retina_agent.bpf.spec import ProgramSpec
from retina_agent.demo.node import LabNode
from retina_agent.plugins.base import PERF_EVENT_IOC_DISABLE, PERF_EVENT_IOC_ENABLE
from retina_agent.podlevel import AddrKey, addr_bytes

ROOT = Path(__file__).resolve().parents[1]

TRACEPOINT = "skb:kfree_skb"
PORT = 7390
VARIANTS = ("basic", "pod", "pod_other")

# pod a floods pod b's port with 64-byte datagrams until killed (bounded by --seconds)
FLOOD = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((sys.argv[1], int(sys.argv[2])))
end = time.monotonic() + float(sys.argv[3])
payload = b"x" * 64
while time.monotonic() < end:
    for _ in range(1000):
        try:
            s.send(payload)
        except OSError:
            pass
"""


SPEC = """
import json, sys, tempfile
from pathlib import Path
from retina_agent.config import load_config
from retina_agent.plugins.base import PluginContext
from retina_agent.plugins.dropreason import DropReason
from retina_agent.tc import TcManager

pod_level = sys.argv[1] == "1"
overrides = {"enabledPlugin": ["dropreason"], **({"enablePodLevel": True} if pod_level else {})}
config = load_config(None, overrides)
pod = None
if pod_level:
    from retina_agent.podlevel.cluster import build_pod_level

    pod = build_pod_level(config)  # never started: only its settings are used
with tempfile.TemporaryDirectory() as tmp:
    state = Path(tmp)
    tc = TcManager(state, config.data_path_attach)
    ctx = PluginContext(config=config, tc=tc, state_dir=state, pod_level=pod)
    print(json.dumps(DropReason(ctx).prepare().to_json()))
"""


def spec_for(agent_dir: Path, pod_level: bool) -> ProgramSpec:
    """dropreason's ProgramSpec as the agent of ``agent_dir`` builds it at start (its plugin's
    ``prepare``: constants and map sizes belong to the object of the same sources)."""
    env = {**os.environ, "PYTHONPATH": str(agent_dir)}
    out = subprocess.run(
        [sys.executable, "-c", SPEC, "1" if pod_level else "0"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return ProgramSpec.from_json(json.loads(out.stdout))


@dataclass
class Loaded:
    """One object in one variant, loaded and attached (its perf event disabled until enabled)."""

    label: str
    obj: BpfObject
    prog: int
    link: int
    samples: list[float] = field(default_factory=list)

    def enable(self, on: bool) -> None:
        fcntl.ioctl(self.link, PERF_EVENT_IOC_ENABLE if on else PERF_EVENT_IOC_DISABLE, 0)

    def stats(self) -> tuple[int, int]:
        info = syscall.prog_info(self.prog)
        return info.run_time_ns, info.run_cnt

    def close(self) -> None:
        os.close(self.link)
        self.obj.close()


def load(label: str, path: Path, spec, interest: list[str]) -> Loaded:
    btf_constants, _enums, warnings = _btf_facts(spec)
    if warnings:
        raise SystemExit(f"{label}: {warnings}")
    obj = BpfObject(path)
    obj.set_constants({**spec.constants, **btf_constants})
    obj.set_max_entries(spec.max_entries)
    obj.load()
    if "ips_of_interest" in spec.maps:
        filt = BpfMap(obj.map_fd("ips_of_interest"), AddrKey, ctypes.c_uint8)
        for ip in interest:
            filt.update_raw(addr_bytes(ip), b"\x01")
    prog = obj.program_fd("on_kfree_skb")
    link = syscall.attach_tracepoint(prog, TRACEPOINT)
    loaded = Loaded(label, obj, prog, link)
    loaded.enable(False)
    return loaded


def baseline_object(ref: str, workdir: Path) -> Path:
    """dropreason.bpf.o built from ``ref``'s sources (its whole agent package, so its build flags
    come from its own build.py)."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "agent"], check=True, capture_output=True
    )
    subprocess.run(["tar", "-x", "-C", str(workdir)], input=archive.stdout, check=True)
    env = {**os.environ, "PYTHONPATH": str(workdir / "agent")}
    subprocess.run(
        [sys.executable, "-m", "retina_agent.bpf.build"],
        cwd=workdir,
        env=env,
        check=True,
        capture_output=True,
    )
    return workdir / "agent" / "retina_agent" / "bpf" / "objects" / "dropreason.bpf.o"


def quartiles(values: list[float]) -> dict:
    q = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else [values[0]] * 3
    return {"median": round(q[1], 1), "q1": round(q[0], 1), "q3": round(q[2], 1), "n": len(values)}


def ratio_quartiles(values: list[float]) -> dict:
    q = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else [values[0]] * 3
    return {"median": round(q[1], 3), "q1": round(q[0], 3), "q3": round(q[2], 3), "n": len(values)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", default="main", help="git ref whose dropreason.c is the baseline")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--window", type=float, default=0.5, help="seconds each program runs per round")
    p.add_argument(
        "--copies",
        type=int,
        default=3,
        help="loads of each object per variant (one load's cost drifts by up to ~10%% with where its "
        "code and maps landed: the median over several loads evens that out)",
    )
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--cpu", type=int, default=os.cpu_count() - 1, help="CPU of the flood (-1: not pinned)")
    p.add_argument("--json", type=Path, help="also write the report here")
    args = p.parse_args()

    build.build()  # this tree's objects, if stale
    candidate = build.object_path("dropreason")
    stats_fd = syscall.enable_stats()
    loaded: list[Loaded] = []
    with tempfile.TemporaryDirectory(prefix="dropcost-") as tmp, LabNode(pod_names=("a", "b")) as node:
        a, b = node["a"], node["b"]
        baseline = baseline_object(args.baseline, Path(tmp))
        agents = {"baseline": Path(tmp) / "agent", "tree": ROOT / "agent"}
        objects = {"baseline": baseline, "tree": candidate}
        specs = {(v, w): spec_for(agents[w], v != "basic") for v in args.variants for w in agents}
        # The first program loaded and attached runs markedly slower (~50 ns, whichever it is):
        # a load that is never measured takes that place.
        spare = load("spare", candidate, specs[args.variants[0], "tree"], [])
        for copy in range(args.copies):
            for variant in args.variants:
                interest = [a.ip, b.ip] if variant == "pod" else []
                # loaded in turn baseline first, then tree first: a load's cost depends a little
                # on its neighbours (where its code and maps landed)
                for who in list(agents)[:: 1 if copy % 2 == 0 else -1]:
                    loaded.append(
                        load(f"{variant}/{who}/{copy}", objects[who], specs[variant, who], interest)
                    )
        with b.entered():  # a socket in pod b that never reads: every datagram past its buffer drops
            import socket

            sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
            sink.bind((b.ip, PORT))
        seconds = args.rounds * len(loaded) * (args.window + 0.1) + 30
        flood = a.popen([sys.executable, "-c", FLOOD, b.ip, str(PORT), str(seconds)])
        try:
            if args.cpu >= 0:
                os.sched_setaffinity(flood.pid, {args.cpu})
            time.sleep(1.0)
            for r in range(args.rounds):
                shift = r % len(loaded)
                for prog in loaded[shift:] + loaded[:shift]:
                    before = prog.stats()
                    prog.enable(True)
                    time.sleep(args.window)
                    prog.enable(False)
                    after = prog.stats()
                    runs = after[1] - before[1]
                    if runs:
                        prog.samples.append((after[0] - before[0]) / runs)
        finally:
            flood.kill()
            flood.wait()
            sink.close()
            for prog in [*loaded, spare]:
                prog.close()
            os.close(stats_fd)
    report: dict = {
        "baseline": args.baseline,
        "rounds": args.rounds,
        "window_s": args.window,
        "ns_per_run": {},
    }
    print(f"{'variant':10} {'baseline ns':>22} {'tree ns':>22} {'tree/baseline':>22}")
    for variant in args.variants:
        # per round: the median over the copies of each object; the ratio of those two
        per_round = {}
        for who in ("baseline", "tree"):
            copies = [x.samples for x in loaded if x.label.startswith(f"{variant}/{who}/")]
            per_round[who] = [statistics.median(s) for s in zip(*copies, strict=False)]
        ratios = [t / b for b, t in zip(per_round["baseline"], per_round["tree"], strict=False) if b]
        row = {
            "baseline": quartiles(per_round["baseline"]),
            "tree": quartiles(per_round["tree"]),
            "ratio": ratio_quartiles(ratios),
            "per_load_median": {
                x.label: round(statistics.median(x.samples), 1)
                for x in loaded
                if x.samples and x.label.startswith(f"{variant}/")
            },
        }
        report["ns_per_run"][variant] = row

        def fmt(q: dict) -> str:
            return f"{q['median']} [{q['q1']}, {q['q3']}]"

        print(f"{variant:10} {fmt(row['baseline']):>22} {fmt(row['tree']):>22} {fmt(row['ratio']):>22}")
        print(
            " " * 11
            + "per load: "
            + ", ".join(f"{k.split('/', 1)[1]} {v}" for k, v in row["per_load_median"].items())
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
