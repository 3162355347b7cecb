"""Cost of one netfilter harvest with a large ruleset (issue 15: drops named by their rule).

Builds, in network namespaces this benchmark makes, a ruleset shaped like a large Calico node
(Calico v3.26 layout, as in tests/netfilter/rulesets.py: per endpoint a from- and a
to-workload chain and dispatch entries, per policy an ingress chain with a "Policy ns/name"
comment; every rule with its ``cali:`` comment) of about ``--rules`` rules, loaded once with
iptables-nft and once with iptables-legacy, then runs the netfilter plugin's harvest
(``reader.read_netns`` + ``drops.drop_counters``) on the two in alternation, ``--rounds``
times each, and prints per backend: wall time per harvest (median, p10, p90), CPU seconds per
harvest (this process and the iptables-save it starts), and the RSS of this process before and
after (the plugin's share of the agent's memory) and the peak RSS of iptables-save.

Run as root from the repository: ``.venv/bin/python bench/netfilter_rules.py --rules 10000``.
"""

from __future__ import annotations

import argparse
import os
import resource
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from retina_agent.netfilter import drops, reader  # noqa: E402

RULES_PER_ENDPOINT = 20  # 2 dispatch, 8 from-workload, 10 to-workload (with policies)
RULES_PER_POLICY = 6


