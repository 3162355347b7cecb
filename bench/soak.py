"""Soak: the agent under steady load and churn for a long time (issue 12).

For ``--minutes`` (30 by default) the agent runs with every basic plugin and pod-level metrics
(remote context) on a lab node, while:

- pod a sends steady UDP to pod b (about 100 packets/s), and DNS queries to a dnsmasq in b
  (NOERROR and NXDOMAIN) every second;
- packets to an iptables DROP rule in b are sent every second (drop counters);
- a "churn" pod is created and the previous one deleted every ``--churn-every`` seconds (a new
  veth and a new Pod object with the same IP, as Kubernetes reuses IPs); midway through its life
  it sends 5 packets to b, and its name must then appear in the pod-level series ("nothing lost
  from the pod cache");
- the agent's connection to the API emulator is cut for ``--cut-seconds`` every
  ``--cut-every`` seconds (a proxy drops every connection), the cluster keeps changing during the
  cut and etcd-like compaction forces a 410 relist on reconnect;
- the MetricsConfiguration alternates between two specs every ``--mc-every`` seconds.

Every ``--sample-every`` seconds it records the agent's RSS, threads, open fds and every counter.
The report gives, after the warm-up: RSS growth (first to last sample, and the least-squares
slope per hour), thread and fd ranges, every counter that went backwards (node-level counters
never may; a pod-level series may restart only across a MetricsConfiguration change), and the
churn pods missing from the series. Targets: RSS growth <= 5% after warm-up, no thread or fd
growth, no counter regression, no churn pod lost.

Run as root from the repository: ``sudo .venv/bin/python bench/soak.py --minutes 30``. Prints a
summary and writes JSON to bench/results/. Exit code 0 when every target holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import dns.message
import dns.query
import kubernetes
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lab"))  # the test lab (not installed)

from retina_lab import LabNode  # noqa: E402
from retina_lab.agent import AgentProcess, process_stats, wait_for  # noqa: E402
from retina_lab.kube import KubeEmulator  # noqa: E402
from retina_lab.proxy import CuttableProxy  # noqa: E402
from retina_lab.traffic import send_udp, udp_sink  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CRDS = Path(__file__).resolve().parents[1] / "collections/retina/roles/agent/files/crds"
NODE = "soak-node"
MC = ("retina.sh", "v1alpha1", "metricsconfigurations")
FWD = "networkobservability_adv_forward_count"
#: Node-level counters: these never go down while the agent runs.
NODE_COUNTERS = (
    "networkobservability_forward_count",
    "networkobservability_forward_bytes",
    "networkobservability_drop_count",
    "networkobservability_drop_bytes",
    "networkobservability_dns_request_count",
    "networkobservability_dns_response_count",
    "networkobservability_dns_responses_total",
    "networkobservability_dns_latency_seconds_count",
    "networkobservability_tcpretrans_count",
    "controlplane_networkobservability_harvest_failures_total",
    "controlplane_networkobservability_lost_events_counter",
)


def _pod(name: str, namespace: str, ip: str, app: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": app}},
        "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "busybox"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    }


def _mc_spec(variant: int) -> dict:
    """Two MetricsConfigurations to alternate: every namespace, or only ``data`` (both keep the
    traffic to b counted, so churn pods stay visible). Series expire after 30s without traffic."""
    options = [
        {
            "metricName": m,
            "sourceLabels": ["ip", "namespace", "podname", "workload"],
            "destinationLabels": ["ip", "namespace", "podname"],
            "additionalLabels": ["direction"],
            "ttl": "30s",
        }
        for m in ("forward_count", "forward_bytes", "drop_count")
    ]
    namespaces = {"exclude": []} if variant == 0 else {"include": ["data"]}
    return {"contextOptions": options, "namespaces": namespaces}


def _threads_fds(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/status") as f:
        threads = next(int(line.split()[1]) for line in f if line.startswith("Threads:"))
    return threads, len(os.listdir(f"/proc/{pid}/fd"))


def _slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per hour."""
    if len(points) < 2:
        return 0.0
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return 0.0 if den == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den * 3600


