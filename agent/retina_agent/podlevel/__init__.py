"""Pod-level ("advanced") metrics: what the pod-level plugins share.

``PodLevel`` ties together the endpoint cache (IP -> pod, fed by Kubernetes watches), the
MetricsConfiguration in force, the IPs of interest (kept in each plugin's BPF filter map), the
label plans, and one series store with expiry and a cap. Plugins call ``resolve``, ``plan`` and
``series``; the agent calls ``refresh`` when the cache or the configuration changes.
"""

from __future__ import annotations

import ctypes
import ipaddress
import logging
import threading
from collections.abc import Callable, Iterator

from retina_agent.metrics import DATAPLANE
from retina_agent.podlevel.context import LabelPlan, local_values, plan_for, remote_values
from retina_agent.podlevel.series import SeriesStore

log = logging.getLogger(__name__)


class AddrKey(ctypes.Structure):
    _fields_ = [("addr", ctypes.c_uint8 * 16)]


def addr_bytes(ip: str) -> bytes:
    """16-byte key for an address: IPv6 as is, IPv4 as ::ffff:a.b.c.d."""
    a = ipaddress.ip_address(ip)
    if a.version == 4:
        return b"\0" * 10 + b"\xff\xff" + a.packed
    return a.packed


def addr_str(raw: bytes) -> str:
    a = ipaddress.IPv6Address(bytes(raw))
    return str(a.ipv4_mapped) if a.ipv4_mapped is not None else str(a)


