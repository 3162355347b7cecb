"""PersistentVolumeClaims on the node runner, as a cluster with local-path-provisioner has them.

Three parts of Kubernetes, each as small as the runner needs it:

* **Binding** (kube-controller-manager's PersistentVolume controller, static binding):
  :class:`VolumeBinder` binds a ``Pending`` claim to the volume it names (``spec.volumeName``)
  or to the smallest ``Available`` volume of its storage class whose access modes include the
  claim's, whose capacity covers the request and whose ``volumeMode`` is the same; binding
  writes ``PV.spec.claimRef``, ``PVC.spec.volumeName`` and both statuses ``Bound``. A claim no
  volume fits stays ``Pending``. (Dynamic provisioning is the provisioner's job: a test makes
  the volume local-path-provisioner would make, :func:`local_path_volume`.)
* **Scheduling** (kube-scheduler's VolumeBinding filter): :func:`unschedulable` keeps a pod
  whose claim is missing or not bound, or whose volume's node affinity excludes the node, off
  that node with the scheduler's own words; the pod stays ``Pending`` with ``PodScheduled``
  False and is scheduled once the claim is bound.
* **Mounting** (the kubelet): :func:`as_host_paths` turns each claim of a pod bound to a
  ``hostPath`` or ``local`` volume into a hostPath volume of that directory (``readOnly`` of
  the claim honoured). A claim that is not bound by then, a volume of another type (nfs, csi,
  ...), ``volumeMode: Block`` or a volume bound to another claim fails the pod
  (``UnsupportedPodSpec``) with a message naming the claim: never silently an empty directory.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from retina_lab.noderunner.client import ApiClient, ApiFailure
from retina_lab.noderunner.podspec import UnsupportedSpec
from retina_lab.noderunner.scheduling import node_selector_term_matches

Obj = dict[str, Any]
#: Where local-path-provisioner keeps its volumes (its default ``nodePathMap``).
LOCAL_PATH_BASE = "/opt/local-path-provisioner"
_UNITS = {
    "Ki": 1 << 10,
    "Mi": 1 << 20,
    "Gi": 1 << 30,
    "Ti": 1 << 40,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
}


def quantity(text: str | int) -> int:
    """Bytes of a storage quantity such as ``1Gi`` or ``500M``."""
    text = str(text)
    for suffix, factor in _UNITS.items():
        if text.endswith(suffix) and text[: -len(suffix)].isdigit():
            return int(text[: -len(suffix)]) * factor
    if text.isdigit():
        return int(text)
    raise ValueError(f"storage quantity {text!r} not understood")


def local_path_volume(name: str, node: str, path: str, capacity: str = "1Gi") -> Obj:
    """The PersistentVolume local-path-provisioner makes for a claim: a hostPath directory on one
    node (``DirectoryOrCreate``), pinned to that node, storage class ``local-path``, ``Delete``."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": name,
            "annotations": {"pv.kubernetes.io/provisioned-by": "rancher.io/local-path"},
        },
        "spec": {
            "capacity": {"storage": capacity},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": "local-path",
            "volumeMode": "Filesystem",
            "hostPath": {"path": path, "type": "DirectoryOrCreate"},
            "nodeAffinity": {
                "required": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}
                            ]
                        }
                    ]
                }
            },
        },
    }


# -- binding ------------------------------------------------------------------------------------
def _fits(pv: Obj, pvc: Obj) -> bool:
    spec, want = pv.get("spec") or {}, pvc.get("spec") or {}
    if (spec.get("storageClassName") or "") != (want.get("storageClassName") or ""):
        return False
    if (spec.get("volumeMode") or "Filesystem") != (want.get("volumeMode") or "Filesystem"):
        return False
    if not set(want.get("accessModes") or []) <= set(spec.get("accessModes") or []):
        return False
    request = ((want.get("resources") or {}).get("requests") or {}).get("storage", "0")
    return quantity((spec.get("capacity") or {}).get("storage", "0")) >= quantity(request)


