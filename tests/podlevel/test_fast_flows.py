"""The fast flow table (podlevel/fastflows.py): a busy flow moves from the LRU hash ``flows`` to
its slot of ``fast_flows``, the kernel counts it there, and the pod-level counts stay exact
across the move, the slot's release and a deselection.

What is read from the kernel is the agent's own maps (found from its TC program): the slot must
hold the flow's key with the packets sent after the move, which the kernel can only do if its
slot hash and the agent's agree."""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import struct
from collections.abc import Iterator

import pytest

from retina_agent.bpf.maps import BpfMap, possible_cpus
from retina_agent.plugins.packetparser import FlowKey, FlowValue
from retina_agent.podlevel.fastflows import PLACE_MIN_PACKETS, FastFlowSlot, slot_of
from retina_agent.podlevel.flows import IDLE_HARVESTS_BEFORE_PRUNE
from retina_lab.agent import agent_map_fd, wait_for
from retina_lab.cluster import apply_crds, metrics_configuration
from retina_lab.traffic import udp_sink
from tests.helpers.metrics import wait_exact
from tests.podlevel.test_lifecycle import client_for, mc_status, replace_mc_spec
from tests.podlevel.test_packetparser import FWD, pod_level_agent, seeded, wait_veths  # noqa: F401

PORT = 7260
SPORTS = (40260, 40261)
FORTY_SPORTS = range(41000, 41040)
HARVEST_S = 1.0  # the lab agent's metricsIntervalDuration


class Maps:
    """The agent's two flow tables, read from the test with map lookups (the agent writes its
    fast table through a memory mapping: these read where the kernel counts)."""

    def __init__(self, pid: int, slots: int) -> None:
        self.slots = slots
        self.flows = BpfMap(agent_map_fd(pid, "flows"), FlowKey, FlowValue, percpu=True)
        self.fast = BpfMap(agent_map_fd(pid, "fast_flows"), ctypes.c_uint32, FastFlowSlot)

    def __enter__(self) -> Maps:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.flows.fd)
        os.close(self.fast.fd)

    def keys(self, src: str, dst: str, sport: int) -> list[bytes]:
        """Raw keys in ``flows`` of the flow src:sport -> dst:PORT (one per hook it crossed)."""
        want = (socket.inet_aton(src), socket.inet_aton(dst), sport, PORT)
        return [
            raw
            for raw, _ in self.flows.raw_items()
            if (raw[12:16], raw[28:32], *struct.unpack_from("=HH", raw, 32)) == want
        ]

    def _copies(self, slot: int) -> list[FastFlowSlot]:
        """Every CPU's copy of ``slot`` (CPU c's is entry c * slots + slot)."""
        copies = []
        for cpu in range(possible_cpus()):
            value = self.fast.lookup(ctypes.c_uint32(cpu * self.slots + slot))
            assert value is not None
            copies.append(value)
        return copies

    def in_slot(self, key: bytes) -> int | None:
        """Packets counted in ``key``'s fast slot (all CPUs), or None if the slot holds another
        key or none."""
        copies = self._copies(slot_of(key, self.slots - 1))
        if not all(c.used and bytes(c.key) == key for c in copies):
            return None
        return sum(c.counters[0] for c in copies)

    def placed(self) -> list[bytes]:
        """The keys in the fast flow table (CPU 0's copies: the agent writes every CPU's alike)."""
        return [bytes(v.key) for i, v in self.fast.items() if v.used and i.value < self.slots]

    def in_flows(self, key: bytes) -> int:
        values = self.flows.lookup(FlowKey.from_buffer_copy(key))
        return sum(v.packets for v in values) if values else 0


WEB_TO_DB = {"source_podname": "web-5d9c-x7k2p", "destination_podname": "db-0"}


def web_to_db(m) -> dict[str, float]:
    """a -> b packets as pod-level metrics count them: leaving a, and entering b."""
    return {d: m.value(FWD, direction=d, **WEB_TO_DB) for d in ("egress", "ingress")}


class Flows:
    """UDP flows from pod a (one socket per source port) to pod b's sink on PORT."""

    def __init__(self, node, sports) -> None:
        self.dst = node["b"].ip
        self.sink = udp_sink(node["b"], PORT)
        self.sink.settimeout(10)
        self.senders: list[socket.socket] = []
        try:
            with node["a"].entered():
                for sport in sports:
                    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    self.senders.append(s)
                    s.bind((node["a"].ip, sport))
        except OSError:
            self.close()
            raise

    def send(self, n: int) -> int:
        """``n`` datagrams on each flow, flow by flow, each read by b at once (the sink's buffer
        is small); how many in all."""
        for s in self.senders:
            for _ in range(n):
                s.sendto(b"x", (self.dst, PORT))
            for _ in range(n):
                self.sink.recv(64)
        return n * len(self.senders)

    def close(self) -> None:
        for s in self.senders:
            s.close()
        self.sink.close()


@contextlib.contextmanager
def flows_from_a(node, sports) -> Iterator[Flows]:
    flows = Flows(node, sports)
    try:
        yield flows
    finally:
        flows.close()