class PodLevel:
    def __init__(
        self,
        *,
        remote: bool,
        annotations: bool,
        bypass_filter: bool,
        max_series: int,
        cache=None,
        watcher=None,
    ) -> None:
        self.remote = remote
        self.annotations = annotations
        self.bypass_filter = bypass_filter
        self.cache = cache
        self.watcher = watcher
        self.series = SeriesStore(max_series)
        self._filters: list = []  # BpfMap[AddrKey, c_uint8] of each plugin
        self._interest: frozenset[str] = frozenset()
        self._lock = threading.Lock()
        self._spec = None
        self._on_change: list[Callable[[], None]] = []
        self._metrics: dict[str, tuple[str, tuple[str, ...]]] = {}  # metric -> doc, fixed
        self.api_client = None  # the kubernetes ApiClient, when connected

    # -- configuration -----------------------------------------------------------------------
    def start(self) -> None:
        if self.cache is not None:
            self.cache.subscribe(self.refresh)
        if self.watcher is not None:
            self.watcher.subscribe(self._spec_changed)
            self._spec = self.watcher.current()
        self.refresh()

    def _spec_changed(self, spec) -> None:
        with self._lock:
            self._spec = spec
        log.info("MetricsConfiguration in force changed: series restart with the new labels")
        self.series.clear()
        for callback in list(self._on_change):
            callback()
        self.refresh()

    def on_spec_change(self, callback: Callable[[], None]) -> None:
        self._on_change.append(callback)

    @property
    def spec(self):
        return self._spec

    def plan(self, metric: str) -> LabelPlan:
        """Labels of an adv_ metric: its contextOption, else the defaults for the mode."""
        option = None
        spec = self._spec
        if spec is not None:
            short = metric.removeprefix("adv_")
            options = spec.context_options
            option = options.get(short) or options.get(short.replace("_bytes", "_count"))
        return plan_for(option, self.remote)

    def ttl(self, metric: str) -> float:
        spec = self._spec
        if spec is None:
            return 0.0
        short = metric.removeprefix("adv_")
        option = spec.context_options.get(short) or spec.context_options.get(
            short.replace("_bytes", "_count")
        )
        return option.ttl_seconds if option is not None else 0.0

    # -- exposition --------------------------------------------------------------------------
    def register_metric(self, metric: str, doc: str, fixed_labels: tuple[str, ...] = ()) -> None:
        """A pod-level metric a plugin produces: ``fixed_labels`` come before the context."""
        self._metrics[metric] = (doc, fixed_labels)

    def render(self) -> Iterator[bytes]:
        """Every pod-level metric in the Prometheus text format, in encoded chunks of at most
        a thousand lines (see SeriesStore.render): never the whole text in one string."""
        for metric, (doc, fixed) in self._metrics.items():
            name = DATAPLANE + metric
            yield f"# HELP {name} {doc}\n# TYPE {name} untyped\n".encode()
            for chunk in self.series.render(metric, name, [*fixed, *self.plan(metric).names]):
                yield chunk.encode()

    # -- endpoints ---------------------------------------------------------------------------
    def resolve(self, ip: str):
        return self.cache.lookup(ip) if self.cache is not None else None

    def is_local(self, ip: str) -> bool:
        return self.cache is not None and ip in self.cache.local_ips()

    def selected(self, ep, ip: str) -> bool:
        """Does this pod produce series: its namespace selected by the MetricsConfiguration
        (if any) and, in annotation mode, the pod or its namespace annotated?"""
        if ep is None:
            return False
        spec = self._spec
        if spec is not None and not spec.namespace_selected(ep.namespace):
            return False
        return not self.annotations or ip in self.cache.annotated_ips()

    def label_sets(
        self, plan: LabelPlan, src_ip: str, sport: int, dst_ip: str, dport: int, direction: str | None = None
    ) -> list[tuple[str, ...]]:
        """The series a packet from src to dst belongs to.

        Local context: one per pod of this node it touches (the source's egress series, the
        destination's ingress series), or only the side ``direction`` names. Remote context:
        one series with both sides, when either side is selected; the direction is egress when
        the source is a pod of this node, else ingress, unless given.
        """
        if self.remote:
            src, dst = self.resolve(src_ip), self.resolve(dst_ip)
            if not (self.selected(src, src_ip) or self.selected(dst, dst_ip)):
                return []
            if direction is None:
                direction = "egress" if self.is_local(src_ip) else "ingress"
            return [remote_values(plan, src, src_ip, sport, dst, dst_ip, dport, direction)]
        sides = []
        if direction in (None, "egress"):
            sides.append((src_ip, "egress"))
        if direction in (None, "ingress"):
            sides.append((dst_ip, "ingress"))
        out = []
        for ip, side in sides:
            ep = self.resolve(ip)
            if ep is not None and self.is_local(ip) and self.selected(ep, ip):
                out.append(local_values(plan, ep, ip, side))
        return out

    def interest(self) -> frozenset[str]:
        """Pods whose traffic produces series: local ones in local context, all in remote."""
        cache = self.cache
        if cache is None:
            return frozenset()
        ips = cache.all_ips() if self.remote else cache.local_ips()
        if self.annotations:
            ips = ips & cache.annotated_ips()
        spec = self._spec
        if spec is not None:
            ips = frozenset(ip for ip in ips if spec.namespace_selected(cache.namespace_of(ip) or ""))
        return ips

    @property
    def interest_now(self) -> frozenset[str]:
        """The IPs of interest as last written to the filter maps (``refresh``)."""
        return self._interest

    # -- BPF filter maps ---------------------------------------------------------------------
    def register_filter(self, bpf_map) -> None:
        with self._lock:
            self._filters.append(bpf_map)
            interest = self._interest
        for ip in interest:
            bpf_map.update_raw(addr_bytes(ip), b"\x01")

    def refresh(self) -> None:
        """Bring every plugin's filter map in line with the IPs of interest."""
        wanted = self.interest()
        with self._lock:
            added, removed = wanted - self._interest, self._interest - wanted
            self._interest = wanted
            filters = list(self._filters)
        for bpf_map in filters:
            for ip in added:
                try:
                    bpf_map.update_raw(addr_bytes(ip), b"\x01")
                except OSError as exc:
                    log.warning("cannot add %s to the pod filter: %s", ip, exc)
            for ip in removed:
                bpf_map.delete_raw(addr_bytes(ip))
        if added or removed:
            log.debug("IPs of interest: +%d -%d (now %d)", len(added), len(removed), len(wanted))
