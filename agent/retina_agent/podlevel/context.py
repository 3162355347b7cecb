"""Which labels a pod-level series carries, and their values for a flow.

Local context (``remoteContext: false``): the pod on this node, prefix-less labels
``ip, namespace, podname, workload_kind, workload_name``; an egress series for a local source
pod and an ingress series for a local destination pod.
Remote context (``remoteContext: true``): ``source_*`` and ``destination_*`` labels as the
MetricsConfiguration's contextOptions choose them (``workload`` expands to ``_workload_kind``
and ``_workload_name``). Without a MetricsConfiguration: namespace, podname and workload on both
sides. Values that cannot be resolved are ``unknown``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

UNKNOWN = "unknown"
LOCAL_FIELDS = ("ip", "namespace", "podname", "workload_kind", "workload_name")
OPTION_FIELDS = {
    "ip": ("ip",),
    "namespace": ("namespace",),
    "podname": ("podname",),
    "workload": ("workload_kind", "workload_name"),
    "service": ("service",),
    "port": ("port",),
    "zone": ("zone",),
}
DEFAULT_REMOTE = ("namespace", "podname", "workload")
DIRECTIONS = ("ingress", "egress")  # index = BPF direction: 0 into the pod, 1 out of it


class EndpointLike(Protocol):
    ip: str
    namespace: str
    podname: str
    workload_kind: str
    workload_name: str
    service: str
    zone: str


@dataclass(frozen=True)
class LabelPlan:
    local: bool
    source_fields: tuple[str, ...]
    destination_fields: tuple[str, ...]
    additional: tuple[str, ...]

    @property
    def names(self) -> list[str]:
        if self.local:
            return [*LOCAL_FIELDS, *self.additional]
        return (
            [f"source_{f}" for f in self.source_fields]
            + [f"destination_{f}" for f in self.destination_fields]
            + list(self.additional)
        )


def _expand(options: tuple[str, ...]) -> tuple[str, ...]:
    fields: list[str] = []
    for option in options:
        fields.extend(OPTION_FIELDS.get(option, ()))
    return tuple(fields)


def plan_for(option, remote: bool, default_additional: tuple[str, ...] = ("direction",)) -> LabelPlan:
    """The plan for one metric from its ContextOption (or None for the defaults)."""
    additional = tuple(option.additional_labels) if option is not None else default_additional
    additional = tuple(a for a in additional if a == "direction") or ()
    if not remote:
        return LabelPlan(True, (), (), additional)
    src = _expand(tuple(option.source_labels)) if option is not None else _expand(DEFAULT_REMOTE)
    dst = _expand(tuple(option.destination_labels)) if option is not None else _expand(DEFAULT_REMOTE)
    return LabelPlan(False, src, dst, additional)


def endpoint_field(ep: EndpointLike | None, ip: str, field: str, port: int) -> str:
    """One label value. A resolved endpoint's values are its own strings, shared by all its
    series (also its ``ip``: the address text of each flow would be a new string per series).
    Ports are not shared: a table of port strings costs as much as it saves unless many series
    have the same port."""
    if field == "ip":
        return ep.ip if ep is not None and ep.ip == ip else ip
    if field == "port":
        return str(port)
    if ep is None:
        return UNKNOWN
    return getattr(ep, field, UNKNOWN) or UNKNOWN


def local_values(plan: LabelPlan, ep: EndpointLike, ip: str, direction: str) -> tuple[str, ...]:
    values = tuple(endpoint_field(ep, ip, f, 0) for f in LOCAL_FIELDS)
    return values + tuple(direction for a in plan.additional if a == "direction")


def remote_values(
    plan: LabelPlan,
    src: EndpointLike | None,
    src_ip: str,
    sport: int,
    dst: EndpointLike | None,
    dst_ip: str,
    dport: int,
    direction: str,
) -> tuple[str, ...]:
    return (
        tuple(endpoint_field(src, src_ip, f, sport) for f in plan.source_fields)
        + tuple(endpoint_field(dst, dst_ip, f, dport) for f in plan.destination_fields)
        + tuple(direction for a in plan.additional if a == "direction")
    )
