"""A container's environment as the kubelet builds it: values, the downward API, Secret and
ConfigMap keys, ``envFrom``, and the ``KUBERNETES_SERVICE_*`` variables of in-cluster config."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from retina_lab.noderunner.podspec import UnsupportedSpec

Obj = dict[str, Any]
#: ``lookup(kind, namespace, name)`` -> the object's decoded data (``None``: it does not exist).
Lookup = Callable[[str, str, str], "Mapping[str, str] | None"]
_META_KEY = re.compile(r"^metadata\.(labels|annotations)\['([^']+)'\]$")


def field_value(pod: Obj, path: str) -> str:
    """A downward-API ``fieldRef.fieldPath`` of a (scheduled, started) pod."""
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.podIP": status.get("podIP"),
        "status.hostIP": status.get("hostIP"),
        "status.podIPs": ",".join(i["ip"] for i in status.get("podIPs") or []),
        "status.hostIPs": ",".join(i["ip"] for i in status.get("hostIPs") or []),
    }
    if path in simple:
        if simple[path] is None:
            raise UnsupportedSpec(f"fieldRef {path}: the pod has no value for it yet")
        return str(simple[path])
    m = _META_KEY.match(path)
    if m:
        return str((meta.get(m[1]) or {}).get(m[2], ""))
    if path in ("metadata.labels", "metadata.annotations"):
        items = meta.get(path.split(".")[1]) or {}
        return "\n".join(f'{k}="{v}"' for k, v in sorted(items.items()))
    raise UnsupportedSpec(f"fieldRef {path!r}: not a downward-API field the node runner knows")


def _key_ref(ref: Mapping[str, Any], kind: str, namespace: str, lookup: Lookup, where: str) -> str | None:
    data = lookup(kind, namespace, ref["name"])
    optional = bool(ref.get("optional"))
    if data is None:
        if optional:
            return None
        raise UnsupportedSpec(f"{where}: {kind} {namespace}/{ref['name']} not found")
    if ref["key"] not in data:
        if optional:
            return None
        raise UnsupportedSpec(f"{where}: {kind} {namespace}/{ref['name']} has no key {ref['key']!r}")
    return data[ref["key"]]


def container_env(pod: Obj, container: Obj, lookup: Lookup, service_env: Mapping[str, str]) -> dict[str, str]:
    """The environment of ``container`` (later entries win, as in Kubernetes)."""
    namespace = pod["metadata"]["namespace"]
    where = f"container {container['name']}"
    env: dict[str, str] = dict(service_env)
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            if key in source:
                data = lookup(kind, namespace, source[key]["name"])
                if data is None and not source[key].get("optional"):
                    raise UnsupportedSpec(f"{where}.envFrom: {kind} {source[key]['name']} not found")
                env.update({prefix + k: v for k, v in (data or {}).items()})
    for item in container.get("env") or []:
        name, value_from = item["name"], item.get("valueFrom")
        here = f"{where}.env[{name}]"
        if value_from is None:
            env[name] = str(item.get("value", ""))
        elif "fieldRef" in value_from:
            env[name] = field_value(pod, value_from["fieldRef"]["fieldPath"])
        elif "secretKeyRef" in value_from:
            value = _key_ref(value_from["secretKeyRef"], "Secret", namespace, lookup, here)
            if value is not None:
                env[name] = value
        elif "configMapKeyRef" in value_from:
            value = _key_ref(value_from["configMapKeyRef"], "ConfigMap", namespace, lookup, here)
            if value is not None:
                env[name] = value
        else:
            raise UnsupportedSpec(
                f"{here}: valueFrom {sorted(value_from)} is not supported by the node "
                "runner (fieldRef, secretKeyRef, configMapKeyRef are)"
            )
    return env


def service_env(host: str, port: int) -> dict[str, str]:
    """What the kubelet sets for the ``kubernetes`` Service: in-cluster config reads these."""
    return {
        "KUBERNETES_SERVICE_HOST": host,
        "KUBERNETES_SERVICE_PORT": str(port),
        "KUBERNETES_SERVICE_PORT_HTTPS": str(port),
        "KUBERNETES_PORT": f"tcp://{host}:{port}",
        "KUBERNETES_PORT_443_TCP": f"tcp://{host}:{port}",
        "KUBERNETES_PORT_443_TCP_PROTO": "tcp",
        "KUBERNETES_PORT_443_TCP_PORT": str(port),
        "KUBERNETES_PORT_443_TCP_ADDR": host,
    }
