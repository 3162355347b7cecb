"""A steady mixed workload between two lab pods, so every node-level panel has something to show.

Between pods ``a`` and ``b`` of a ``retina_lab.LabNode``, every tick (0.5 s):

* UDP a -> b on an open port (forwarded traffic) and on a port b drops with iptables
  (``NETFILTER_DROP`` drops);
* TCP connects to a closed port of b (``NO_SOCKET`` drops, RST flags);
* DNS queries from a to dnsmasq in b: names that resolve and names that do not (NXDOMAIN);
* data over a TCP connection that loses 30% of its segments to an iptables ``statistic`` rule
  (retransmissions; this kernel has no netem);

plus a few TCP connections from the node's own namespace kept open (ESTABLISHED sockets).
With ``api_server=True`` pod b also runs a plain-TCP stand-in for the Kubernetes API server on
port 6443 that answers every request, and the node opens a connection and sends a request to
it every tick (for the agent's ``latency`` plugin, pointed at ``b.ip:6443``).
Everything is removed by ``stop()``, also after an error.  Traffic stays inside the lab.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

from retina_lab.traffic import TcpServer, random_loss_rule

UDP_OPEN, UDP_DROPPED, TCP_CLOSED, TCP_HELD, TCP_LOSSY = 7101, 7102, 7103, 7104, 7105
API_SERVER = 6443
DROP_RULE = ["INPUT", "-p", "udp", "--dport", str(UDP_DROPPED), "-j", "DROP"]
LOSS_RULE = random_loss_rule(TCP_LOSSY)


#: The API-server stand-in: its own process (no GIL shared with the workload), answering the
#: first request of each connection with a small HTTP response.
_RESPONDER = """
import asyncio, sys

