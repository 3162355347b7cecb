"""The program the guest runs as its init: preflight, the agent with every plugin, a small lab.

Runs as PID 1 of a qemu guest (see initramfs.py), writes everything to the results disk
(/results) and powers the guest off. What it does, in order:

1. mounts what a node has (/run, /tmp, cgroup2, debugfs and tracefs as systemd mounts them;
   bpffs is left to the agent, as on a stock Debian node), the kernel's modules (the second
   disk) at /lib/modules/<release> and its config at /boot, as the kernel package installs them;
2. ``retina-preflight --json`` (live), then captures the host tree preflight reads (kernel
   config, BTF, tracefs formats, ...) as a fixture for ``retina-preflight --root``;
3. a lab node (retina_lab: a bridge, pods web/db/dns, an iptables DROP in db, a dnsmasq pod),
   the real ``retina-agent`` with every plugin, then traffic whose packets are counted on the
   sending and receiving side: UDP delivered, UDP dropped by iptables, connects to a closed
   port, DNS queries answered NOERROR and NXDOMAIN; then the agent's counters and plugin states.

Between 2 and 3, the verifier phase: every configuration that changes the BPF programs'
load-time constants (``retina_agent.verify``: each plugin alone, basic, pod level, ...) loaded
through the agent's own path, per plugin loaded / refused with the verifier's words / unavailable.
The lab's agent runs one configuration only; a kernel's verifier prunes by those constants, so a
kernel may accept that one and refuse the default install.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

from retina_kernels.report import PHASE_DROP_REASON

RESULTS = Path("/results")
#: Traffic of the lab, per kind (small: the guest is emulated).
UDP_DELIVERED = 100
UDP_DROPPED = 40
CLOSED_PORT_CONNECTS = 3
DNS_FOUND = 5
DNS_MISSING = 5
PAYLOAD = 100
UDP_FRAME = PAYLOAD + 8 + 20 + 14  # payload + UDP + IPv4 + Ethernet
#: An API server that never answers (the guest has no cluster).
KUBECONFIG = """\
apiVersion: v1
kind: Config
current-context: none
clusters: [{{name: none, cluster: {{server: "https://127.0.0.1:{port}"}}}}]
users: [{{name: none, user: {{token: not-a-secret}}}}]
contexts: [{{name: none, context: {{cluster: none, user: none}}}}]
"""
#: How long the agent may take to load its BPF objects and start under emulation (TCG, a loaded
#: host); nothing is compiled in the guest any more.
AGENT_READY_TIMEOUT = 1800.0


def say(message: str) -> None:
    line = f"[guest {time.monotonic():8.1f}s] {message}"
    print(line, flush=True)
    with open(RESULTS / "guest.log", "a") as f:
        f.write(line + "\n")


class Progress:
    """The step the guest is in, told on the console every ``HEARTBEAT`` seconds.

    The host takes a console silent for long as a hung guest, so a heartbeat shows the guest is
    alive; one that stays in the same step past ``STEP_STALL`` is stuck: its Python stacks (all
    threads) and the kernel's blocked tasks and CPU backtraces (sysrq w, l) go to the console,
    so the console log says where it hung, and the step's name lands in result.json.
    """

    def __init__(self) -> None:
        self.step, self.since, self.limit = "boot", time.monotonic(), STEP_STALL
        self.on_stuck = None  # called with the step's name once its stacks are out
        self._stop = threading.Event()

    def enter(self, step: str, limit: float | None = None) -> None:
        """Now in ``step``, which may take ``limit`` seconds (default ``STEP_STALL``)."""
        self.step, self.since, self.limit = step, time.monotonic(), limit or STEP_STALL
        say(f"step: {step}")

    def _watch(self) -> None:
        while not self._stop.wait(HEARTBEAT):
            step, spent = self.step, time.monotonic() - self.since
            say(f"heartbeat: in step {step} for {spent:.0f}s")
            if spent > self.limit:
                say(f"step {step} made no progress for {spent:.0f}s: Python stacks, then sysrq w and l")
                faulthandler.dump_traceback(file=sys.stdout, all_threads=True)
                for key in "wl":  # blocked tasks; backtraces of every CPU
                    with contextlib.suppress(OSError), open("/proc/sysrq-trigger", "w") as f:
                        f.write(key)
                time.sleep(10)  # the kernel's dump reaches the console
                if self.on_stuck is not None:
                    self.on_stuck(step)
                return

    def start(self) -> Progress:
        threading.Thread(target=self._watch, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()


#: Console heartbeat interval, and how long one step may run before its stacks are dumped (the
#: agent's start has a limit of its own).
HEARTBEAT = 30.0
STEP_STALL = 900.0
PROGRESS = Progress()


def sh(*argv: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=timeout)


# -- 1. the node ---------------------------------------------------------------------------------
def prepare_node() -> dict:
    release = os.uname().release
    for target, fstype in (
        ("/run", "tmpfs"),
        ("/tmp", "tmpfs"),
        ("/sys/fs/cgroup", "cgroup2"),
        ("/sys/kernel/debug", "debugfs"),
        ("/sys/kernel/tracing", "tracefs"),
    ):
        os.makedirs(target, exist_ok=True)
        sh("mount", "-t", fstype, fstype, target, check=False)
    kernel_disk = Path("/mnt/kernel")
    modules = next(
        kernel_disk / base / release
        for base in ("lib/modules", "usr/lib/modules")
        if (kernel_disk / base / release).is_dir()
    )
    Path(f"/lib/modules/{release}").mkdir(parents=True, exist_ok=True)
    sh("mount", "--bind", str(modules), f"/lib/modules/{release}")
    shutil.copy2(kernel_disk / "boot" / f"config-{release}", f"/boot/config-{release}")
    sh("ip", "link", "set", "lo", "up")
    sh("hostname", "retina-guest", check=False)
    return {
        "release": release,
        "version": Path("/proc/version").read_text().strip(),
        "cpus": os.cpu_count(),
        "memory_kb": int(
            next(line.split()[1] for line in open("/proc/meminfo") if line.startswith("MemTotal"))
        ),
        "btf": os.path.isfile("/sys/kernel/btf/vmlinux"),
        "headers": os.path.exists(f"/lib/modules/{release}/build"),  # False: the matrix gives none
    }


# -- 2. preflight and the fixture tree -----------------------------------------------------------
def run_preflight(*args: str) -> tuple[int, dict]:
    proc = subprocess.run(
        ["retina-preflight", "--json", *args], capture_output=True, text=True, timeout=600, check=False
    )
    if not proc.stdout:
        raise RuntimeError(f"retina-preflight printed no report: {proc.stderr[-2000:]}")
    return proc.returncode, json.loads(proc.stdout)


#: Files preflight reads from a host (preflight/host.py, kernel.py, tracepoints.py, ...).
TREE_FILES = (
    "/etc/os-release",
    "/proc/sys/kernel/osrelease",
    "/proc/sys/kernel/hostname",
    "/proc/sys/kernel/unprivileged_bpf_disabled",
    "/proc/filesystems",
    "/proc/self/mounts",
    "/proc/self/status",
    "/proc/self/limits",
)
TRACEPOINT_FORMATS = (
    "skb/kfree_skb",
    "tcp/tcp_retransmit_skb",
    "sock/inet_sock_set_state",
    "tcp/tcp_send_reset",
    "tcp/tcp_receive_reset",
)
#: Live-only probes: recorded in the tree from the live run, as retina-preflight.probes.json.
LIVE_ONLY = ("bpf_syscall", "libbpf", "tc_clsact", "capabilities")
#: BTF is checked for presence and size only; the fixture keeps its first bytes, not 5 MB.
BTF_HEAD = 4096


def capture_tree(tree: Path, live: dict) -> dict:
    """The files preflight reads, copied from this guest into ``tree`` (a --root fixture)."""
    release = os.uname().release
    copied: list[str] = []

    def copy(path: str, limit: int | None = None) -> None:
        if not os.path.exists(path):
            return
        target = tree / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "rb") as f:
            target.write_bytes(f.read(limit) if limit else f.read())
        copied.append(path)

    for path in TREE_FILES:
        copy(path)
    copy(f"/boot/config-{release}")
    btf_size = (
        os.path.getsize("/sys/kernel/btf/vmlinux") if os.path.exists("/sys/kernel/btf/vmlinux") else None
    )
    copy("/sys/kernel/btf/vmlinux", BTF_HEAD)
    copy("/sys/kernel/tracing/kprobe_events")
    for event in TRACEPOINT_FORMATS:
        copy(f"/sys/kernel/tracing/events/{event}/format")
    for d in ("sys/fs/bpf", "sys/kernel/tracing", "sys/kernel/debug"):
        (tree / d).mkdir(parents=True, exist_ok=True)
        (tree / d / ".keep").touch()
    (tree / f"lib/modules/{release}").mkdir(parents=True, exist_ok=True)  # no build link: no headers
    checks = {c["id"]: c for c in live["checks"]}
    probes = {
        cid: {k: checks[cid][k] for k in ("verdict", "value", "fix") if checks[cid].get(k)}
        for cid in LIVE_ONLY
        if cid in checks
    }
    (tree / "retina-preflight.probes.json").write_text(json.dumps(probes, indent=1) + "\n")
    return {"files": copied, "btf_size": btf_size, "btf_kept_bytes": BTF_HEAD if btf_size else 0}


# -- the verifier phase ---------------------------------------------------------------------------
#: Seconds per loader run of a configuration (its objects load in well under a second on this
#: host; TCG and a loaded host are slower, and a kernel's verifier may take long to refuse).
VERIFY_TIMEOUT = 600.0


def run_verifier() -> dict:
    """``retina_agent.verify`` over every configuration; its report and the time it took."""
    from retina_agent.verify import verify

    started = time.monotonic()
    configurations = verify(timeout=VERIFY_TIMEOUT, log=lambda line: say("verify: " + line[:400]))
    return {"seconds": round(time.monotonic() - started, 1), "configurations": configurations}


# -- 3. the lab ----------------------------------------------------------------------------------
def rss_peak_kb(pid: int) -> tuple[int, int]:
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(status["VmRSS"].split()[0]), int(status["VmHWM"].split()[0])


def drops_by_reason(m) -> dict[str, float]:
    found: dict[str, float] = {}
    for name, labels, value in m.samples:
        if name == "networkobservability_drop_count":
            found[labels["reason"]] = found.get(labels["reason"], 0) + value
    return found


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}


FORWARD = "networkobservability_forward_count"
DROPS = "networkobservability_drop_count"
NETFILTER_DROPS = "networkobservability_netfilter_drop_count"
#: The drop reasons the lab's traffic gets (kernels from 5.17; before, every drop is UNKNOWN).
LAB_DROP_REASONS = frozenset(PHASE_DROP_REASON.values())
#: How long a phase's counters may take to show (the emulated agent harvests slowly).
SETTLE_DEADLINE = 300.0


def _counted(m) -> tuple:
    """What the lab's phases change, for ``settle`` to see it stand still. Drops only under the
    reasons the lab causes: the guest's own background drops (the agent's loopback scrapes and
    API retries) never stop, and newer kernels name them (6.12: QUEUE_PURGE, TCP_OLD_DATA, ...,
    about 2 a second), so counting them kept every phase waiting for its whole deadline."""
    return (
        m.value(FORWARD, direction="ingress"),
        m.value(FORWARD, direction="egress"),
        m.value("networkobservability_dns_request_count"),
        m.value("networkobservability_dns_response_count"),
        m.value(NETFILTER_DROPS),
        tuple(sorted((k, v) for k, v in drops_by_reason(m).items() if k in LAB_DROP_REASONS)),
    )


def scrape(agent):
    """The agent's /metrics, retried: under emulation one scrape can outlast its 10s timeout."""
    deadline = time.monotonic() + SETTLE_DEADLINE
    while True:
        try:
            return agent.scrape()
        except OSError:  # socket timeouts and URLError
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def settle(agent, before, reached):
    """Scrape until ``reached(scrape)`` holds and the lab's counters stayed the same over three
    scrapes a second apart (harvests are 1s apart: nothing of the phase is still in flight);
    at the deadline, the last scrape (the report then shows what was missing)."""
    deadline = time.monotonic() + SETTLE_DEADLINE
    last, same = None, 0
    while True:
        m = scrape(agent)
        key = _counted(m)
        same = same + 1 if reached(m) and key == last else 0
        if same >= 2 or time.monotonic() > deadline:
            return m
        last = key
        time.sleep(1)  # the poll interval


