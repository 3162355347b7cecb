"""A small shop on a lab node, watched by the real agent and a real Prometheus.

Pods on ``lab-node`` (namespaces the lab made, known to the Kubernetes API emulator):

| pod | lab | object |
| --- | --- | --- |
| a | ``shop/web-5d9c-x7k2p`` | Deployment web |
| b | ``data/db-0`` | StatefulSet db, Service ``db``; NetworkPolicy ``allow-api-only`` |
| c | ``data/api-6f8d-q2w4e`` | Deployment api |
| d | ``kube-system/coredns-0`` | a dnsmasq |
| e | ``data/cache-0`` | StatefulSet cache, Service ``cache``; nothing listens on 6379 |

NetworkPolicy ``data/allow-api-only`` lets in only app=api. Plus pods on ``node-2`` (no agent
there) and on ``node-3`` (an agent with pod level off).
The NetworkPolicy is enforced the way Calico v3.26 writes it (``tests/netfilter/rulesets``):
an endpoint chain ``cali-tw-<b's veth>`` that drops what no policy accepted, and a policy chain
whose first rule's comment names ``data/knp.default.allow-api-only``. The lab node has a bridge
and no iptables on the path between pods, so those chains sit in pod b's namespace (hooked from
its INPUT) and the agent's netfilter plugin reads that namespace, as it reads pod namespaces
selected in ``plugins.netfilter.namespaces``.

The API emulator has no NetworkPolicy type; a CRD declaring ``networking.k8s.io/v1``
NetworkPolicy stands in, so the real client reads it at the real path.
"""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
from dataclasses import dataclass

from retina_lab import LabNode
from retina_lab.agent import AgentProcess, wait_for
from retina_lab.cluster import NODE, apply_crds, owner, pod
from retina_lab.kube import KubeEmulator
from retina_lab.prometheus import PrometheusServer
from tests.netfilter.rulesets import _calico_to_workload
from tests.podlevel.test_packetparser import wait_veths

POLICY_CHAIN = "cali-pi-_Lpc9Tu2g6zA7RfChhcU"
API_SET = "cali40s:Qx1nY9nF0pV0ZgsWgVAnDeS"
DNS_ANSWERS = [
    "--address=/db.data.svc.cluster.local/10.96.0.50",
    "--address=/cache.data.svc.cluster.local/10.96.0.60",
]

NETWORK_POLICY_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "networkpolicies.networking.k8s.io"},
    "spec": {
        "group": "networking.k8s.io",
        "scope": "Namespaced",
        "names": {
            "kind": "NetworkPolicy",
            "plural": "networkpolicies",
            "singular": "networkpolicy",
            "listKind": "NetworkPolicyList",
            "shortNames": ["netpol"],
        },
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                },
            }
        ],
    },
}


