"""The IP-to-endpoint cache: pods (and services, nodes, workloads) kept in step by watches.

``EndpointCache(api_client, node_name, remote_context=...)`` watches:

* pods: local context only those with ``spec.nodeName`` = this node (a field selector, so the
  API server does the filtering), remote context all of them;
* ReplicaSets and Jobs, reduced to "who owns it", to name a pod's workload (see ``endpoint.py``);
* Namespaces, for the ``retina.sh: observe`` annotation;
* Services (``watch_services``): a pod's ``service`` is the first Service (by name) in its
  namespace whose selector matches its labels; a Service's cluster IPs resolve to the Service;
* Nodes (remote context all, local context only this node): ``topology.kubernetes.io/zone``.

Only compact records are kept (``_Pod`` and ``Endpoint`` with shared strings), never the API
objects: about 1 KiB per pod. Host-network pods (their IP is the node's) and finished pods
(their IP may already belong to another pod) are left out. ``lookup`` is a dictionary read and
never calls the API server; writers (the watch threads) hold one lock.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import kubernetes

from retina_agent.enrichment.endpoint import (
    UNKNOWN,
    Endpoint,
    Owner,
    controller_owner,
    intern,
    resolve_workload,
)
from retina_agent.enrichment.kubeclient import RawCollection
from retina_agent.enrichment.reflector import Obj, Reflector

log = logging.getLogger(__name__)

OBSERVE_ANNOTATION = "retina.sh"
OBSERVE_VALUE = "observe"
ZONE_LABELS = ("topology.kubernetes.io/zone", "failure-domain.beta.kubernetes.io/zone")

PodKey = tuple[str, str]  # namespace, name


def normalize_ip(ip: str) -> str:
    """The canonical text of an address (IPv6 compressed), or the text itself if it is none."""
    try:
        return ipaddress.ip_address(ip).compressed
    except ValueError:
        return ip


class _Pod:
    """What the cache remembers of a pod."""

    __slots__ = ("namespace", "name", "ips", "node", "labels", "owner", "template_hash", "annotated")

    def __init__(self, obj: Obj, keep_labels: bool) -> None:
        meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
        self.namespace = intern(meta.get("namespace"))
        self.name: str = meta.get("name") or UNKNOWN
        ips = [p.get("ip") for p in status.get("podIPs") or ()] or [status.get("podIP")]
        self.ips = tuple(dict.fromkeys(normalize_ip(ip) for ip in ips if ip))
        self.node = intern(spec.get("nodeName"))
        labels = meta.get("labels") or {}
        self.labels = tuple(sorted((intern(k), intern(v)) for k, v in labels.items())) if keep_labels else ()
        self.owner = controller_owner(meta)
        self.template_hash = labels.get("pod-template-hash")
        self.annotated = (meta.get("annotations") or {}).get(OBSERVE_ANNOTATION) == OBSERVE_VALUE

    def _key(self) -> tuple:
        return tuple(getattr(self, s) for s in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Pod) and self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]


def _usable(obj: Obj) -> bool:
    """Does this pod own its IPs? (Not host-network, not finished.)"""
    return not (obj.get("spec") or {}).get("hostNetwork") and (obj.get("status") or {}).get("phase") not in (
        "Succeeded",
        "Failed",
    )


def _discard(index: dict[Any, set[PodKey]], where: Any, key: PodKey) -> None:
    members = index.get(where)
    if members is not None:
        members.discard(key)
        if not members:
            del index[where]


class _Store:
    """A Reflector handler: ``key``/``upsert``/``delete`` per object, the cache's lock around."""

    def __init__(
        self,
        cache: EndpointCache,
        upsert: Callable[[Obj], bool],
        delete: Callable[[tuple[str, str]], bool],
        keys: Callable[[], set],
    ) -> None:
        self._cache, self._upsert, self._delete, self._keys = cache, upsert, delete, keys

    @staticmethod
    def key(obj: Obj) -> tuple[str, str]:
        meta = obj.get("metadata") or {}
        return meta.get("namespace") or "", meta.get("name") or ""

    def replace(self, objects: Iterator[Obj]) -> None:
        seen, changed = set(), False
        for obj in objects:
            with self._cache._lock:
                changed |= self._upsert(obj)
            seen.add(self.key(obj))
        with self._cache._lock:
            for key in self._keys() - seen:
                changed |= self._delete(key)
        if changed:
            self._cache._changed()

    def apply(self, event_type: str, obj: Obj) -> None:
        with self._cache._lock:
            changed = self._delete(self.key(obj)) if event_type == "DELETED" else self._upsert(obj)
        if changed:
            self._cache._changed()