class _Stops:
    """A process stopped with the lab's servers (``close``)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc

    def close(self) -> None:
        self.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)


def _silent_listener() -> socket.socket:
    """A TCP listener on loopback that accepts connections and never answers them."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                held.append(server.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    return server


def _tail_to_console(path: Path, stop: threading.Event) -> None:
    """The agent's log lines on the console while it starts (what it compiled, what it attached)."""
    offset = 0
    while not stop.wait(5):
        with contextlib.suppress(OSError):
            with open(path, "rb") as f:
                f.seek(offset)
                chunk = f.read()
            offset += len(chunk)
            for line in chunk.decode(errors="replace").splitlines():
                if "urllib3" not in line:  # the silent API server's retries
                    say("agent: " + line[:240])


def run_lab() -> dict:
    from retina_agent.config import PLUGIN_NAMES
    from retina_agent.demo.cli import _dns, dnsmasq_argv
    from retina_lab import LabNode
    from retina_lab.agent import AgentProcess, _tcx_links, our_tc_filters
    from retina_lab.traffic import TcpServer, connect_refused, send_udp, udp_sink

    out: dict = {}
    node = LabNode(pod_names=("web", "db", "dns"))
    agent = None
    dnsmasq = None
    sink = None
    servers: list = []
    try:
        PROGRESS.enter("lab: node up")
        node.up()
        web, db, dns_pod = node["web"], node["db"], node["dns"]
        db.run(["iptables", "-A", "INPUT", "-p", "udp", "--dport", "5433", "-j", "DROP"])
        sink = udp_sink(db, 5432)
        sink.settimeout(0.5)
        dnsmasq = dns_pod.popen(
            dnsmasq_argv(dns_pod.ip, db.ip, "--user=root"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # No IPv6 router solicitations: Linux repeats them with a backoff (4 s, 8 s, ... up to an
        # hour), so one lands in a counted phase now and then: a pod's (70 bytes, ingress at its
        # veth, flooded: egress at the two others; seen on 5.10) or a host veth's own (egress
        # only; seen on 6.1). Bridge ports need no addresses of their own; pods and the bridge
        # keep theirs but stop soliciting.
        sh("sysctl", "-qw", f"net.ipv6.conf.{node.bridge}.router_solicitations=0")
        for pod in node.pods.values():
            sh("sysctl", "-qw", f"net.ipv6.conf.{pod.host_veth}.disable_ipv6=1")
            pod.run(["sysctl", "-qw", "net.ipv6.conf.eth0.router_solicitations=0"])
        # Static neighbours and bridge entries: the counted phases then carry no ARP, and the
        # bridge never floods a pod's unicast to every port because it forgot where a pod is
        # (one-way UDP lets its FDB entry age out; seen on 6.1 as OTHERHOST drops in the third pod).
        for pod in node.pods.values():
            sh("bridge", "fdb", "replace", pod.mac, "dev", pod.host_veth, "master", "static")
        for pod in node.pods.values():
            for other in node.pods.values():
                if other is not pod:
                    pod.run(
                        [
                            "ip",
                            "neigh",
                            "replace",
                            other.ip,
                            "lladdr",
                            other.mac,
                            "nud",
                            "permanent",
                            "dev",
                            "eth0",
                        ]
                    )
        # latency measures the handshakes to the API server: a listener in db stands in for it.
        api = TcpServer(db, 6443)
        servers.append(api)
        # Pod-level metrics (packetparser needs them) with no API server in the guest: a listener
        # on loopback that accepts and never answers stands in, so the pod cache never syncs
        # (the agent waits 30s, then runs without pod labels). Not a closed port: the watch's
        # retries would be NO_SOCKET drops, and not in a pod: its packets would be forwarded.
        silent = _silent_listener()
        servers.append(silent)
        kubeconfig = Path("/tmp/kubeconfig")
        kubeconfig.write_text(KUBECONFIG.format(port=silent.getsockname()[1]))
        PROGRESS.enter(
            "lab: retina-agent starting with every plugin (compiling under emulation)",
            limit=AGENT_READY_TIMEOUT + 120,
        )
        agent = AgentProcess(
            {
                "enabledPlugin": list(PLUGIN_NAMES),
                "enablePodLevel": True,
                "podLevel": {"kubeconfig": str(kubeconfig), "nodeName": "retina-guest"},
                # netfilter reads the rule counters of db's namespace too (the lab's DROP is there)
                "plugins": {
                    "latency": {"apiServer": [f"{db.ip}:6443"]},
                    "netfilter": {"namespaces": ["host", db.netns]},
                },
                "bpfLoadTimeout": "20m",  # the loader child's limit (TCG is slow)
            },
            interval="1s",
        )
        started = time.monotonic()
        stop_tail = threading.Event()
        threading.Thread(target=_tail_to_console, args=(agent.log_path, stop_tail), daemon=True).start()
        try:
            agent.start(ready_timeout=AGENT_READY_TIMEOUT)
        finally:
            stop_tail.set()
        out["agent_ready_seconds"] = round(time.monotonic() - started, 1)
        log = agent.log()
        compiled = [line for line in log.splitlines() if "BPF objects in" in line]
        out["compile_line"] = compiled[-1].split("agent: ", 1)[-1] if compiled else None  # the message
        out["rss_kb_after_start"], out["peak_rss_kb_after_start"] = rss_peak_kb(agent.proc.pid)
        say(f"agent ready in {out['agent_ready_seconds']}s: {out['compile_line']}")
        PROGRESS.enter("lab: the agent's readyz, plugin states and TC attachments")
        out["readyz"] = agent.readyz()
        first = scrape(agent)
        out["plugins"] = {
            lab["plugin"]: {"state": lab["state"], "reason": lab["reason"], "attach": lab.get("attach", "")}
            for n, lab, v in first.samples
            if n == "controlplane_networkobservability_plugin_status" and v
        }
        # What the kernel says is attached (cls_bpf filters and TCX links), per pod veth.
        attached = our_tc_filters(agent.proc.pid)
        out["tc_filters"] = {
            pod.host_veth: sorted(f for f in attached if f.startswith(pod.host_veth + "/"))
            for pod in node.pods.values()
        }
        # How, by the kernel's account: cls_bpf filters on clsact, or TCX links the agent holds.
        cls_bpf = any(
            "retina_" in sh("tc", "filter", "show", "dev", pod.host_veth, d, check=False).stdout
            for pod in node.pods.values()
            for d in ("ingress", "egress")
        )
        out["tc_mode"] = ["cls_bpf"] * cls_bpf + ["tcx"] * bool(_tcx_links(agent.proc.pid))
        PROGRESS.enter("lab: warm-up")
        # Warm-up: neighbours resolved, so the counted phases below carry no ARP of their own.
        _dns(web, dns_pod.ip, ["warmup.svc.cluster.local"])
        send_udp(web, db.ip, 5432, 1, PAYLOAD)
        with contextlib.suppress(OSError):
            sink.recv(65536)
        settle(agent, scrape(agent), lambda m: True)
        out["phases"] = {}
        # Every frame on the pods' veths during the phases (phases carry their wall-clock start
        # and end): a count that differs from what the lab sent is then a packet one can read
        # (tcpdump -r <veth>.pcap).
        for pod in node.pods.values():
            capture = subprocess.Popen(
                ["tcpdump", "-i", pod.host_veth, "-n", "-U", "-s", "128"]
                + ["-w", str(RESULTS / f"{pod.name}.pcap")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            servers.append(_Stops(capture))
        time.sleep(2)  # tcpdump opens its sockets (not a wait for a result)

        def phase(name: str, drive, reached) -> None:
            PROGRESS.enter(f"lab: phase {name}")
            began = time.time()
            before = scrape(agent)
            facts = drive() or {}
            after = settle(agent, before, lambda m: reached(before, m, facts))
            fwd = {
                d: after.value("networkobservability_forward_count", direction=d)
                - before.value("networkobservability_forward_count", direction=d)
                for d in ("ingress", "egress")
            }
            fwd_bytes = {
                d: after.value("networkobservability_forward_bytes", direction=d)
                - before.value("networkobservability_forward_bytes", direction=d)
                for d in ("ingress", "egress")
            }
            dns = {
                k: after.value(f"networkobservability_dns_{k}_count")
                - before.value(f"networkobservability_dns_{k}_count")
                for k in ("request", "response")
            }
            rcodes = {}
            for n, lab, v in after.samples:
                if n == "networkobservability_dns_responses_total":
                    key = lab["rcode"]
                    prev = before.value(n, **lab)
                    if v - prev:
                        rcodes[key] = rcodes.get(key, 0) + v - prev
            out["phases"][name] = {
                **facts,
                "wall_clock": [round(began, 3), round(time.time(), 3)],
                "forward": fwd,
                "forward_bytes": fwd_bytes,
                "drops": delta(drops_by_reason(after), drops_by_reason(before)),
                "netfilter": {"drops": grew(before, after, NETFILTER_DROPS, netns=db.netns)},
                "dns": dns,
                "dns_rcodes": rcodes,
            }
            say(f"phase {name}: {out['phases'][name]}")

        def udp_delivered() -> dict:
            send_udp(web, db.ip, 5432, UDP_DELIVERED, PAYLOAD)
            got = 0
            with contextlib.suppress(OSError):
                while got < UDP_DELIVERED:
                    sink.recv(65536)
                    got += 1
            return {"sent": UDP_DELIVERED, "received": got, "frame_bytes": UDP_FRAME}

        def udp_dropped() -> dict:
            send_udp(web, db.ip, 5433, UDP_DROPPED, PAYLOAD)
            return {"sent": UDP_DROPPED}

        def closed_port() -> dict:
            refused = connect_refused(web, db.ip, 6000, CLOSED_PORT_CONNECTS)
            return {"connects": CLOSED_PORT_CONNECTS, "refused": refused}

        def dns_queries() -> dict:
            _dns(
                web,
                dns_pod.ip,
                [f"q{i}.svc.cluster.local" for i in range(DNS_FOUND)]
                + [f"q{i}.missing.cluster.local" for i in range(DNS_MISSING)],
            )
            return {"queries": DNS_FOUND + DNS_MISSING, "noerror": DNS_FOUND, "nxdomain": DNS_MISSING}

        def grew(before, m, name: str, **labels) -> float:
            return m.value(name, **labels) - before.value(name, **labels)

        def forwarded(n: int):
            return lambda b, m, f: all(grew(b, m, FORWARD, direction=d) >= n for d in ("ingress", "egress"))

        phase("udp_delivered", udp_delivered, forwarded(UDP_DELIVERED))
        phase(
            "udp_dropped",
            udp_dropped,
            lambda b, m, f: (
                forwarded(UDP_DROPPED)(b, m, f)
                and grew(b, m, DROPS) >= UDP_DROPPED
                and grew(b, m, NETFILTER_DROPS, netns=db.netns) >= UDP_DROPPED
            ),
        )
        # read after the phase: iptables' own netlink buffers are not the lab's drops
        line = db.run(["iptables", "-L", "INPUT", "-v", "-n", "-x"]).stdout.splitlines()[2]
        out["phases"]["udp_dropped"]["iptables_dropped"] = int(line.split()[0])
        phase("closed_port", closed_port, forwarded(2 * CLOSED_PORT_CONNECTS))
        queries = DNS_FOUND + DNS_MISSING
        phase(
            "dns",
            dns_queries,
            lambda b, m, f: grew(b, m, "networkobservability_dns_response_count") >= queries,
        )
        PROGRESS.enter("lab: final scrape")
        last = scrape(agent)
        out["drop_reasons_seen"] = sorted(drops_by_reason(last))
        out["rss_kb"], out["peak_rss_kb"] = rss_peak_kb(agent.proc.pid)
        out["agent_log_tail"] = agent.log()[-6000:]
    finally:
        PROGRESS.enter("lab: clean-up")
        if agent is not None:
            with contextlib.suppress(Exception):
                (RESULTS / "agent.log").write_text(agent.log())
            agent.cleanup()
        if dnsmasq is not None:
            dnsmasq.terminate()
            dnsmasq.wait(10)
        if sink is not None:
            sink.close()
        for server in servers:
            server.close()
        node.down()
    return out


def kfree_skb_reasons() -> list[str]:
    """The drop reason names in this kernel's skb:kfree_skb format (none before 5.17)."""
    from retina_agent.bpf.tracefs import read_format  # the agent's own parser

    fmt = read_format("skb:kfree_skb")
    if "reason" not in fmt.fields:
        return []
    return sorted(fmt.symbols("reason").values())


def power_off(result: dict) -> None:
    """result.json written and synced, the results disk unmounted, the guest powered off."""
    result["finished"] = time.time()
    (RESULTS / "result.json").write_text(json.dumps(result, indent=1, default=str))
    say("done; powering off")
    os.sync()
    subprocess.run(["umount", "/results"], check=False, timeout=60)
    with open("/proc/sysrq-trigger", "w") as f:
        f.write("o")
    time.sleep(60)


def main() -> int:
    os.environ.setdefault("PATH", "/opt/retina/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    result: dict = {"started": time.time()}

    def stuck(step: str) -> None:  # from the watchdog thread: the main thread may never return
        result["error"] = f"the guest made no progress in step {step!r} (stacks on the console)"
        result["stuck_step"] = step
        power_off(result)

    PROGRESS.on_stuck = stuck
    PROGRESS.start()
    try:
        PROGRESS.enter("node: mounts and modules")
        result["kernel"] = prepare_node()
        say(f"kernel {result['kernel']['release']}, {result['kernel']['cpus']} CPUs")
        PROGRESS.enter("retina-preflight --json (live)")
        started = time.monotonic()
        code, live = run_preflight()
        result["preflight"] = {"exit": code, "report": live, "seconds": round(time.monotonic() - started, 1)}
        say(
            f"preflight: exit {code}, {live['summary'].get('verdict')}, "
            f"failed {live['summary'].get('failed')}, warned {live['summary'].get('warned')}"
        )
        PROGRESS.enter("preflight: the host tree captured, retina-preflight --root on it")
        tree = RESULTS / "tree"
        result["tree"] = capture_tree(tree, live)
        code, offline = run_preflight("--root", str(tree))
        result["preflight_root"] = {"exit": code, "report": offline}
        with contextlib.suppress(Exception):
            result["kernel"]["drop_reason_names"] = kfree_skb_reasons()
        PROGRESS.enter("verifier: every configuration of the BPF programs loaded")
        try:  # the lab still runs: its agent says what it can of the same kernel
            result["verifier"] = run_verifier()
        except Exception:
            result["verifier"] = {"error": traceback.format_exc()}
            say(f"verifier phase failed: {result['verifier']['error']}")
        result["lab"] = run_lab()
    except BaseException:
        result["error"] = traceback.format_exc()
        say(f"error: {result['error']}")
    finally:
        PROGRESS.stop()
        power_off(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
