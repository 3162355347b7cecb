"""latency: the node's Kubernetes API server latency, timed in the kernel (Retina's metrics).

- ``adv_node_apiserver_tcp_handshake_latency``: SYN out to SYN-ACK in, milliseconds;
- ``adv_node_apiserver_latency``: first request bytes out to first response bytes in;
- ``adv_node_apiserver_no_response{no_response}``: requests with no response within
  ``plugins.latency.noResponseTimeout`` (Retina: 500ms).
Histograms have Retina's linear buckets (0.5 ms to 63.5 ms, 1 ms wide). The API server's
addresses come from ``plugins.latency.apiServer`` or the Kubernetes client configuration
(in-cluster or kubeconfig), plus the endpoints of ``default/kubernetes`` (the addresses
packets carry after kube-proxy's DNAT).
"""

from __future__ import annotations

import ctypes
import ipaddress
import logging
import socket
import time
from collections.abc import Iterable

from retina_agent.bpf.datapath import LAT_SLOTS, Feature
from retina_agent.bpf.maps import BpfMap
from retina_agent.bpf.spec import LoadedProgram
from retina_agent.metrics import add, histogram, retina_counter
from retina_agent.plugins.base import PluginUnavailable, TcPlugin
from retina_agent.podlevel import addr_bytes
from retina_common.durations import parse_go_duration

log = logging.getLogger(__name__)
SLOTS = LAT_SLOTS


class ServerKey(ctypes.Structure):
    _fields_ = [("addr", ctypes.c_uint8 * 16), ("port", ctypes.c_uint16), ("pad", ctypes.c_uint16)]


class ConnKey(ctypes.Structure):
    _fields_ = [
        ("server", ctypes.c_uint8 * 16),
        ("server_port", ctypes.c_uint16),
        ("client_port", ctypes.c_uint16),
    ]


class Histogram(ctypes.Structure):
    _fields_ = [("slots", ctypes.c_uint64 * SLOTS), ("sum_ns", ctypes.c_uint64), ("count", ctypes.c_uint64)]


def parse_endpoint(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (IP address, port); the host name is resolved."""
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        raise ValueError(f"{text!r} is not host:port")
    try:
        ip = str(ipaddress.ip_address(host))
    except ValueError:
        ip = socket.getaddrinfo(host, None)[0][4][0]
    return ip, int(port)


def cluster_endpoints(api_client) -> list[tuple[str, int]]:
    """The API server as the client sees it, and its endpoints behind the Service."""
    from retina_agent.enrichment import apiserver_endpoint
    from retina_agent.enrichment.kubeclient import RawCollection

    found = [apiserver_endpoint(api_client)]
    try:
        # raw JSON: the generated CoreV1Api would cost the agent ~21 MiB for this one read
        endpoints = RawCollection(api_client, "/api/v1/namespaces/default/endpoints").get(
            "kubernetes", timeout=5
        )
        for subset in endpoints.get("subsets") or []:
            for address in subset.get("addresses") or []:
                for port in subset.get("ports") or []:
                    found.append((address["ip"], int(port["port"])))
    except Exception as exc:  # no Endpoints object (or no permission): the first is enough
        log.debug("no endpoints for default/kubernetes: %s", exc)
    return list(dict.fromkeys(found))


class Latency(TcPlugin):
    name = "latency"

    def prepare(self) -> Feature:
        options = self.ctx.config.plugins.latency
        try:
            if options.api_server:
                self.servers = [parse_endpoint(e) for e in options.api_server]
            else:
                api = getattr(self.ctx.pod_level, "api_client", None)
                if api is None:
                    from retina_agent.enrichment import load_api_client

                    api = load_api_client(self.ctx.config.pod_level.kubeconfig)
                self.servers = cluster_endpoints(api)
        except Exception as exc:
            raise PluginUnavailable(
                f"cannot tell the API server's address: {exc} (set "
                "plugins.latency.apiServer, or run in a cluster)"
            ) from None
        self.timeout = parse_go_duration(options.no_response_timeout)
        if len({port for _, port in self.servers}) > 4:
            raise PluginUnavailable(
                "the API server listens on more than 4 ports: set "
                "plugins.latency.apiServer to the ones to time"
            )
        return Feature(self.name, maps=["apiservers", "pending", "latency_hist"])

    def start(self, loaded: LoadedProgram | None) -> None:
        super().start(loaded)
        assert loaded is not None
        servers = BpfMap(loaded.maps["apiservers"], ServerKey, ctypes.c_uint8)
        for ip, port in self.servers:
            key = ServerKey(port=port)
            ctypes.memmove(key.addr, addr_bytes(ip), 16)
            servers.update(key, ctypes.c_uint8(1))
        self.ctx.datapath.set_api_ports([port for _, port in self.servers])
        log.info("timing the API server at %s", ", ".join(f"{ip}:{port}" for ip, port in self.servers))
        self.pending = BpfMap(loaded.maps["pending"], ConnKey, ctypes.c_uint64)
        self.hist = BpfMap(loaded.maps["latency_hist"], ctypes.c_uint32, Histogram, percpu=True)
        self.no_response = 0
        self.snapshot = {0: ([0] * SLOTS, 0, 0), 1: ([0] * SLOTS, 0, 0)}
        self.attach_tc()

    def harvest(self) -> None:
        for which in (0, 1):
            slots, sum_ns, count = [0] * SLOTS, 0, 0
            for cpu in self.hist.lookup(ctypes.c_uint32(which)) or []:
                for i in range(SLOTS):
                    slots[i] += cpu.slots[i]
                sum_ns += cpu.sum_ns
                count += cpu.count
            self.snapshot[which] = (slots, sum_ns, count)
        # Requests still waiting past the timeout got no response.
        now_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        for key, sent in list(self.pending.items()):
            if now_ns - sent.value > self.timeout * 1e9 and self.pending.delete(key):
                self.no_response += 1

    def collect(self) -> Iterable:
        families = []
        for which, metric, doc in (
            (0, "adv_node_apiserver_latency", "Latency of node apiserver in ms"),
            (1, "adv_node_apiserver_tcp_handshake_latency", "Latency of node apiserver tcp handshake in ms"),
        ):
            slots, sum_ns, count = self.snapshot[which]
            buckets, running = [], 0
            for k in range(SLOTS - 1):
                running += slots[k]
                buckets.append((f"{k + 0.5}", running))
            buckets.append(("+Inf", count))
            families.append(histogram(metric, doc, buckets, sum_ns / 1e6))
        no_response = retina_counter(
            "adv_node_apiserver_no_response",
            "Number of requests that did not get a response from node apiserver",
            ["no_response"],
            prefix="networkobservability_",
        )
        add(no_response, ["no_response"], self.no_response)
        families.append(no_response)
        return families
