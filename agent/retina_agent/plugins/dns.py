"""dns: DNS requests and responses on the node, parsed in the kernel at TC.

Retina's ``dns_request_count`` and ``dns_response_count`` (no labels), and beyond Retina:
``dns_responses_total{rcode,qtype}`` and the query-to-response latency histogram
``dns_latency_seconds``. UDP and TCP, IPv4 and IPv6.

Pod level (``enablePodLevel``): messages to or from pods of interest reach the agent through a
ring buffer, are parsed with dnspython, and become ``adv_dns_request_count{query_type,query}``
and ``adv_dns_response_count{return_code,query_type,query,response,num_response}`` with the
pods' context labels. Events lost to a full ring buffer are counted in
``controlplane_networkobservability_lost_events_counter{type="dns"}``.
"""

from __future__ import annotations

import ctypes
import logging
import struct
import time
from collections.abc import Iterable

from retina_agent.bpf.datapath import DNS_LATENCY_SLOTS, Feature
from retina_agent.bpf.maps import BpfMap
from retina_agent.bpf.ringbuf import RingBuffer
from retina_agent.bpf.spec import LoadedProgram
from retina_agent.metrics import add, counter, histogram, retina_counter, retina_gauge
from retina_agent.plugins.base import TcPlugin
from retina_agent.podlevel import addr_str

log = logging.getLogger(__name__)
ADV_REQUESTS, ADV_RESPONSES = "adv_dns_request_count", "adv_dns_response_count"
_EVENT = struct.Struct("=16s16sHHHH")

LATENCY_SLOTS = DNS_LATENCY_SLOTS

RCODES = {
    0: "NOERROR",
    1: "FORMERR",
    2: "SERVFAIL",
    3: "NXDOMAIN",
    4: "NOTIMP",
    5: "REFUSED",
    6: "YXDOMAIN",
    7: "YXRRSET",
    8: "NXRRSET",
    9: "NOTAUTH",
    10: "NOTZONE",
}
QTYPES = {
    1: "A",
    2: "NS",
    5: "CNAME",
    6: "SOA",
    12: "PTR",
    15: "MX",
    16: "TXT",
    28: "AAAA",
    33: "SRV",
    35: "NAPTR",
    43: "DS",
    46: "RRSIG",
    47: "NSEC",
    48: "DNSKEY",
    52: "TLSA",
    64: "SVCB",
    65: "HTTPS",
    99: "SPF",
    252: "AXFR",
    255: "ANY",
    257: "CAA",
}


class RcodeKey(ctypes.Structure):
    _fields_ = [("qtype", ctypes.c_uint16), ("rcode", ctypes.c_uint8), ("pad", ctypes.c_uint8)]


class Latency(ctypes.Structure):
    _fields_ = [
        ("slots", ctypes.c_uint64 * LATENCY_SLOTS),
        ("sum_ns", ctypes.c_uint64),
        ("count", ctypes.c_uint64),
    ]


def qtype_name(qtype: int) -> str:
    return QTYPES.get(qtype, f"TYPE{qtype}") if qtype else "UNKNOWN"


def rcode_name(rcode: int) -> str:
    return RCODES.get(rcode, f"RCODE{rcode}")