async def answer(reader, writer):
    if await reader.read(65536):
        writer.write(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok")
        await writer.drain()
    writer.close()

async def main():
    server = await asyncio.start_server(answer, "0.0.0.0", int(sys.argv[1]))
    await server.serve_forever()

asyncio.run(main())
"""


class LabWorkload:
    def __init__(
        self, node: Any, tick: float = 0.5, udp_drops_per_tick: int = 200, api_server: bool = False
    ) -> None:
        self.a, self.b = node["a"], node["b"]
        self.api_server = api_server
        self.api_requests = 0
        self.tick = tick
        self.udp_drops_per_tick = udp_drops_per_tick
        self.ticks = 0
        self.dns_ok = self.dns_nxdomain = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lab-workload", daemon=True)
        self._cleanups: list[Any] = []

    # -- setup and teardown ---------------------------------------------------------------------
    def start(self) -> LabWorkload:
        try:
            self._setup()
        except BaseException:
            self.stop()
            raise
        self._thread.start()
        return self

    def _setup(self) -> None:
        a, b = self.a, self.b
        dnsmasq = b.popen(
            [
                "dnsmasq",
                "--no-daemon",
                "--no-resolv",
                "--no-hosts",
                "--port=53",
                "--bind-interfaces",
                f"--listen-address={b.ip}",
                "--address=/svc.local/10.96.0.10",
                "--address=/nx.local/",
                "--log-facility=-",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._cleanups.append(lambda: (dnsmasq.terminate(), dnsmasq.wait(5)))
        for rule in (DROP_RULE, LOSS_RULE):
            b.run(["iptables", "-A", *rule])
            self._cleanups.append(lambda rule=rule: b.run(["iptables", "-D", *rule], check=False))
        with b.entered():
            self._sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._sink.bind(("0.0.0.0", UDP_OPEN))
        self._cleanups.append(self._sink.close)
        for port in (TCP_HELD, TCP_LOSSY):
            server = TcpServer(b, port)
            self._cleanups.append(server.close)
        if self.api_server:
            responder = b.popen(
                [sys.executable, "-c", _RESPONDER, str(API_SERVER)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            self._cleanups.append(lambda: (responder.terminate(), responder.wait(5)))
            self._wait_until(
                lambda: socket.create_connection((b.ip, API_SERVER), 1).close() is None,
                "the API-server stand-in in pod b",
            )
        held = [socket.create_connection((b.ip, TCP_HELD), timeout=5) for _ in range(5)]
        self._cleanups.append(lambda: [c.close() for c in held])
        with a.entered():
            self._lossy = socket.create_connection((b.ip, TCP_LOSSY), timeout=10)
        self._lossy.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._lossy.setblocking(False)
        self._cleanups.append(self._lossy.close)
        self._wait_until(lambda: self._dns("ready.svc.local") is not None, "dnsmasq in pod b")

    @staticmethod
    def _wait_until(ready: Any, what: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if ready():
                    return
            time.sleep(0.2)
        raise TimeoutError(f"{what} did not answer within {timeout:.0f} s")

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        for cleanup in reversed(self._cleanups):
            try:
                cleanup()
            except Exception as exc:  # keep cleaning up the rest
                self.errors.append(f"cleanup: {exc}")
        self._cleanups.clear()

    def __enter__(self) -> LabWorkload:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- traffic --------------------------------------------------------------------------------
    def _dns(self, name: str) -> int:
        import dns.message
        import dns.query

        with self.a.entered():
            return dns.query.udp(dns.message.make_query(name, "A"), self.b.ip, timeout=1).rcode()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self._one_tick()
            except Exception as exc:  # recorded; the workload keeps going
                self.errors.append(repr(exc))
            self.ticks += 1
            self._stop.wait(max(0.0, self.tick - (time.monotonic() - started)))

    def _one_tick(self) -> None:
        b_ip = self.b.ip
        with self.a.entered(), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            for _ in range(50):
                udp.sendto(b"f" * 100, (b_ip, UDP_OPEN))
            for _ in range(self.udp_drops_per_tick):
                udp.sendto(b"d" * 100, (b_ip, UDP_DROPPED))
            for _ in range(2):
                with socket.socket() as tcp:
                    tcp.settimeout(1)
                    with contextlib.suppress(OSError):
                        tcp.connect((b_ip, TCP_CLOSED))
        for i in range(2):
            self._dns(f"web{self.ticks}-{i}.svc.local")
            self.dns_ok += 1
        self._dns(f"gone{self.ticks}.nx.local")
        self.dns_nxdomain += 1
        with contextlib.suppress(BlockingIOError):
            for _ in range(20):
                self._lossy.send(b"r" * 200)
        if self.api_server:  # from the node's own namespace, as the kubelet or agent would
            with socket.create_connection((b_ip, API_SERVER), timeout=2) as api:
                api.sendall(b"GET /healthz HTTP/1.1\r\nHost: kubernetes\r\n\r\n")
                api.recv(1024)
            self.api_requests += 1


# -- the Kubernetes objects a pod-level agent needs to name the lab pods ------------------------
POD_METRICS = (
    "forward_count",
    "forward_bytes",
    "drop_count",
    "drop_bytes",
    "tcpflags_count",
    "tcpretrans_count",
    "dns_request_count",
    "dns_response_count",
)


def _meta(name: str, namespace: str | None = None, owner: dict | None = None, **extra: Any) -> dict:
    meta: dict = {"name": name, "uid": str(uuid.uuid4()), **extra}
    if namespace:
        meta["namespace"] = namespace
    if owner is not None:
        meta["ownerReferences"] = [
            {
                "apiVersion": owner["apiVersion"],
                "kind": owner["kind"],
                "name": owner["metadata"]["name"],
                "uid": owner["metadata"]["uid"],
                "controller": True,
            }
        ]
    return meta


def lab_cluster_objects(node: Any, node_name: str, crd: dict) -> list[dict]:
    """Objects for a Kubernetes API emulator: pod a is ``shop/web-7d4b9c-x2k8f`` of Deployment
    ``web``, pod b is ``shop/db-0`` of StatefulSet ``db``, both on ``node_name``, with their lab
    IPs; plus the MetricsConfiguration CRD (``crd``) and one MetricsConfiguration for ``shop``."""
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "spec": {}, "metadata": _meta("web", "shop")}
    replicaset = {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "spec": {},
        "metadata": _meta("web-7d4b9c", "shop", deployment),
    }
    statefulset = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "spec": {},
        "metadata": _meta("db", "shop"),
    }

    def pod(name: str, ip: str, owner: dict, app: str) -> dict:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": _meta(name, "shop", owner, labels={"app": app}),
            "spec": {"nodeName": node_name, "containers": [{"name": app, "image": app}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
        }

    labels = ["ip", "namespace", "podname", "workload"]
    config = {
        "apiVersion": "retina.sh/v1alpha1",
        "kind": "MetricsConfiguration",
        "metadata": {"name": "lab"},
        "spec": {
            "namespaces": {"include": ["shop"]},
            "contextOptions": [
                {
                    "metricName": m,
                    "sourceLabels": labels,
                    "destinationLabels": labels,
                    "additionalLabels": ["direction"],
                }
                for m in POD_METRICS
            ],
        },
    }
    return [
        crd,
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": _meta(node_name, labels={"kubernetes.io/hostname": node_name}),
        },
        {"apiVersion": "v1", "kind": "Namespace", "metadata": _meta("shop")},
        deployment,
        replicaset,
        statefulset,
        pod("web-7d4b9c-x2k8f", node["a"].ip, replicaset, "web"),
        pod("db-0", node["b"].ip, statefulset, "db"),
        config,
    ]
