"""The Kubernetes objects a question is about: pods, the Services that select them, and the
NetworkPolicies that apply to them (the API server evaluates every label selector)."""

from __future__ import annotations

from dataclasses import dataclass, field

import kubernetes
from kubernetes.client.rest import ApiException

from retina_capture.spec import selector_to_string


class PodNotFound(LookupError):
    pass


@dataclass
class PodInfo:
    namespace: str
    name: str
    node: str
    ip: str
    labels: dict[str, str] = field(default_factory=dict)
    hostname: str = ""
    subdomain: str = ""

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


def split_ref(ref: str, namespace: str) -> tuple[str, str]:
    """``ns/pod`` or ``pod`` (in ``namespace``) -> (namespace, pod)."""
    if "/" in ref:
        ns, _, name = ref.partition("/")
        if not ns or not name or "/" in name:
            raise ValueError(f"{ref!r} is not a pod: write POD or NAMESPACE/POD")
        return ns, name
    return namespace, ref


def get_pod(client: kubernetes.client.ApiClient, namespace: str, name: str) -> PodInfo:
    core = kubernetes.client.CoreV1Api(client)
    try:
        pod = core.read_namespaced_pod(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            raise PodNotFound(f"pod {namespace}/{name} not found") from None
        raise
    return PodInfo(
        namespace,
        name,
        pod.spec.node_name or "",
        pod.status.pod_ip or "",
        dict(pod.metadata.labels or {}),
        pod.spec.hostname or "",
        pod.spec.subdomain or "",
    )


def services_of(client: kubernetes.client.ApiClient, pod: PodInfo) -> list[str]:
    """Names of the Services in the pod's namespace whose selector picks the pod."""
    core = kubernetes.client.CoreV1Api(client)
    names = []
    for svc in core.list_namespaced_service(pod.namespace).items:
        chosen = (svc.spec.selector or {}) if svc.spec else {}
        if chosen and all(pod.labels.get(k) == v for k, v in chosen.items()):
            names.append(svc.metadata.name)
    return sorted(names)


@dataclass
class PolicyInfo:
    namespace: str
    name: str
    types: list[str]  # Ingress, Egress
    selects: bool  # its podSelector picks the pod asked about


def network_policy(
    client: kubernetes.client.ApiClient, namespace: str, name: str, pod: PodInfo
) -> PolicyInfo | None:
    """The NetworkPolicy ``namespace/name`` and whether it selects ``pod`` (None: no such)."""
    net = kubernetes.client.NetworkingV1Api(client)
    try:
        policy = net.read_namespaced_network_policy(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    spec = policy.spec
    raw_selector = client.sanitize_for_serialization(spec.pod_selector) or {}
    types = list(spec.policy_types or ["Ingress"])
    selects = False
    if pod.namespace == namespace:
        core = kubernetes.client.CoreV1Api(client)
        picked = core.list_namespaced_pod(namespace, label_selector=selector_to_string(raw_selector))
        selects = any(p.metadata.name == pod.name for p in picked.items)
    return PolicyInfo(namespace, name, types, selects)
