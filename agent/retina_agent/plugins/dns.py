"""dns: DNS requests and responses on the node, parsed in the kernel at TC.

Retina's ``dns_request_count`` and ``dns_response_count`` (no labels), and beyond Retina:
``dns_responses_total{rcode,qtype}`` and the query-to-response latency histogram
``dns_latency_seconds``. UDP and TCP, IPv4 and IPv6.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterable

from retina_agent.bpf.maps import BpfMap
from retina_agent.bpf.spec import LoadedProgram, ProgramSpec
from retina_agent.links import LinkSelector
from retina_agent.metrics import add, counter, histogram, retina_gauge
from retina_agent.plugins.base import Plugin, bpf_source
from retina_agent.tc import PRIO_BASE, TcProgram

LATENCY_SLOTS = 32
TC_PRIO = PRIO_BASE + 0x10

RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED",
          6: "YXDOMAIN", 7: "YXRRSET", 8: "NXRRSET", 9: "NOTAUTH", 10: "NOTZONE"}
QTYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA",
          33: "SRV", 35: "NAPTR", 43: "DS", 46: "RRSIG", 47: "NSEC", 48: "DNSKEY", 52: "TLSA",
          64: "SVCB", 65: "HTTPS", 99: "SPF", 252: "AXFR", 255: "ANY", 257: "CAA"}


class RcodeKey(ctypes.Structure):
    _fields_ = [("qtype", ctypes.c_uint16), ("rcode", ctypes.c_uint8), ("pad", ctypes.c_uint8)]


class Latency(ctypes.Structure):
    _fields_ = [("slots", ctypes.c_uint64 * LATENCY_SLOTS), ("sum_ns", ctypes.c_uint64),
                ("count", ctypes.c_uint64)]


def qtype_name(qtype: int) -> str:
    return QTYPES.get(qtype, f"TYPE{qtype}") if qtype else "UNKNOWN"


def rcode_name(rcode: int) -> str:
    return RCODES.get(rcode, f"RCODE{rcode}")


class Dns(Plugin):
    name = "dns"

    def prepare(self) -> ProgramSpec:
        return ProgramSpec(plugin=self.name, source=bpf_source("dns.c"),
                           sched_cls=["dns_ingress", "dns_egress"],
                           maps=["dns_totals", "dns_responses", "dns_latency"])

    def start(self, loaded: LoadedProgram | None) -> None:
        super().start(loaded)
        assert loaded is not None
        self.totals = BpfMap(loaded.maps["dns_totals"], ctypes.c_uint32, ctypes.c_uint64,
                             percpu=True)
        self.responses = BpfMap(loaded.maps["dns_responses"], RcodeKey, ctypes.c_uint64,
                                percpu=True)
        self.latency = BpfMap(loaded.maps["dns_latency"], ctypes.c_uint32, Latency, percpu=True)
        self.snapshot: dict = {"requests": 0, "responses": 0, "by_code": {},
                               "slots": [0] * LATENCY_SLOTS, "sum_ns": 0, "count": 0}
        selector = LinkSelector(self.ctx.config.plugins.dns.interfaces)
        for i, direction in enumerate(("ingress", "egress")):
            self.ctx.tc.add_program(TcProgram(
                name=f"retina_dns_{direction}", fd=loaded.programs[f"dns_{direction}"],
                direction=direction, prio=TC_PRIO + i, selector=selector))

    def harvest(self) -> None:
        requests = sum(self.totals.lookup(ctypes.c_uint32(0)) or [])
        responses = sum(self.totals.lookup(ctypes.c_uint32(1)) or [])
        by_code: dict[tuple[str, str], int] = {}
        for key, per_cpu in self.responses.items():
            label = (rcode_name(key.rcode), qtype_name(key.qtype))
            by_code[label] = by_code.get(label, 0) + sum(per_cpu)
        slots, sum_ns, count = [0] * LATENCY_SLOTS, 0, 0
        for cpu in self.latency.lookup(ctypes.c_uint32(0)) or []:
            for i in range(LATENCY_SLOTS):
                slots[i] += cpu.slots[i]
            sum_ns += cpu.sum_ns
            count += cpu.count
        self.snapshot = {"requests": requests, "responses": responses, "by_code": by_code,
                         "slots": slots, "sum_ns": sum_ns, "count": count}

    def collect(self) -> Iterable:
        s = self.snapshot
        requests = retina_gauge("dns_request_count", "DNS requests seen on the node")
        add(requests, [], s["requests"])
        responses = retina_gauge("dns_response_count", "DNS responses seen on the node")
        add(responses, [], s["responses"])
        by_code = counter("dns_responses", "DNS responses by return code and query type",
                          ["rcode", "qtype"])
        for (rcode, qtype), n in sorted(s["by_code"].items()):
            add(by_code, [rcode, qtype], n)
        buckets, running = [], 0
        for i, n in enumerate(s["slots"]):
            running += n
            buckets.append((f"{(1 << i) / 1e6:.6g}", running))
        buckets.append(("+Inf", s["count"]))
        latency = histogram("dns_latency_seconds",
                            "Time from a DNS request to its response, seen on the node",
                            buckets, s["sum_ns"] / 1e9)
        return [requests, responses, by_code, latency]