class EndpointCache:
    """Resolve pod and service IPs to endpoints; see the module doc for what is watched."""

    def __init__(
        self,
        api_client: kubernetes.client.ApiClient,
        node_name: str | None,
        *,
        remote_context: bool,
        watch_services: bool = True,
        page_size: int = 500,
    ) -> None:
        if not remote_context and not node_name:
            raise ValueError(
                "local context needs this node's name: set nodeName, or the NODE_NAME "
                "environment variable from the downward API (spec.nodeName)"
            )
        self.node_name = node_name
        self.remote_context = remote_context
        self.watch_services = watch_services
        self._lock = threading.RLock()
        self._subscribers: list[Callable[[], None]] = []
        # what the watches tell
        self._pods: dict[PodKey, _Pod] = {}
        self._pods_by_owner: dict[tuple[str, str, str], set[PodKey]] = {}
        self._replicasets: dict[tuple[str, str], Owner] = {}
        self._jobs: dict[tuple[str, str], Owner] = {}
        self._services: dict[str, dict[str, tuple[tuple[tuple[str, str], ...], tuple[str, ...]]]] = {}
        self._pods_by_ns: dict[str, set[PodKey]] = {}
        self._zones: dict[str, str] = {}
        self._observed_namespaces: set[str] = set()
        # what lookups read
        self._by_ip: dict[str, Endpoint] = {}
        self._ip_pods: dict[str, tuple[PodKey, ...]] = {}
        self._service_ips: dict[str, Endpoint] = {}
        self._sets: tuple[frozenset[str], frozenset[str], frozenset[str]] | None = None

        def collection(path: str) -> RawCollection:
            return RawCollection(api_client, path)

        pod_selector = {} if remote_context else {"field_selector": f"spec.nodeName={node_name}"}
        node_selector = {} if remote_context else {"field_selector": f"metadata.name={node_name}"}

        def reflector(
            name: str,
            func: Callable[..., Any],
            upsert: Callable[[Obj], bool],
            delete: Callable[[tuple[str, str]], bool],
            keys: Callable[[], set],
            selectors: dict[str, str] | None = None,
        ) -> Reflector:
            return Reflector(
                name, func, _Store(self, upsert, delete, keys), selectors=selectors, page_size=page_size
            )

        self._reflectors = [
            reflector(
                "namespaces",
                collection("/api/v1/namespaces"),
                self._upsert_namespace,
                self._delete_namespace,
                lambda: {("", n) for n in self._observed_namespaces},
            ),
            reflector(
                "nodes",
                collection("/api/v1/nodes"),
                self._upsert_node,
                self._delete_node,
                lambda: {("", n) for n in self._zones},
                node_selector,
            ),
            reflector(
                "replicasets",
                collection("/apis/apps/v1/replicasets"),
                lambda o: self._upsert_owner(o, self._replicasets, "ReplicaSet"),
                lambda k: self._delete_owner(k, self._replicasets, "ReplicaSet"),
                lambda: set(self._replicasets),
            ),
            reflector(
                "jobs",
                collection("/apis/batch/v1/jobs"),
                lambda o: self._upsert_owner(o, self._jobs, "Job"),
                lambda k: self._delete_owner(k, self._jobs, "Job"),
                lambda: set(self._jobs),
            ),
        ]
        if watch_services:
            self._reflectors.append(
                reflector(
                    "services",
                    collection("/api/v1/services"),
                    self._upsert_service,
                    self._delete_service,
                    self._service_keys,
                )
            )
        self._reflectors.append(
            reflector(
                "pods",
                collection("/api/v1/pods"),
                self._upsert_pod,
                self._delete_pod,
                lambda: set(self._pods),
                pod_selector,
            )
        )

    # -- public interface -----------------------------------------------------------------------
    def start(self) -> None:
        """Start the watches (one thread each); returns at once."""
        for r in self._reflectors:
            r.start()

    def wait_synced(self, timeout: float) -> bool:
        """Wait until every watched kind has been listed once; False on timeout."""
        deadline = time.monotonic() + timeout
        return all(r.synced.wait(max(0.0, deadline - time.monotonic())) for r in self._reflectors)

    def stop(self) -> None:
        for r in self._reflectors:
            r.stop()

    def lookup(self, ip: str) -> Endpoint | None:
        """The endpoint of a pod (or service) IP, None if unknown. No API call, thread-safe."""
        found = self._by_ip.get(ip) or self._service_ips.get(ip)
        if found is None and ":" in ip:
            canonical = normalize_ip(ip)
            found = self._by_ip.get(canonical) or self._service_ips.get(canonical)
        return found

    def namespace_of(self, ip: str) -> str | None:
        found = self.lookup(ip)
        return found.namespace if found is not None else None

    def local_ips(self) -> frozenset[str]:
        """IPs (v4 and v6) of the pods on this node."""
        return self._ip_sets()[0]

    def all_ips(self) -> frozenset[str]:
        """IPs of every pod the cache knows (local context: the pods on this node)."""
        return self._ip_sets()[1]

    def annotated_ips(self) -> frozenset[str]:
        """IPs of pods with ``retina.sh: observe`` on the pod or on its namespace."""
        return self._ip_sets()[2]

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` (from a watch thread) after any change of the cache."""
        self._subscribers.append(callback)

    @property
    def connected(self) -> bool:
        return all(r.connected for r in self._reflectors)

    @property
    def relists(self) -> int:
        """Lists after the first one of each kind (410 Gone)."""
        return sum(max(0, r.lists - 1) for r in self._reflectors)

    @property
    def reconnects(self) -> int:
        return sum(r.reconnects for r in self._reflectors)

    def __len__(self) -> int:
        return len(self._pods)

    # -- derived data ---------------------------------------------------------------------------
    def _changed(self) -> None:
        with self._lock:
            self._sets = None
        for callback in list(self._subscribers):
            try:
                callback()
            except Exception:
                log.exception("endpoint cache subscriber %r failed", callback)

    def _ip_sets(self) -> tuple[frozenset[str], frozenset[str], frozenset[str]]:
        sets = self._sets
        if sets is None:
            with self._lock:
                local, every, observed = [], [], []
                for pod in self._pods.values():
                    every.extend(pod.ips)
                    if pod.node == self.node_name:
                        local.extend(pod.ips)
                    if pod.annotated or pod.namespace in self._observed_namespaces:
                        observed.extend(pod.ips)
                sets = self._sets = frozenset(local), frozenset(every), frozenset(observed)
        return sets

    def _endpoint(self, pod: _Pod, ip: str) -> Endpoint:
        kind, name = resolve_workload(
            pod.owner, pod.template_hash, self._replicasets, self._jobs, pod.namespace
        )
        return Endpoint(
            ip,
            pod.namespace,
            pod.name,
            kind,
            name,
            pod.node,
            self._service_of(pod),
            self._zones.get(pod.node, UNKNOWN),
        )

    def _service_of(self, pod: _Pod) -> str:
        if not pod.labels:
            return UNKNOWN
        labels = dict(pod.labels)
        matches = [
            name
            for name, (selector, _ips) in self._services.get(pod.namespace, {}).items()
            if selector and all(labels.get(k) == v for k, v in selector)
        ]
        return min(matches) if matches else UNKNOWN

    def _index_pod(self, key: PodKey, pod: _Pod) -> None:
        for ip in pod.ips:
            self._ip_pods[ip] = (*[k for k in self._ip_pods.get(ip, ()) if k != key], key)
            self._by_ip[ip] = self._endpoint(pod, ip)
        self._pods_by_ns.setdefault(pod.namespace, set()).add(key)
        if pod.owner is not None:
            self._pods_by_owner.setdefault((pod.namespace, *pod.owner), set()).add(key)

    def _unindex_pod(self, key: PodKey, pod: _Pod) -> None:
        for ip in pod.ips:
            others = tuple(k for k in self._ip_pods.get(ip, ()) if k != key)
            if others:  # another pod has this IP too (one is on its way out): it takes over
                self._ip_pods[ip] = others
                self._by_ip[ip] = self._endpoint(self._pods[others[-1]], ip)
            else:
                self._ip_pods.pop(ip, None)
                self._by_ip.pop(ip, None)
        _discard(self._pods_by_ns, pod.namespace, key)
        if pod.owner is not None:
            _discard(self._pods_by_owner, (pod.namespace, *pod.owner), key)

    def _reindex(self, keys: Iterator[PodKey] | set[PodKey]) -> None:
        for key in list(keys):
            pod = self._pods.get(key)
            if pod is not None:
                for ip in pod.ips:
                    if self._ip_pods.get(ip, ())[-1:] == (key,):
                        self._by_ip[ip] = self._endpoint(pod, ip)

    # -- pods -----------------------------------------------------------------------------------
    def _upsert_pod(self, obj: Obj) -> bool:
        key = _Store.key(obj)
        if not _usable(obj):
            return self._delete_pod(key)
        pod = _Pod(obj, keep_labels=self.watch_services)
        if not pod.ips:
            return self._delete_pod(key)
        old = self._pods.get(key)
        if old == pod:
            return False
        if old is not None:
            self._unindex_pod(key, old)
        self._pods[key] = pod
        self._index_pod(key, pod)
        return True

    def _delete_pod(self, key: tuple[str, str]) -> bool:
        pod = self._pods.pop(key, None)
        if pod is None:
            return False
        self._unindex_pod(key, pod)
        return True

    # -- workloads ------------------------------------------------------------------------------
    def _upsert_owner(self, obj: Obj, table: dict[tuple[str, str], Owner], kind: str) -> bool:
        key = _Store.key(obj)
        owner = controller_owner(obj.get("metadata") or {})
        if key in table and table[key] == owner:
            return False
        table[key] = owner
        self._reindex(self._pods_by_owner.get((key[0], kind, key[1]), set()))
        return True

    def _delete_owner(self, key: tuple[str, str], table: dict[tuple[str, str], Owner], kind: str) -> bool:
        if key not in table:
            return False
        del table[key]
        self._reindex(self._pods_by_owner.get((key[0], kind, key[1]), set()))
        return True

    # -- services, nodes, namespaces -------------------------------------------------------------
    def _service_keys(self) -> set[tuple[str, str]]:
        return {(ns, name) for ns, services in self._services.items() for name in services}

    def _upsert_service(self, obj: Obj) -> bool:
        namespace, name = (intern(part) for part in _Store.key(obj))
        spec = obj.get("spec") or {}
        selector = tuple(sorted((spec.get("selector") or {}).items()))
        ips = tuple(
            normalize_ip(ip)
            for ip in (spec.get("clusterIPs") or [spec.get("clusterIP")])
            if ip and ip != "None"
        )
        services = self._services.setdefault(namespace, {})
        old = services.get(name)
        if old == (selector, ips):
            return False
        for ip in old[1] if old else ():
            self._service_ips.pop(ip, None)
        services[name] = (selector, ips)
        for ip in ips:
            self._service_ips[ip] = Endpoint(ip, namespace, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, name, UNKNOWN)
        if (old[0] if old else ()) != selector:
            self._reindex(self._pods_by_ns.get(namespace, set()))
        return True

    def _delete_service(self, key: tuple[str, str]) -> bool:
        services = self._services.get(key[0], {})
        old = services.pop(key[1], None)
        if old is None:
            return False
        if not services:
            del self._services[key[0]]
        for ip in old[1]:
            self._service_ips.pop(ip, None)
        if old[0]:
            self._reindex(self._pods_by_ns.get(key[0], set()))
        return True

    def _upsert_node(self, obj: Obj) -> bool:
        name = intern(_Store.key(obj)[1])
        labels = (obj.get("metadata") or {}).get("labels") or {}
        zone = intern(next((labels[z] for z in ZONE_LABELS if labels.get(z)), None))
        before = self._zones.get(name, UNKNOWN)
        self._zones[name] = zone
        if before == zone:
            return False
        self._reindex(k for k, p in self._pods.items() if p.node == name)
        return True

    def _delete_node(self, key: tuple[str, str]) -> bool:
        zone = self._zones.pop(key[1], None)
        if zone is None or zone == UNKNOWN:
            return False
        self._reindex(k for k, p in self._pods.items() if p.node == key[1])
        return True

    def _upsert_namespace(self, obj: Obj) -> bool:
        name = _Store.key(obj)[1]
        observed = ((obj.get("metadata") or {}).get("annotations") or {}).get(
            OBSERVE_ANNOTATION
        ) == OBSERVE_VALUE
        if observed == (name in self._observed_namespaces):
            return False
        if observed:
            self._observed_namespaces.add(intern(name))
        else:
            self._observed_namespaces.discard(name)
        return True

    def _delete_namespace(self, key: tuple[str, str]) -> bool:
        if key[1] not in self._observed_namespaces:
            return False
        self._observed_namespaces.discard(key[1])
        return True