@dataclass
class Soak:
    args: argparse.Namespace
    samples: list[dict] = field(default_factory=list)
    regressions: list[dict] = field(default_factory=list)
    churn_checked: int = 0
    churn_missing: list[str] = field(default_factory=list)
    cuts: int = 0
    mc_changes: int = 0
    pods_churned: int = 0
    events: list[tuple[float, str]] = field(default_factory=list)
    final_pod_labeled: bool = False
    mc_pending: dict | None = None  # a MetricsConfiguration spec the agent has not applied yet
    _custom: object = None

    def run(self) -> dict:
        a = self.args
        with contextlib.ExitStack() as stack:
            kube = KubeEmulator()
            kube.start()
            stack.callback(kube.stop)
            kube.seed([yaml.safe_load(p.read_text()) for p in sorted(CRDS.glob("*.yaml"))])
            node = LabNode(pod_names=("a", "b"))
            node.up()
            stack.callback(node.down)
            pa, pb = node["a"], node["b"]
            kube.seed(
                [
                    {"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}},
                    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}},
                    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "data"}},
                    _pod("web-0", "shop", pa.ip, "web"),
                    _pod("db-0", "data", pb.ip, "db"),
                    {
                        "apiVersion": "retina.sh/v1alpha1",
                        "kind": "MetricsConfiguration",
                        "metadata": {"name": "soak"},
                        "spec": _mc_spec(0),
                    },
                ]
            )
            api = kubernetes.config.new_client_from_config(config_file=str(kube.kubeconfig_path))
            core, custom = kubernetes.client.CoreV1Api(api), kubernetes.client.CustomObjectsApi(api)
            self._custom = custom
            # The agent reaches the emulator through a proxy the soak cuts.
            proxy = CuttableProxy(kube.port)
            stack.callback(proxy.close)
            agent_kubeconfig = Path(kube.kubeconfig_path).with_name("agent-kubeconfig.yaml")
            config = yaml.safe_load(Path(kube.kubeconfig_path).read_text())
            config["clusters"][0]["cluster"]["server"] = f"http://127.0.0.1:{proxy.port}"
            agent_kubeconfig.write_text(yaml.safe_dump(config))

            sinks = [udp_sink(pb, 7301)]
            stack.callback(lambda: [s.close() for s in sinks])
            pb.run(["iptables", "-A", "INPUT", "-p", "udp", "--dport", "7302", "-j", "DROP"])
            dnsmasq = pb.popen(
                [
                    "dnsmasq",
                    "--no-daemon",
                    "--no-resolv",
                    "--no-hosts",
                    "--bind-interfaces",
                    f"--listen-address={pb.ip}",
                    "--address=/svc.local/10.96.0.10",
                    "--address=/nx.local/",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            stack.callback(lambda: (dnsmasq.terminate(), dnsmasq.wait(5)))

            lab_veths = f"rlv{node.lab_id}*"
            agent = AgentProcess(
                {
                    "enablePodLevel": True,
                    "remoteContext": True,
                    "enabledPlugin": [
                        "linuxutil",
                        "packetforward",
                        "dropreason",
                        "dns",
                        "tcpretrans",
                        "packetparser",
                    ],
                    "plugins": {
                        "packetforward": {"interfaces": [lab_veths]},
                        "dns": {"interfaces": [lab_veths]},
                    },
                    "podLevel": {"kubeconfig": str(agent_kubeconfig), "nodeName": NODE},
                },
                interval=a.interval,
            )
            agent.start()
            stack.callback(agent.cleanup)
            pid = agent.proc.pid
            print(
                f"soak: agent pid {pid}, {a.minutes} min, samples every {a.sample_every}s, "
                f"warm-up {a.warmup_minutes} min",
                flush=True,
            )
            self._loop(node, kube, core, custom, proxy, agent, pid)
            self._final_check(node, kube, core, agent)
            return self._report(pid)

    # -- the load -------------------------------------------------------------------------------
    def _loop(self, node, kube, core, custom, proxy, agent, pid) -> None:
        a = self.args
        pa, pb = node["a"], node["b"]
        start = time.monotonic()
        end = start + a.minutes * 60
        next_second = next_churn = start + a.churn_every
        next_sample = start
        next_cut = start + a.cut_every
        next_mc = start + a.mc_every
        cut_until = 0.0
        churn_pod: tuple[str, bool] | None = None  # (name, created while cut) of the live churn pod
        churn_send_at = 0.0  # when the live churn pod sends its packets (midway through its life)
        churn_n = 0
        to_check: list[tuple[str, float]] = []  # churn pods that sent traffic, checked later
        mc_variant = 0
        last_mc_change = 0.0
        dns_i = 0
        while (now := time.monotonic()) < end:
            send_udp(pa, pb.ip, 7301, 20)
            if now >= next_second:
                next_second = now + 1
                send_udp(pa, pb.ip, 7302, 5)  # dropped by iptables in b
                with pa.entered():
                    for name in (f"q{dns_i}.svc.local", f"q{dns_i}.nx.local"):
                        with contextlib.suppress(Exception):
                            dns.query.udp(dns.message.make_query(name, "A"), pb.ip, timeout=0.5)
                dns_i += 1
            if cut_until and now >= cut_until:
                proxy.mend()
                cut_until = 0.0
                self.events.append((now - start, "mend"))
            elif not cut_until and now >= next_cut:
                proxy.cut()
                self.cuts += 1
                if churn_pod is not None:
                    churn_pod = (churn_pod[0], True)
                cut_until = now + a.cut_seconds
                next_cut = now + a.cut_every
                self.events.append((now - start, "cut"))
            if now >= next_churn:
                next_churn = now + a.churn_every
                if churn_pod is not None:
                    name, seen_cut = churn_pod
                    node.remove_pod(name)
                    core.delete_namespaced_pod(name, "shop")  # the emulator is up; only the agent is cut
                name = f"p{churn_n}"
                churn_n += 1
                pod = node.add_pod(name)
                kube.seed([_pod(name, "shop", pod.ip, "churn")])
                churn_pod = (name, bool(cut_until))
                churn_send_at = now + a.churn_every / 3
                self.pods_churned += 1
                if cut_until:
                    kube.compact()  # the cluster moved on while cut off: 410 on reconnect
            if churn_pod is not None and churn_send_at and now >= churn_send_at:
                churn_send_at = 0.0
                name, seen_cut = churn_pod
                send_udp(node[name], pb.ip, 7301, 5)
                # Checked only if the agent could have learned the pod: the API was never cut
                # while it lived (a pod that lives only while cut off is never seen).
                if not seen_cut and not cut_until:
                    to_check.append((name, now))
            if now >= next_mc and not cut_until:
                next_mc = now + a.mc_every
                mc_variant ^= 1
                body = custom.get_cluster_custom_object(*MC, "soak")
                body["spec"] = _mc_spec(mc_variant)
                custom.replace_cluster_custom_object(*MC, "soak", body)
                self.mc_changes += 1
                last_mc_change = now
                self.mc_pending = body["spec"]
                self.events.append((now - start, "mc"))
            if now >= next_sample:
                next_sample = now + a.sample_every
                self._sample(agent, pid, now - start, last_mc_change, to_check, now)
            time.sleep(0.2)

    def _sample(self, agent, pid, t: float, mc_at: float, to_check: list, now: float) -> None:
        """One sample at ``t`` seconds into the run; ``mc_at`` is the monotonic time of the last
        MetricsConfiguration change (0: none), ``to_check`` the churn pods to look for."""
        if self.mc_pending is not None:  # the change is in force once the agent's status says so
            status = self._custom.get_cluster_custom_object(*MC, "soak").get("status") or {}
            if status.get("lastKnownSpec") == self.mc_pending:
                self.mc_pending = None
            mc_at = now  # until then (and at this sample) series may restart at any moment
        cpu, rss = process_stats(pid)
        threads, fds = _threads_fds(pid)
        m = agent.scrape()
        counters = {}
        for name, labels, value in m.samples:
            if name in NODE_COUNTERS or name == FWD:
                counters[name + json.dumps(labels, sort_keys=True)] = value
        sample = {
            "t": round(t, 1),
            "rss": rss,
            "threads": threads,
            "fds": fds,
            "cpu": cpu,
            "series": m.value("controlplane_networkobservability_series"),
            "connected": m.value("controlplane_networkobservability_kubernetes_connected"),
        }
        if self.samples:
            prev = self.samples[-1]
            for key, value in counters.items():
                old = prev["_counters"].get(key)
                if old is None or value >= old:
                    continue
                pod_level = key.startswith(FWD)
                if pod_level and mc_at >= prev["_now"]:
                    continue  # series restart with a new MetricsConfiguration: by design
                self.regressions.append({"t": sample["t"], "series": key, "from": old, "to": value})
        # churn pods that sent traffic at least 2 harvests ago must show in the series (ttl 30s)
        still = []
        for name, sent in to_check:
            if now - sent < 3 * _seconds(self.args.interval):
                still.append((name, sent))
                continue
            if mc_at >= sent:
                continue  # a MetricsConfiguration change since restarted the series: not checkable
            self.churn_checked += 1
            if not any(s.get("source_podname") == name for s in m.series(FWD)):
                self.churn_missing.append(name)
        to_check[:] = still
        sample["_counters"], sample["_now"] = counters, now
        self.samples.append(sample)
        print(
            f"soak: t={t:6.0f}s rss={rss / 2**20:6.1f}MiB threads={threads} fds={fds} "
            f"series={sample['series']:.0f} connected={sample['connected']:.0f} "
            f"regressions={len(self.regressions)} churn={self.pods_churned} "
            f"missing={len(self.churn_missing)}/{self.churn_checked}",
            flush=True,
        )

    def _final_check(self, node, kube, core, agent) -> None:
        """After the run, with the API restored: a new pod is labeled within 30s."""
        pb = node["b"]
        pod = node.add_pod("final")
        kube.seed([_pod("final", "shop", pod.ip, "final")])

        def labeled() -> bool:
            send_udp(pod, pb.ip, 7301, 5)
            return any(s.get("source_podname") == "final" for s in agent.scrape().series(FWD))

        try:
            wait_for(labeled, 30, 1.0, "the final pod in the series")
            self.final_pod_labeled = True
        except TimeoutError:
            self.final_pod_labeled = False

    # -- the report -----------------------------------------------------------------------------
    def _report(self, pid: int) -> dict:
        a = self.args
        result = {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "minutes": a.minutes,
            "warmup_minutes": a.warmup_minutes,
            "interval": a.interval,
            "counter_regressions": self.regressions,
            "pods_churned": self.pods_churned,
            "churn_pods_checked": self.churn_checked,
            "churn_pods_missing": self.churn_missing,
            "final_pod_labeled": self.final_pod_labeled,
            "cuts": self.cuts,
            "mc_changes": self.mc_changes,
            "agent_cpu_seconds": round(self.samples[-1]["cpu"], 1),
            "trace": [{k: v for k, v in s.items() if not k.startswith("_")} for s in self.samples],
        }
        return summarize(result)


def summarize(result: dict) -> dict:
    """Growth figures and targets from ``result["trace"]`` (also for a saved run: --report).

    Threads and fds are compared between the first and last third of the samples taken while
    the agent was connected (a cut closes its API connections, so fds dip during cuts): the
    medians, so one sample caught mid-request does not decide.
    """
    for stale in (
        "threads_first_last_max",
        "fds_first_last_max",
        "threads_growth_per_hour",
        "fds_growth_per_hour",
    ):  # an earlier version's figures
        result.pop(stale, None)
    trace = result["trace"]
    warm = [s for s in trace if s["t"] >= result["warmup_minutes"] * 60] or trace[-2:]
    rss0, rss1 = warm[0]["rss"], warm[-1]["rss"]
    slope = _slope_per_hour([(s["t"], s["rss"]) for s in warm])
    connected = [s for s in warm if s["connected"] == 1] or warm
    third = max(1, len(connected) // 3)
    early, late = connected[:third], connected[-third:]

    def medians(key: str) -> list[float]:
        return [statistics.median(s[key] for s in early), statistics.median(s[key] for s in late)]

    result.update(
        {
            "samples": len(trace),
            "samples_after_warmup": len(warm),
            "rss_mib_first_last": [round(rss0 / 2**20, 2), round(rss1 / 2**20, 2)],
            "rss_growth_pct": round((rss1 - rss0) / rss0 * 100, 2),
            "rss_growth_pct_per_hour_fit": round(slope / rss0 * 100, 2),
            "rss_mib_min_max": [
                round(min(s["rss"] for s in warm) / 2**20, 2),
                round(max(s["rss"] for s in warm) / 2**20, 2),
            ],
            "threads_median_first_last_third": medians("threads"),
            "fds_median_first_last_third_connected": medians("fds"),
            "threads_min_max": [min(s["threads"] for s in warm), max(s["threads"] for s in warm)],
            "fds_min_max": [min(s["fds"] for s in warm), max(s["fds"] for s in warm)],
        }
    )
    threads, fds = result["threads_median_first_last_third"], result["fds_median_first_last_third_connected"]
    result["targets"] = {
        "rss_growth_le_5pct_after_warmup": result["rss_growth_pct"] <= 5,
        "no_thread_growth": threads[1] <= threads[0],
        "no_fd_growth": fds[1] <= fds[0],
        "no_counter_regression": not result["counter_regressions"],
        "nothing_lost_from_pod_cache": not result["churn_pods_missing"] and result["final_pod_labeled"],
    }
    return result


def _seconds(interval: str) -> float:
    from retina_common.durations import parse_go_duration

    return parse_go_duration(interval)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=30.0, help="how long to soak (default 30)")
    p.add_argument(
        "--warmup-minutes",
        type=float,
        default=None,
        help="samples before this are left out of the growth figures (default: a fifth "
        "of the run, at most 5)",
    )
    p.add_argument("--sample-every", type=float, default=10.0, help="seconds between samples")
    p.add_argument("--churn-every", type=float, default=5.0, help="seconds between pod churns")
    p.add_argument("--cut-every", type=float, default=60.0, help="seconds between API cuts")
    p.add_argument("--cut-seconds", type=float, default=10.0, help="how long each cut lasts")
    p.add_argument(
        "--mc-every", type=float, default=90.0, help="seconds between MetricsConfiguration changes"
    )
    p.add_argument("--interval", default="2s", help="the agent's metricsIntervalDuration")
    p.add_argument("--report", type=Path, help="only recompute the summary of a saved run's JSON")
    args = p.parse_args(argv)
    if args.report:
        result = summarize(json.loads(args.report.read_text()))
        args.report.write_text(json.dumps(result, indent=2))
        print(json.dumps({k: v for k, v in result.items() if k != "trace"}, indent=2))
        return 0 if all(result["targets"].values()) else 1
    if args.warmup_minutes is None:
        args.warmup_minutes = min(5.0, args.minutes / 5)
    if os.geteuid() != 0:
        print("soak: run as root (namespaces, eBPF)", file=sys.stderr)
        return 2
    # SIGTERM (and SIGINT, which a shell ignores in background jobs) end the run through the
    # normal unwinding, so the lab, the agent and the emulator are removed.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(143))
    result = Soak(args).run()
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"soak-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps(result, indent=2))
    summary = {k: v for k, v in result.items() if k != "trace"}
    print(json.dumps(summary, indent=2))
    print(f"soak: written to {out}")
    return 0 if all(result["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
