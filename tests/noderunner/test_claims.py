"""PersistentVolumeClaims in the node runner (``retina_lab.noderunner.claims``) against the API
emulator over HTTPS, without containers: the PV controller's binding, the scheduler's volume
filter in the scheduler's words, and the kubelet's mount of a bound claim (or a failure naming
the claim). Containers writing to and reading from a claim: tests/capture/test_pvc_download.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from retina_lab.kube import KubeEmulator
from retina_lab.noderunner.claims import VolumeBinder, as_host_paths, local_path_volume, unschedulable
from retina_lab.noderunner.client import ApiClient
from retina_lab.noderunner.podspec import UnsupportedSpec

NS = "claims"
NODE = {"metadata": {"name": "node-a", "labels": {"kubernetes.io/hostname": "node-a"}}}
OTHER = {"metadata": {"name": "node-b", "labels": {"kubernetes.io/hostname": "node-b"}}}


@pytest.fixture
def api(kube_emulator: KubeEmulator) -> Iterator[ApiClient]:
    kube_emulator.seed(
        [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
            {"apiVersion": "v1", "kind": "Node", **NODE},
        ]
    )
    verify = str(kube_emulator.ca_path) if kube_emulator.ca_path else True
    yield ApiClient(kube_emulator.url, kube_emulator.token, verify=verify)


def claim(name: str, size: str = "1Gi", storage_class: str = "local-path", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": storage_class,
            "resources": {"requests": {"storage": size}},
            **spec,
        },
    }


def pod(*claims: tuple[str, bool]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": NS},
        "spec": {
            "nodeName": "node-a",
            "containers": [
                {
                    "name": "c",
                    "image": "img",
                    "volumeMounts": [{"name": f"v{i}", "mountPath": f"/m{i}"} for i in range(len(claims))],
                }
            ],
            "volumes": [
                {"name": f"v{i}", "persistentVolumeClaim": {"claimName": name, "readOnly": ro}}
                for i, (name, ro) in enumerate(claims)
            ],
        },
    }


def phase(api: ApiClient, name: str) -> tuple[str | None, str | None]:
    pvc = api.get(f"/api/v1/namespaces/{NS}/persistentvolumeclaims/{name}") or {}
    return (pvc.get("status") or {}).get("phase"), (pvc.get("spec") or {}).get("volumeName")


def test_claims_bind_as_the_volume_controller_binds_them(api: ApiClient, tmp_path) -> None:
    for name, size in (("big", "10Gi"), ("small", "2Gi")):
        api.create("/api/v1/persistentvolumes", local_path_volume(name, "node-a", str(tmp_path / name), size))
    api.create("/api/v1/persistentvolumes", local_path_volume("named", "node-a", str(tmp_path / "n"), "5Gi"))
    for body in (
        claim("fits", "1Gi"),  # the smallest volume that holds it
        claim("too-big", "50Gi"),  # none holds it: stays Pending
        claim("other-class", "1Gi", storage_class="nfs"),  # no volume of that class
        claim("pinned", "1Gi", volumeName="named"),  # the volume it names, even if larger
    ):
        api.create(f"/api/v1/namespaces/{NS}/persistentvolumeclaims", body)
    VolumeBinder(api).sync()
    assert phase(api, "fits") == ("Bound", "small")
    assert phase(api, "pinned") == ("Bound", "named")
    assert phase(api, "too-big") == (None, None)
    assert phase(api, "other-class") == (None, None)
    small = api.get("/api/v1/persistentvolumes/small")
    assert small["status"]["phase"] == "Bound"
    assert small["spec"]["claimRef"]["name"] == "fits" and small["spec"]["claimRef"]["namespace"] == NS
    # a later volume that fits binds the waiting claim on the next round
    api.create("/api/v1/persistentvolumes", local_path_volume("huge", "node-a", str(tmp_path / "h"), "64Gi"))
    VolumeBinder(api).sync()
    assert phase(api, "too-big") == ("Bound", "huge")
    assert api.get("/api/v1/persistentvolumes/big")["spec"].get("claimRef") is None


def test_the_scheduler_keeps_pods_of_unbound_claims_pending_in_its_own_words(
    api: ApiClient, tmp_path
) -> None:
    assert unschedulable(pod(("missing", False)), NODE, api) == 'persistentvolumeclaim "missing" not found'
    api.create(f"/api/v1/namespaces/{NS}/persistentvolumeclaims", claim("data"))
    assert (
        unschedulable(pod(("data", False)), NODE, api) == "pod has unbound immediate PersistentVolumeClaims"
    )
    api.create("/api/v1/persistentvolumes", local_path_volume("pv-data", "node-a", str(tmp_path / "d")))
    VolumeBinder(api).sync()
    assert unschedulable(pod(("data", False)), NODE, api) is None
    assert unschedulable(pod(("data", False)), OTHER, api) == "node(s) had volume node affinity conflict"


def test_the_kubelet_mounts_the_bound_volume_or_fails_naming_the_claim(api: ApiClient, tmp_path) -> None:
    api.create(f"/api/v1/namespaces/{NS}/persistentvolumeclaims", claim("data"))
    with pytest.raises(UnsupportedSpec, match=r"persistentVolumeClaim 'data' is not bound .*phase Pending"):
        as_host_paths(pod(("data", False)), api)
    with pytest.raises(
        UnsupportedSpec, match=r"persistentVolumeClaim 'gone' does not exist in namespace claims"
    ):
        as_host_paths(pod(("gone", False)), api)
    api.create("/api/v1/persistentvolumes", local_path_volume("pv-data", "node-a", str(tmp_path / "d")))
    VolumeBinder(api).sync()
    mounted = as_host_paths(pod(("data", True)), api)
    assert mounted["spec"]["volumes"] == [
        {"name": "v0", "hostPath": {"path": str(tmp_path / "d"), "type": "DirectoryOrCreate"}}
    ]
    # readOnly on the claim makes the mount read-only even where the mount does not say so
    assert mounted["spec"]["containers"][0]["volumeMounts"][0]["readOnly"] is True

    # a volume the runner cannot mount fails the pod naming it, never an empty directory
    nfs = local_path_volume("pv-nfs", "node-a", "/unused")
    del nfs["spec"]["hostPath"]
    nfs["spec"]["nfs"] = {"server": "nfs.example", "path": "/exports/a"}
    nfs["spec"]["storageClassName"] = "nfs"
    api.create("/api/v1/persistentvolumes", nfs)
    api.create(f"/api/v1/namespaces/{NS}/persistentvolumeclaims", claim("shared", storage_class="nfs"))
    VolumeBinder(api).sync()
    with pytest.raises(UnsupportedSpec, match=r"'shared': PersistentVolume pv-nfs is \['nfs'\]"):
        as_host_paths(pod(("data", False), ("shared", False)), api)