class Dns(TcPlugin):
    name = "dns"

    def prepare(self) -> Feature:
        maps = ["dns_totals", "dns_responses", "dns_latency"]
        constants, sizes = self.pod_level_settings(["dns_events", "dns_lost"])
        if self.ctx.pod_level is not None:
            maps += ["ips_of_interest", "dns_events", "dns_lost"]
        return Feature(self.name, maps=maps, constants=constants, max_entries=sizes)

    def start(self, loaded: LoadedProgram | None) -> None:
        super().start(loaded)
        assert loaded is not None
        self.totals = BpfMap(loaded.maps["dns_totals"], ctypes.c_uint32, ctypes.c_uint64, percpu=True)
        self.responses = BpfMap(loaded.maps["dns_responses"], RcodeKey, ctypes.c_uint64, percpu=True)
        self.latency = BpfMap(loaded.maps["dns_latency"], ctypes.c_uint32, Latency, percpu=True)
        self.snapshot: dict = {
            "requests": 0,
            "responses": 0,
            "by_code": {},
            "slots": [0] * LATENCY_SLOTS,
            "sum_ns": 0,
            "count": 0,
        }
        self.events: RingBuffer | None = None
        self.lost = 0
        if "dns_events" in loaded.maps:
            self.use_pod_filter(loaded)
            self.lost_map = BpfMap(loaded.maps["dns_lost"], ctypes.c_uint32, ctypes.c_uint64, percpu=True)
            self.ctx.pod_level.register_metric(
                ADV_REQUESTS, "DNS requests of pods by query", ("query_type", "query")
            )
            self.ctx.pod_level.register_metric(
                ADV_RESPONSES,
                "DNS responses to pods by query and answer",
                ("return_code", "query_type", "query", "response", "num_response"),
            )
            self.events = RingBuffer(loaded.maps["dns_events"], self._on_event, "dns")
            self.events.start()
        self.attach_tc()

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
        self.snapshot = {
            "requests": requests,
            "responses": responses,
            "by_code": by_code,
            "slots": slots,
            "sum_ns": sum_ns,
            "count": count,
        }
        if self.events is not None:
            self.lost = sum(self.lost_map.lookup(ctypes.c_uint32(0)) or [])
            pod_level = self.ctx.pod_level
            pod_level.series.expire({m: pod_level.ttl(m) for m in (ADV_REQUESTS, ADV_RESPONSES)})

    def stop(self) -> None:
        if getattr(self, "events", None) is not None:
            self.events.stop()
            self.events = None
        super().stop()

    def _on_event(self, raw: bytes) -> None:
        """One DNS message to or from a pod of interest (ring buffer thread)."""
        import dns.exception
        import dns.message

        # weight: the messages this one stands for (dataSamplingRate when it was kept)
        src, dst, sport, dport, length, weight = _EVENT.unpack_from(raw)
        weight = max(weight, 1)
        try:
            msg = dns.message.from_wire(
                raw[_EVENT.size : _EVENT.size + length], ignore_trailing=True, one_rr_per_rrset=True
            )
        except dns.exception.DNSException:
            return
        if not msg.question:
            return
        question = msg.question[0]
        query = question.name.to_text()
        qtype = qtype_name(question.rdtype)
        pod_level = self.ctx.pod_level
        src_ip, dst_ip = addr_str(src), addr_str(dst)
        now = time.monotonic()
        if not msg.flags & 0x8000:  # QR = 0: a request
            plan = pod_level.plan(ADV_REQUESTS)
            for labels in pod_level.label_sets(plan, src_ip, sport, dst_ip, dport):
                pod_level.series.add(ADV_REQUESTS, (qtype, query, *labels), weight, now)
            return
        answers = [rr.address for rrset in msg.answer for rr in rrset if hasattr(rr, "address")]
        plan = pod_level.plan(ADV_RESPONSES)
        for labels in pod_level.label_sets(plan, src_ip, sport, dst_ip, dport):
            pod_level.series.add(
                ADV_RESPONSES,
                (rcode_name(msg.rcode()), qtype, query, ",".join(answers), str(len(answers)), *labels),
                weight,
                now,
            )

    def collect(self) -> Iterable:
        s = self.snapshot
        requests = retina_gauge("dns_request_count", "DNS requests seen on the node")
        add(requests, [], s["requests"])
        responses = retina_gauge("dns_response_count", "DNS responses seen on the node")
        add(responses, [], s["responses"])
        by_code = counter("dns_responses", "DNS responses by return code and query type", ["rcode", "qtype"])
        for (rcode, qtype), n in sorted(s["by_code"].items()):
            add(by_code, [rcode, qtype], n)
        buckets, running = [], 0
        for i, n in enumerate(s["slots"]):
            running += n
            buckets.append((f"{(1 << i) / 1e6:.6g}", running))
        buckets.append(("+Inf", s["count"]))
        latency = histogram(
            "dns_latency_seconds",
            "Time from a DNS request to its response, seen on the node",
            buckets,
            s["sum_ns"] / 1e9,
        )
        families = [requests, responses, by_code, latency]
        if self.events is not None:
            families += self._adv_families()
        return families

    def _adv_families(self) -> list:
        lost = retina_counter(
            "lost_events_counter", "Events lost before reaching the agent", ["type", "reason"]
        )
        add(lost, ["dns", "ring_buffer_full"], self.lost)
        return [lost]