def objects(node: LabNode) -> list[dict]:
    def ns(name: str) -> dict:
        return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}

    def service(name: str, namespace: str, app: str, ip: str, port: int) -> dict:
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"selector": {"app": app}, "clusterIP": ip, "ports": [{"name": "main", "port": port}]},
        }

    def deployment(name: str, namespace: str, rs_name: str) -> list[dict]:
        template = {
            "metadata": {"labels": {"app": name}},
            "spec": {"containers": [{"name": "c", "image": name}]},
        }
        spec = {"selector": {"matchLabels": {"app": name}}, "template": template}
        return [
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": name, "namespace": namespace, "uid": f"dep-{name}"},
                "spec": spec,
            },
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "metadata": {
                    "name": rs_name,
                    "namespace": namespace,
                    "uid": f"rs-{name}",
                    "ownerReferences": [owner("Deployment", name, f"dep-{name}")],
                },
                "spec": spec,
            },
        ]

    rs = owner("ReplicaSet", "web-5d9c", "rs-web")
    return [
        *({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}} for n in (NODE, "node-2", "node-3")),
        ns("shop"),
        ns("data"),  # kube-system, default: the emulator has them
        *deployment("web", "shop", "web-5d9c"),
        *deployment("api", "data", "api-6f8d"),
        pod("web-5d9c-x7k2p", "shop", node["a"].ip, [rs], labels={"app": "web"}),
        pod("db-0", "data", node["b"].ip, [owner("StatefulSet", "db", "sts-db")], labels={"app": "db"}),
        pod(
            "api-6f8d-q2w4e",
            "data",
            node["c"].ip,
            [owner("ReplicaSet", "api-6f8d", "rs-api")],
            labels={"app": "api"},
        ),
        pod("coredns-0", "kube-system", node["d"].ip, labels={"app": "coredns"}),
        pod(
            "cache-0",
            "data",
            node["e"].ip,
            [owner("StatefulSet", "cache", "sts-cache")],
            labels={"app": "cache"},
        ),
        pod("report-0", "data", "10.250.2.10", node="node-2", labels={"app": "report"}),
        pod("queue-0", "data", "10.250.2.11", node="node-2", labels={"app": "queue"}),
        pod("legacy-0", "data", "10.250.3.10", node="node-3", labels={"app": "legacy"}),
        pod("legacy-1", "data", "10.250.3.11", node="node-3", labels={"app": "legacy"}),
        service("db", "data", "db", "10.96.0.50", 5432),
        service("cache", "data", "cache", "10.96.0.60", 6379),
        NETWORK_POLICY_CRD,
    ]


NETWORK_POLICY = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "allow-api-only", "namespace": "data"},
    "spec": {
        "podSelector": {"matchLabels": {"app": "db"}},
        "policyTypes": ["Ingress"],
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "api"}}}]}],
    },
}

METRICS_CONFIGURATION = {
    "apiVersion": "retina.sh/v1alpha1",
    "kind": "MetricsConfiguration",
    "metadata": {"name": "diagnose"},
    "spec": {
        "contextOptions": [
            {
                "metricName": m,
                "sourceLabels": ["namespace", "podname", "workload"],
                "destinationLabels": ["namespace", "podname", "workload"],
                "additionalLabels": ["direction"],
            }
            for m in (
                "forward_count",
                "forward_bytes",
                "drop_count",
                "tcpretrans_count",
                "dns_request_count",
                "dns_response_count",
            )
        ]
        + [
            # the port of A's SYNs: "nothing listens on B:port"
            {
                "metricName": "tcpflags_count",
                "sourceLabels": ["namespace", "podname", "workload"],
                "destinationLabels": ["namespace", "podname", "workload", "port"],
                "additionalLabels": ["direction"],
            }
        ],
        "namespaces": {"include": ["shop", "data", "kube-system"]},
    },
}


def tw_chain() -> str:
    """Calico's to-workload chain of ``data/db-0``: named after the interface Calico's CNI
    plugin would give the pod (``cali`` + 11 hex digits of SHA-1 of ``data.db-0``)."""
    return "cali-tw-cali" + hashlib.sha1(b"data.db-0").hexdigest()[:11]


def calico_in_pod_b(node: LabNode) -> str:
    """Calico's endpoint and policy chains for pod b, hooked from b's own INPUT."""
    tw = tw_chain()
    return f"""*filter
:{tw} - [0:0]
:{POLICY_CHAIN} - [0:0]
:cali-pri-kns.data - [0:0]
-A INPUT -i eth0 -m comment --comment "cali:hFm8CkQz7sRdbV1w" -j {tw}
{_calico_to_workload(tw, POLICY_CHAIN, "kns.data")}
-A {POLICY_CHAIN} -m comment --comment "cali:vT4nZ8cQw1Xs6LpD" -m comment --comment "Policy data/knp.default.allow-api-only ingress" -m set --match-set {API_SET} src -j MARK --set-xmark 0x10000/0x10000
-A {POLICY_CHAIN} -m comment --comment "cali:Bq6wNs0Ye3Tk9RmJ" -m mark --mark 0x10000/0x10000 -j RETURN
-A cali-pri-kns.data -m comment --comment "cali:Lf1Xb8Vq4Zn7Hc2W" -j MARK --set-xmark 0x10000/0x10000
-A cali-pri-kns.data -m comment --comment "cali:Sd5Rj9Wm3Qt0Ky6P" -m mark --mark 0x10000/0x10000 -j RETURN
COMMIT
"""  # noqa: E501 - rules verbatim, one per line