def calico_ruleset(rules: int) -> tuple[str, int]:
    """iptables-restore text of about ``rules`` rules; returns (text, exact rule count)."""
    policies = max(1, rules // 6 // RULES_PER_POLICY)
    endpoints = max(1, -(-(rules - policies * RULES_PER_POLICY) // RULES_PER_ENDPOINT))
    chains, lines = ["cali-FORWARD", "cali-from-wl-dispatch", "cali-to-wl-dispatch"], []
    n = 0

    def rule(chain: str, spec: str) -> None:
        nonlocal n
        n += 1
        lines.append(f'-A {chain} -m comment --comment "cali:{n:016x}" {spec}')

    lines.append('-A FORWARD -m comment --comment "cali:wUHhoiAYhphO9Mso" -j cali-FORWARD')
    n += 1
    rule("cali-FORWARD", "-i cali+ -j cali-from-wl-dispatch")
    rule("cali-FORWARD", "-o cali+ -j cali-to-wl-dispatch")
    for p in range(policies):
        chain = f"cali-pi-_{p:019d}"
        chains.append(chain)
        rule(
            chain,
            f'-m comment --comment "Policy ns{p % 50}/knp.default.policy-{p} ingress" '
            f"-s 10.{p % 250}.0.0/16 -j MARK --set-xmark 0x10000/0x10000",
        )
        rule(chain, "-m mark --mark 0x10000/0x10000 -j RETURN")
        for k in range(RULES_PER_POLICY - 2):
            rule(
                chain,
                f"-p tcp -s 10.{k}.{p % 250}.0/24 -m multiport --dports 80,443,{8000 + k} "
                "-j MARK --set-xmark 0x10000/0x10000",
            )
    for e in range(endpoints):
        iface = f"cali{e:011x}"
        tw, fw = f"cali-tw-{iface}", f"cali-fw-{iface}"
        chains += [tw, fw]
        rule("cali-from-wl-dispatch", f"-i {iface} -g {fw}")
        rule("cali-to-wl-dispatch", f"-o {iface} -g {tw}")
        for chain in (fw, tw):
            rule(chain, "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")
            rule(chain, "-m conntrack --ctstate INVALID -j DROP")
            rule(chain, "-j MARK --set-xmark 0x0/0x10000")
        rule(
            fw,
            '-p udp -m comment --comment "Drop VXLAN encapped packets originating in '
            'workloads" -m multiport --dports 4789 -j DROP',
        )
        rule(
            fw,
            '-p ipencap -m comment --comment "Drop IPinIP encapped packets originating in workloads" -j DROP',
        )
        rule(fw, "-j cali-pro-kns.bench")
        rule(fw, '-m comment --comment "Return if profile accepted" -m mark --mark 0x10000/0x10000 -j RETURN')
        rule(fw, '-m comment --comment "Drop if no profiles matched" -j DROP')
        rule(tw, '-m comment --comment "Start of policies" -j MARK --set-xmark 0x0/0x20000')
        for k in range(2):
            rule(tw, f"-m mark --mark 0x0/0x20000 -j cali-pi-_{(e + k) % policies:019d}")
        rule(tw, '-m comment --comment "Return if policy accepted" -m mark --mark 0x10000/0x10000 -j RETURN')
        rule(
            tw, '-m comment --comment "Drop if no policies passed packet" -m mark --mark 0x0/0x20000 -j DROP'
        )
        rule(tw, "-j cali-pri-kns.bench")
        rule(tw, '-m comment --comment "Drop if no profiles matched" -j DROP')
    chains += ["cali-pro-kns.bench", "cali-pri-kns.bench"]
    for chain in ("cali-pro-kns.bench", "cali-pri-kns.bench"):
        rule(chain, "-j MARK --set-xmark 0x10000/0x10000")
    text = "*filter\n" + "".join(f":{c} - [0:0]\n" for c in chains) + "\n".join(lines)
    return text + "\nCOMMIT\n", n


def rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def harvest(path: Path) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds incl. children, drop rules and policies) of one harvest."""
    t0, c0 = time.perf_counter(), os.times()
    ruleset = reader.read_netns(path)
    counters = drops.drop_counters(ruleset.tables, path.name)
    c1 = os.times()
    cpu = (
        (c1.user - c0.user)
        + (c1.system - c0.system)
        + (c1.children_user - c0.children_user)
        + (c1.children_system - c0.children_system)
    )
    return time.perf_counter() - t0, cpu, len(counters)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", type=int, default=10_000, help="rules per ruleset (10000)")
    parser.add_argument("--rounds", type=int, default=15, help="harvests per backend (15)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("run as root (it makes network namespaces and loads rules)")
    text, count = calico_ruleset(args.rules)
    tag = secrets.token_hex(2)
    spaces = {"iptables-nft": f"rlbench-{tag}-nft", "iptables-legacy": f"rlbench-{tag}-legacy"}
    try:
        for backend, ns in spaces.items():
            subprocess.run(["ip", "netns", "add", ns], check=True)
            subprocess.run(
                ["ip", "netns", "exec", ns, f"{backend}-restore"],
                input=text,
                text=True,
                check=True,
                capture_output=True,
                timeout=300,
            )
        rss_before = rss()
        samples: dict[str, list[tuple[float, float, int]]] = {b: [] for b in spaces}
        for ns in spaces.values():  # warm-up: imports, the first libnftables context
            harvest(Path("/run/netns") / ns)
        for _ in range(args.rounds):  # A and B in alternation: the machine's noise hits both
            for backend, ns in spaces.items():
                samples[backend].append(harvest(Path("/run/netns") / ns))
        rss_after = rss()
        child_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    finally:
        for ns in spaces.values():
            subprocess.run(["ip", "netns", "del", ns], check=False)
    print(f"ruleset: {count} rules (Calico v3.26 layout), {args.rounds} harvests per backend, alternating")
    print(f"{'backend':<16} {'wall median':>12} {'p10':>8} {'p90':>8} {'CPU/harvest':>12} {'drop rules':>12}")
    for backend, values in samples.items():
        walls = sorted(v[0] for v in values)
        cpus = [v[1] for v in values]
        q = statistics.quantiles(walls, n=10)
        print(
            f"{backend:<16} {statistics.median(walls) * 1000:>10.0f}ms {q[0] * 1000:>6.0f}ms "
            f"{q[-1] * 1000:>6.0f}ms {statistics.median(cpus) * 1000:>10.0f}ms "
            f"{values[0][2]:>12}"
        )
    print(
        f"RSS of the harvesting process: {rss_before / 2**20:.1f} MiB before, "
        f"{rss_after / 2**20:.1f} MiB after {2 * args.rounds} harvests; "
        f"peak RSS of an iptables-save child: {child_peak / 2**20:.1f} MiB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