@pytest.mark.parametrize("slots", [1024, 1], ids=["slots-1024", "one-slot-two-flows"])
def test_busy_flows_move_to_fast_slots_and_count_exactly_across_the_move(seeded, slots):  # noqa: F811
    """Two busy flows a -> b. With 1024 slots both move (their four keys, one per hook); with one
    slot, one key at most: the rest keep counting in ``flows``. The per-pod counts are exact
    either way: what was counted before a move, in ``flows``, plus what was counted after it,
    in the slot."""
    kube, node = seeded
    a, b = node["a"], node["b"]
    extra = {"plugins": {"packetparser": {"fastFlows": slots}}}
    with flows_from_a(node, SPORTS) as flows, pod_level_agent(kube, remote=True, extra=extra) as agent:
        wait_veths(agent, node)
        with Maps(agent.proc.pid, slots) as maps:
            first = PLACE_MIN_PACKETS + 24  # busy: more than PLACE_MIN_PACKETS in one interval
            total = flows.send(first)
            wait_exact(agent, web_to_db, {"egress": total, "ingress": total})
            keys = [k for sport in SPORTS for k in maps.keys(a.ip, b.ip, sport)]
            assert len(keys) == 4, keys  # two flows, each at a's veth (ingress) and b's (egress)
            placed_want = 4 if slots > 1 else 1

            def placed() -> list[bytes]:
                return [k for k in keys if maps.in_slot(k) is not None]

            wait_for(lambda: len(placed()) == placed_want, 10, message=f"{placed_want} keys in fast slots")
            moved = placed()
            later = 30
            total += flows.send(later)
            wait_exact(agent, web_to_db, {"egress": total, "ingress": total})
            for k in keys:
                if k in moved:
                    # the kernel counted every packet after the move in the slot (so none of
                    # them in `flows`, whose entry keeps the packets before it, unless the agent
                    # has pruned it by now as idle: it had counted them already)
                    assert maps.in_slot(k) == later
                    assert maps.in_flows(k) in (first, 0)
                else:
                    assert maps.in_flows(k) == first + later


def test_many_flows_on_few_slots_count_exactly(seeded):  # noqa: F811
    """Forty busy flows on eight slots: collisions everywhere, some keys placed and most not,
    placements on every harvest while the bursts go on. Every packet is counted once."""
    kube, node = seeded
    a, b = node["a"], node["b"]
    extra = {"plugins": {"packetparser": {"fastFlows": 8}}}
    with flows_from_a(node, FORTY_SPORTS) as flows, pod_level_agent(kube, remote=True, extra=extra) as agent:
        wait_veths(agent, node)
        with Maps(agent.proc.pid, 8) as maps:
            total = 0
            for _ in range(3):
                total += flows.send(PLACE_MIN_PACKETS + 4)  # busy: placed if its slot is free
                wait_exact(agent, web_to_db, {"egress": total, "ingress": total})
            # eighty keys (forty flows at two hooks) for eight slots: some keys are in the table
            # (``flows`` may have pruned their old entries by now: they went idle there)
            ours = {socket.inet_aton(a.ip), socket.inet_aton(b.ip)}
            placed = [k for k in maps.placed() if {k[12:16], k[28:32]} == ours]
            assert 0 < len(placed) <= 8, placed


def test_idle_slots_are_freed_and_deselected_flows_leave_them(seeded):  # noqa: F811
    """A moved flow that goes idle gives its slot back, and comes back to count exactly; a
    moved flow whose pods leave the selection loses its slot at once (while still busy), and
    its packets are no longer counted."""
    kube, node = seeded
    apply_crds(kube)
    kube.seed([metrics_configuration("all", exclude=[])])
    api = client_for(kube)
    a, b = node["a"], node["b"]
    with flows_from_a(node, SPORTS[:1]) as flows, pod_level_agent(kube, remote=True) as agent:
        wait_veths(agent, node)
        with Maps(agent.proc.pid, 1024) as maps:
            flows.send(40)
            wait_exact(agent, web_to_db, {"egress": 40, "ingress": 40})
            keys = maps.keys(a.ip, b.ip, SPORTS[0])
            assert len(keys) == 2
            wait_for(lambda: all(maps.in_slot(k) is not None for k in keys), 10, message="moved")
            flows.send(20)
            wait_exact(agent, web_to_db, {"egress": 60, "ingress": 60})
            # idle: the slots are freed within the idle harvests (and a few more for the wait)
            wait_for(
                lambda: all(maps.in_slot(k) is None for k in keys),
                (IDLE_HARVESTS_BEFORE_PRUNE + 4) * HARVEST_S,
                message="idle slots freed",
            )
            flows.send(50)  # back in `flows`, then moved again
            wait_exact(agent, web_to_db, {"egress": 110, "ingress": 110})
            wait_for(lambda: all(maps.in_slot(k) is not None for k in keys), 10, message="moved again")
            # neither pod selected any more: the slots go while the flow stays busy
            spec = metrics_configuration("all", exclude=["shop", "data"])["spec"]
            replace_mc_spec(api, "all", spec)
            wait_for(lambda: mc_status(api, "all").get("lastKnownSpec") == spec, 10, message="new spec")

            def gone() -> bool:
                flows.send(5)
                return all(maps.in_slot(k) is None for k in keys)

            deadline = (IDLE_HARVESTS_BEFORE_PRUNE - 2) * HARVEST_S  # before idle freeing could
            wait_for(gone, deadline, interval=0.2, message="the deselected flow's slots freed")
            flows.send(PLACE_MIN_PACKETS * 2)  # busy, but not of interest: counted nowhere
            assert all(maps.in_slot(k) is None and maps.in_flows(k) == 0 for k in keys)