@dataclass
class ObservedLab:
    node: LabNode
    kube: KubeEmulator
    agent: AgentProcess
    prometheus: PrometheusServer

    def rule_counter(self, chain: str, needle: str) -> int:
        """Packets the kernel counted for the rule of ``chain`` in pod b containing ``needle``."""
        out = self.node["b"].run(["iptables-save", "-c"]).stdout
        for line in out.splitlines():
            if f"-A {chain} " in line and needle in line:
                return int(line[1:].split(":")[0])
        raise AssertionError(f"no rule with {needle!r} in {chain}:\n{out}")


def scrape_health(prom: PrometheusServer) -> str:
    """Per scraped target: good scrapes of all in the last 10 minutes and the slowest one, for a
    failure's message (a loaded machine makes scrapes miss their 1 s timeout: gaps, not bugs)."""
    window = "[10m]"
    total = {s["metric"].get("instance"): s["value"][1] for s in prom.query(f"count_over_time(up{window})")}
    good = {s["metric"].get("instance"): s["value"][1] for s in prom.query(f"sum_over_time(up{window})")}
    slowest = {
        s["metric"].get("instance"): float(s["value"][1])
        for s in prom.query(f"max_over_time(scrape_duration_seconds{window})")
    }
    return "; ".join(
        f"{i}: {good.get(i, '?')}/{n} scrapes good, slowest {slowest.get(i, 0):.2f} s"
        for i, n in total.items()
    )


@contextlib.contextmanager
def observed_lab(tmp_path):
    with contextlib.ExitStack() as stack:
        node = stack.enter_context(LabNode(pod_names=("a", "b", "c", "d", "e")))
        kube = stack.enter_context(KubeEmulator(workdir=tmp_path))
        apply_crds(kube)
        kube.seed(objects(node))
        kube.seed([NETWORK_POLICY, METRICS_CONFIGURATION])
        b = node["b"]
        b.run(["ipset", "create", API_SET, "hash:net", "family", "inet"])
        b.run(["ipset", "add", API_SET, f"{node['c'].ip}/32"])
        restore = subprocess.run(
            ["ip", "netns", "exec", b.netns, "iptables-restore", "--noflush"],
            input=calico_in_pod_b(node),
            text=True,
            capture_output=True,
            timeout=30,
        )
        assert restore.returncode == 0, restore.stderr
        agent = stack.enter_context(
            AgentProcess(
                {
                    "enablePodLevel": True,
                    "remoteContext": True,
                    "enabledPlugin": ["packetparser", "dropreason", "dns", "tcpretrans", "netfilter"],
                    "podLevel": {"kubeconfig": str(kube.kubeconfig_path), "nodeName": NODE},
                    "plugins": {"netfilter": {"namespaces": ["host", b.netns]}},
                }
            )
        )
        wait_veths(agent, node)
        # node-3: an agent with pod level off (its own port, only linuxutil).
        other = stack.enter_context(AgentProcess({"enabledPlugin": ["linuxutil"]}))
        prom = stack.enter_context(
            PrometheusServer([f"127.0.0.1:{agent.port}"], other_nodes={"node-3": [f"127.0.0.1:{other.port}"]})
        )
        wait_for(lambda: len(prom.query("up == 1")) == 2, 30, message="both agents scraped")
        yield ObservedLab(node, kube, agent, prom)