class VolumeBinder:
    """The PersistentVolume controller's binding loop (static binding only)."""

    def __init__(self, api: ApiClient) -> None:
        self.api = api

    def sync(self) -> None:
        claims = [c for c in self.api.list("/api/v1/persistentvolumeclaims") if not _bound(c)]
        if not claims:
            return
        volumes = self.api.list("/api/v1/persistentvolumes")
        for pvc in claims:
            if (pvc["metadata"]).get("deletionTimestamp"):
                continue
            pv = self._volume_for(pvc, volumes)
            if pv is not None:
                self._bind(pv, pvc)
                pv.setdefault("spec", {})["claimRef"] = _claim_ref(pvc)  # taken for this round

    @staticmethod
    def _volume_for(pvc: Obj, volumes: list[Obj]) -> Obj | None:
        named = (pvc.get("spec") or {}).get("volumeName")
        if named:
            pv = next((v for v in volumes if v["metadata"]["name"] == named), None)
            ref = ((pv or {}).get("spec") or {}).get("claimRef")
            if pv is None or (ref and not _refers_to(ref, pvc)):
                return None
            return pv
        free = [v for v in volumes if not (v.get("spec") or {}).get("claimRef") and _fits(v, pvc)]
        free += [
            v
            for v in volumes
            if _refers_to((v.get("spec") or {}).get("claimRef") or {}, pvc) and _fits(v, pvc)
        ]  # pre-bound to this claim by the volume's claimRef
        free.sort(key=lambda v: quantity(v["spec"].get("capacity", {}).get("storage", "0")))
        return free[0] if free else None

    def _bind(self, pv: Obj, pvc: Obj) -> None:
        name, ns = pvc["metadata"]["name"], pvc["metadata"]["namespace"]
        pv_path = f"/api/v1/persistentvolumes/{pv['metadata']['name']}"
        pvc_path = f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{name}"
        try:
            self.api.patch(pv_path, {"spec": {"claimRef": _claim_ref(pvc)}})
            self.api.patch(f"{pv_path}/status", {"status": {"phase": "Bound"}})
            self.api.patch(
                pvc_path,
                {
                    "metadata": {"annotations": {"pv.kubernetes.io/bind-completed": "yes"}},
                    "spec": {"volumeName": pv["metadata"]["name"]},
                },
            )
            self.api.patch(
                f"{pvc_path}/status",
                {
                    "status": {
                        "phase": "Bound",
                        "accessModes": pv["spec"].get("accessModes") or [],
                        "capacity": pv["spec"].get("capacity") or {},
                    }
                },
            )
        except ApiFailure:
            pass  # deleted meanwhile, or a conflict: the next round sees the new state


def _bound(pvc: Obj) -> bool:
    return (pvc.get("status") or {}).get("phase") == "Bound"


def _claim_ref(pvc: Obj) -> Obj:
    meta = pvc["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "namespace": meta["namespace"],
        "name": meta["name"],
        "uid": meta["uid"],
    }


def _refers_to(ref: Mapping[str, Any], pvc: Obj) -> bool:
    meta = pvc["metadata"]
    return (
        ref.get("namespace") == meta["namespace"]
        and ref.get("name") == meta["name"]
        and ref.get("uid") in (None, "", meta["uid"])
    )


# -- lookups ------------------------------------------------------------------------------------
def _claims_of(pod: Obj) -> list[tuple[Obj, str]]:
    """(volume, claim name) of each persistentVolumeClaim volume of the pod."""
    return [
        (v, v["persistentVolumeClaim"]["claimName"])
        for v in pod["spec"].get("volumes") or []
        if "persistentVolumeClaim" in v
    ]


def _resolve(api: ApiClient, namespace: str, claim: str) -> tuple[Obj | None, Obj | None]:
    pvc = api.get(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{claim}")
    if pvc is None or not _bound(pvc) or not (pvc.get("spec") or {}).get("volumeName"):
        return pvc, None
    return pvc, api.get(f"/api/v1/persistentvolumes/{pvc['spec']['volumeName']}")


def _node_allows(pv: Obj, node: Obj) -> bool:
    required = (((pv.get("spec") or {}).get("nodeAffinity") or {}).get("required") or {}).get(
        "nodeSelectorTerms"
    )
    return not required or any(node_selector_term_matches(t, node) for t in required)


# -- scheduling ---------------------------------------------------------------------------------
def unschedulable(pod: Obj, node: Obj, api: ApiClient) -> str | None:
    """Why the pod's claims keep it off ``node`` (kube-scheduler's words), or None."""
    namespace = pod["metadata"]["namespace"]
    for _, claim in _claims_of(pod):
        pvc, pv = _resolve(api, namespace, claim)
        if pvc is None:
            return f'persistentvolumeclaim "{claim}" not found'
        if (pvc["metadata"]).get("deletionTimestamp"):
            return f'persistentvolumeclaim "{claim}" is being deleted'
        if pv is None:
            return "pod has unbound immediate PersistentVolumeClaims"
        if not _node_allows(pv, node):
            return "node(s) had volume node affinity conflict"
    return None


# -- mounting -----------------------------------------------------------------------------------
def as_host_paths(pod: Obj, api: ApiClient) -> Obj:
    """The pod with each claim volume replaced by the hostPath of its bound volume (a copy)."""
    claims = _claims_of(pod)
    if not claims:
        return pod
    node = api.get(f"/api/v1/nodes/{pod['spec']['nodeName']}") or {"metadata": {"name": "", "labels": {}}}
    pod = copy.deepcopy(pod)
    namespace = pod["metadata"]["namespace"]
    by_name = {v["name"]: v for v in pod["spec"]["volumes"]}
    for volume, claim in claims:
        where = f"volume {volume['name']}: persistentVolumeClaim {claim!r}"
        pvc, pv = _resolve(api, namespace, claim)
        if pvc is None:
            raise UnsupportedSpec(f"{where} does not exist in namespace {namespace}")
        if pv is None:
            phase = (pvc.get("status") or {}).get("phase") or "Pending"
            raise UnsupportedSpec(f"{where} is not bound to a PersistentVolume (phase {phase})")
        pv_name, spec = pv["metadata"]["name"], pv.get("spec") or {}
        if not _refers_to(spec.get("claimRef") or {}, pvc):
            raise UnsupportedSpec(f"{where}: PersistentVolume {pv_name} is bound to another claim")
        if (spec.get("volumeMode") or "Filesystem") != "Filesystem":
            raise UnsupportedSpec(f"{where}: PersistentVolume {pv_name} has volumeMode {spec['volumeMode']}")
        if not _node_allows(pv, node):
            raise UnsupportedSpec(
                f"{where}: PersistentVolume {pv_name} is pinned to other nodes (nodeAffinity)"
            )
        if "hostPath" in spec:
            source = {"path": spec["hostPath"]["path"], "type": spec["hostPath"].get("type") or ""}
        elif "local" in spec:
            source = {"path": spec["local"]["path"], "type": "Directory"}  # a local volume must exist
        else:
            kinds = sorted(
                set(spec)
                - {
                    "capacity",
                    "accessModes",
                    "claimRef",
                    "persistentVolumeReclaimPolicy",
                    "storageClassName",
                    "volumeMode",
                    "nodeAffinity",
                    "mountOptions",
                }
            )
            raise UnsupportedSpec(
                f"{where}: PersistentVolume {pv_name} is {kinds}; the node runner mounts hostPath "
                "and local volumes (as local-path-provisioner makes them)"
            )
        if spec.get("mountOptions"):
            raise UnsupportedSpec(f"{where}: PersistentVolume {pv_name}: mountOptions are not supported")
        by_name[volume["name"]] = {"name": volume["name"], "hostPath": source}
        if volume["persistentVolumeClaim"].get("readOnly"):
            # readOnly on the claim source makes every mount of it read-only, as the kubelet does
            for container in pod["spec"].get("initContainers", []) + pod["spec"]["containers"]:
                for mount in container.get("volumeMounts") or []:
                    if mount["name"] == volume["name"]:
                        mount["readOnly"] = True
    pod["spec"]["volumes"] = [by_name[v["name"]] for v in pod["spec"]["volumes"]]
    return pod
