"""The Kubernetes API emulator, exercised with the real ``kubernetes`` client over HTTP."""

from __future__ import annotations

import json
import socket
import threading
import time

import kubernetes
import pytest
import requests
from kubernetes.client.rest import ApiException
from kubernetes.dynamic import DynamicClient

from retina_lab.kube import KubeEmulator, label_selector_matches, strategic_merge_patch
from retina_lab.manifests import ManifestError, validate_manifest
from tests.kube_fixtures import custom_resource_definition

POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "web", "labels": {"app": "web", "tier": "front"}},
    "spec": {"nodeName": "node-1", "containers": [{"name": "web", "image": "nginx"}]},
}

CRD = custom_resource_definition(
    "example.com",
    "Widget",
    "widgets",
    status_subresource=True,
    schema={
        "type": "object",
        "properties": {
            "spec": {"type": "object", "properties": {"size": {"type": "integer", "minimum": 0}}},
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        },
    },
)


def pod(name: str, node: str, ns: str = "default", **labels: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
    }


def test_crud_with_resource_versions(kube_api_client) -> None:
    core = kubernetes.client.CoreV1Api(kube_api_client)
    created = core.create_namespaced_pod("default", POD)
    assert created.metadata.uid and created.metadata.resource_version
    assert core.read_namespaced_pod("web", "default").spec.node_name == "node-1"

    with pytest.raises(ApiException) as exc:
        core.create_namespaced_pod("default", POD)
    assert exc.value.status == 409

    with pytest.raises(ApiException) as exc:
        core.create_namespaced_pod("nowhere", POD)
    assert exc.value.status == 404 and "nowhere" in exc.value.body

    # Strategic merge keeps the existing container and adds one.
    patched = core.patch_namespaced_pod(
        "web",
        "default",
        {
            "metadata": {"labels": {"tier": None, "version": "2"}},
            "spec": {"containers": [{"name": "sidecar", "image": "envoy"}]},
        },
    )
    assert patched.metadata.labels == {"app": "web", "version": "2"}
    assert [c.name for c in patched.spec.containers] == ["web", "sidecar"]
    assert int(patched.metadata.resource_version) > int(created.metadata.resource_version)

    # Replace with a stale resourceVersion is a conflict; with the current one it works.
    stale = kube_api_client.sanitize_for_serialization(created)
    with pytest.raises(ApiException) as exc:
        core.replace_namespaced_pod("web", "default", stale)
    assert exc.value.status == 409
    current = kube_api_client.sanitize_for_serialization(core.read_namespaced_pod("web", "default"))
    current["metadata"]["labels"] = {"replaced": "yes"}
    assert core.replace_namespaced_pod("web", "default", current).metadata.labels == {"replaced": "yes"}

    core.delete_namespaced_pod("web", "default")
    with pytest.raises(ApiException) as exc:
        core.read_namespaced_pod("web", "default")
    assert exc.value.status == 404


def test_label_and_field_selectors(kube_emulator, kube_api_client) -> None:
    kube_emulator.seed(
        [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}},
            pod("a", "node-1", app="web"),
            pod("b", "node-2", app="web"),
            pod("c", "node-1", "other", app="db"),
            pod("d", "node-1", "other"),
        ]
    )
    core = kubernetes.client.CoreV1Api(kube_api_client)

    def names(result) -> list[str]:
        return sorted(p.metadata.name for p in result.items)

    assert names(core.list_namespaced_pod("default", label_selector="app=web")) == ["a", "b"]
    assert names(core.list_pod_for_all_namespaces(field_selector="spec.nodeName=node-1")) == ["a", "c", "d"]
    assert names(core.list_pod_for_all_namespaces(label_selector="app in (web,db),app!=web")) == ["c"]
    assert names(core.list_pod_for_all_namespaces(label_selector="!app")) == ["d"]
    assert names(
        core.list_pod_for_all_namespaces(
            label_selector="app", field_selector="spec.nodeName=node-1,metadata.namespace=default"
        )
    ) == ["a"]
    assert label_selector_matches("x notin (1,2),y", {"x": "3", "y": ""})


def test_status_subresource(kube_api_client) -> None:
    batch = kubernetes.client.BatchV1Api(kube_api_client)
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "j"},
        "spec": {
            "template": {
                "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}
            }
        },
        "status": {"succeeded": 5},
    }
    assert batch.create_namespaced_job("default", job).status is None  # status is dropped on create
    batch.patch_namespaced_job("j", "default", {"status": {"active": 1}})  # ignored on main resource
    assert batch.read_namespaced_job("j", "default").status is None
    batch.patch_namespaced_job_status("j", "default", {"status": {"active": 1}})
    assert batch.read_namespaced_job_status("j", "default").status.active == 1


def test_watch_resume_and_gone(kube_emulator, kube_api_client) -> None:
    core = kubernetes.client.CoreV1Api(kube_api_client)
    listed = core.list_namespaced_pod("default")
    start = listed.metadata.resource_version

    core.create_namespaced_pod("default", pod("p1", "node-1", app="x"))
    core.patch_namespaced_pod("p1", "default", {"metadata": {"labels": {"app": "y"}}})
    middle = core.read_namespaced_pod("p1", "default").metadata.resource_version
    core.delete_namespaced_pod("p1", "default")

    def events(rv: str, **kw) -> list[tuple[str, str]]:
        w = kubernetes.watch.Watch()
        got = [
            (e["type"], e["object"].metadata.labels.get("app"))
            for e in w.stream(
                core.list_namespaced_pod, "default", resource_version=rv, timeout_seconds=1, **kw
            )
        ]
        return got

    assert events(start) == [("ADDED", "x"), ("MODIFIED", "y"), ("DELETED", "y")]
    assert events(middle) == [("DELETED", "y")]  # resumed
    # Selector transitions: the object leaves the selection when its label changes.
    assert events(start, label_selector="app=x") == [("ADDED", "x"), ("DELETED", "y")]

    kube_emulator.compact()
    with pytest.raises(ApiException) as exc:
        events(start)
    assert exc.value.status == 410


def test_live_watch_sees_changes_from_another_thread(kube_api_client) -> None:
    core = kubernetes.client.CoreV1Api(kube_api_client)
    rv = core.list_namespaced_pod("default").metadata.resource_version
    seen: list[str] = []

    def watch() -> None:
        w = kubernetes.watch.Watch()
        for event in w.stream(core.list_namespaced_pod, "default", resource_version=rv, timeout_seconds=10):
            seen.append(event["object"].metadata.name)
            if len(seen) == 2:
                w.stop()

    thread = threading.Thread(target=watch)
    thread.start()
    core.create_namespaced_pod("default", pod("w1", "n"))
    core.create_namespaced_pod("default", pod("w2", "n"))
    thread.join(10)
    assert not thread.is_alive() and seen == ["w1", "w2"]


def test_restart_keeps_port_and_state(kube_emulator, kube_api_client) -> None:
    core = kubernetes.client.CoreV1Api(kube_api_client)
    core.create_namespaced_config_map("default", {"metadata": {"name": "cm"}, "data": {"k": "v"}})
    port = kube_emulator.port
    kube_emulator.stop()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0  # really down
    kube_emulator.start()
    assert kube_emulator.port == port
    deadline = time.monotonic() + 10
    while True:  # the client reconnects on its own
        try:
            assert core.read_namespaced_config_map("cm", "default").data == {"k": "v"}
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    core.create_namespaced_config_map("default", {"metadata": {"name": "cm2"}})
    assert [c["metadata"]["name"] for c in kube_emulator.objects("ConfigMap", "default")] == ["cm", "cm2"]


def test_crd_custom_resources_and_discovery(kube_emulator, kube_api_client) -> None:
    ext = kubernetes.client.ApiextensionsV1Api(kube_api_client)
    custom = kubernetes.client.CustomObjectsApi(kube_api_client)
    ext.create_custom_resource_definition(CRD)
    widget = {
        "apiVersion": "example.com/v1",
        "kind": "Widget",
        "metadata": {"name": "w"},
        "spec": {"size": 3},
    }
    custom.create_namespaced_custom_object("example.com", "v1", "default", "widgets", widget)
    bad = {**widget, "metadata": {"name": "bad"}, "spec": {"size": -1}}
    with pytest.raises(ApiException) as exc:
        custom.create_namespaced_custom_object("example.com", "v1", "default", "widgets", bad)
    assert exc.value.status == 422 and "spec.size" in exc.value.body

    custom.patch_namespaced_custom_object_status(
        "example.com", "v1", "default", "widgets", "w", {"status": {"phase": "Ready"}}
    )
    dyn = DynamicClient(kube_api_client)
    widgets = dyn.resources.get(api_version="example.com/v1", kind="Widget")
    got = widgets.get(namespace="default", name="w")
    assert got.spec.size == 3 and got.status.phase == "Ready"
    jobs = dyn.resources.get(api_version="batch/v1", kind="Job")
    assert jobs.namespaced and jobs.get(namespace="default").items == []

    # Strategic merge is refused for custom resources, as by the real API server.
    response = requests.patch(
        f"{kube_emulator.url}/apis/example.com/v1/namespaces/default/widgets/w",
        json={"spec": {"size": 4}},
        timeout=5,
        verify=str(kube_emulator.ca_path),
        headers={
            "Content-Type": "application/strategic-merge-patch+json",
            "Authorization": f"Bearer {kube_emulator.token}",
        },
    )
    assert response.status_code == 415

    ext.delete_custom_resource_definition("widgets.example.com")
    with pytest.raises(ApiException) as exc:
        custom.list_namespaced_custom_object("example.com", "v1", "default", "widgets")
    assert exc.value.status == 404


def test_owner_references_are_garbage_collected(kube_api_client) -> None:
    core = kubernetes.client.CoreV1Api(kube_api_client)
    owner = core.create_namespaced_config_map("default", {"metadata": {"name": "owner"}})
    core.create_namespaced_secret(
        "default",
        {
            "metadata": {
                "name": "child",
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
                ],
            }
        },
    )
    core.delete_namespaced_config_map("owner", "default")
    assert [s.metadata.name for s in core.list_namespaced_secret("default").items] == []


def test_finalizers_delay_deletion(kube_api_client) -> None:
    core = kubernetes.client.CoreV1Api(kube_api_client)
    core.create_namespaced_config_map("default", {"metadata": {"name": "f", "finalizers": ["x/y"]}})
    core.delete_namespaced_config_map("f", "default")
    assert core.read_namespaced_config_map("f", "default").metadata.deletion_timestamp is not None
    core.patch_namespaced_config_map("f", "default", {"metadata": {"finalizers": None}})
    with pytest.raises(ApiException) as exc:
        core.read_namespaced_config_map("f", "default")
    assert exc.value.status == 404


def test_strategic_merge_patch_by_key() -> None:
    merged = strategic_merge_patch(
        {"env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
        {"env": [{"name": "B", "value": "3"}, {"name": "A", "$patch": "delete"}]},
    )
    assert merged == {"env": [{"name": "B", "value": "3"}]}


def test_manifest_validation() -> None:
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "j"},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}
            },
        },
    }
    validate_manifest(job)
    job["spec"]["template"]["spec"]["containers"][0]["securityContext"] = {"capabilitiez": {}}
    with pytest.raises(ManifestError) as exc:
        validate_manifest(job)
    assert "capabilitiez" in str(exc.value) and "1.28" in str(exc.value) and "1.31" in str(exc.value)
    validate_manifest(
        {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 1}},
        crds=[CRD],
    )
    with pytest.raises(ManifestError, match=r"spec\.size"):
        validate_manifest(
            {
                "apiVersion": "example.com/v1",
                "kind": "Widget",
                "metadata": {"name": "w"},
                "spec": {"size": "big"},
            },
            crds=[CRD],
        )


def test_emulator_standalone_context_manager() -> None:
    with KubeEmulator() as kube:
        client = kubernetes.config.new_client_from_config(config_file=str(kube.kubeconfig_path))
        try:
            assert kubernetes.client.VersionApi(client).get_code().minor == "31"
            names = [n.metadata.name for n in kubernetes.client.CoreV1Api(client).list_namespace().items]
            assert names == ["default", "kube-public", "kube-system"]
        finally:
            client.close()


def test_ansible_kubernetes_core_k8s_works_against_it(kube_emulator, tmp_path) -> None:
    """Ansible's k8s module (dynamic client + discovery) applies, updates and is idempotent."""
    import subprocess
    import sys
    from pathlib import Path

    crd_file = Path(__file__).parents[2] / "collections/retina/roles/agent/files/crds/retina.sh_captures.yaml"
    cm = "{apiVersion: v1, kind: ConfigMap, metadata: {name: cm, namespace: default}, data: {a: 'VALUE'}}"
    task = "    - kubernetes.core.k8s: {{kubeconfig: {kc}, state: present, {what}}}\n      register: r{n}\n"
    kc = kube_emulator.kubeconfig_path
    play = tmp_path / "play.yml"
    play.write_text(
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n"
        + task.format(kc=kc, what=f"src: {crd_file}", n=1)
        + task.format(kc=kc, what="definition: " + cm.replace("VALUE", "1"), n=2)
        + task.format(kc=kc, what="definition: " + cm.replace("VALUE", "1"), n=3)
        + task.format(kc=kc, what="definition: " + cm.replace("VALUE", "2"), n=4)
        + "    - assert: {that: [r1.changed, r2.changed, not r3.changed, r4.changed]}\n"
    )
    bindir = Path(sys.executable).parent
    proc = subprocess.run(
        [str(bindir / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(play)],
        capture_output=True,
        text=True,
        timeout=300,
        env={
            "PATH": f"{bindir}:/usr/bin:/bin",
            "HOME": str(tmp_path),
            "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
        },
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert [o["data"] for o in kube_emulator.objects("ConfigMap", "default")] == [{"a": "2"}]
    assert [o["metadata"]["name"] for o in kube_emulator.objects("CustomResourceDefinition")] == [
        "captures.retina.sh"
    ]


def test_crd_stays_terminating_while_an_instance_has_a_finalizer(kube_emulator, kube_api_client) -> None:
    ext = kubernetes.client.ApiextensionsV1Api(kube_api_client)
    custom = kubernetes.client.CustomObjectsApi(kube_api_client)
    ext.create_custom_resource_definition(CRD)
    for name, finalizers in (("held", ["example.com/cleanup"]), ("free", [])):
        custom.create_namespaced_custom_object(
            "example.com",
            "v1",
            "default",
            "widgets",
            {
                "apiVersion": "example.com/v1",
                "kind": "Widget",
                "metadata": {"name": name, "finalizers": finalizers},
                "spec": {"size": 1},
            },
        )

    ext.delete_custom_resource_definition("widgets.example.com")
    crd = ext.read_custom_resource_definition("widgets.example.com")
    assert crd.metadata.deletion_timestamp is not None
    assert crd.metadata.finalizers == ["customresourcecleanup.apiextensions.k8s.io"]
    assert [(c.type, c.status) for c in crd.status.conditions] == [("Terminating", "True")]
    # Instances are deleted: the free one is gone, the held one waits for its finalizer.
    [held] = custom.list_namespaced_custom_object("example.com", "v1", "default", "widgets")["items"]
    assert held["metadata"]["name"] == "held" and held["metadata"]["deletionTimestamp"]
    with pytest.raises(ApiException) as exc:
        custom.create_namespaced_custom_object(
            "example.com",
            "v1",
            "default",
            "widgets",
            {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "late"}},
        )
    assert exc.value.status == 405 and "terminating" in exc.value.body

    # The finalizer's owner lets go: the instance goes, and with the last instance the CRD.
    custom.patch_namespaced_custom_object(
        "example.com", "v1", "default", "widgets", "held", {"metadata": {"finalizers": None}}
    )
    with pytest.raises(ApiException) as exc:
        ext.read_custom_resource_definition("widgets.example.com")
    assert exc.value.status == 404
    assert kube_emulator.objects("CustomResourceDefinition") == []


def test_subresource_handlers_are_served_after_rbac(kube_emulator, kube_api_client) -> None:
    import aiohttp.web

    async def log(request, namespace, name, user):
        return aiohttp.web.Response(text=f"log of {namespace}/{name} for {user.name}\n")

    kube_emulator.add_subresource("", "pods", "log", log)
    core = kubernetes.client.CoreV1Api(kube_api_client)
    core.create_namespaced_pod("default", POD)
    assert core.read_namespaced_pod_log("web", "default") == "log of default/web for kubernetes-admin\n"
    with pytest.raises(ApiException) as exc:
        core.read_namespaced_pod_log("nope", "default")
    assert exc.value.status == 404
    nobody = kubernetes.config.new_client_from_config(config_file=str(kube_emulator.kubeconfig_for_user("x")))
    with pytest.raises(ApiException) as exc:
        kubernetes.client.CoreV1Api(nobody).read_namespaced_pod_log("web", "default")
    assert exc.value.status == 403
    assert json.loads(exc.value.body)["message"] == (
        'pods "web" is forbidden: User "x" cannot get resource "pods/log" in API group "" '
        'in the namespace "default"'
    )


def test_held_requests_wait_for_release_and_others_are_served(kube_emulator, kube_api_client) -> None:
    """``held(prefix)``: a slow API server for one resource; the rest answers meanwhile."""
    core = kubernetes.client.CoreV1Api(kube_api_client)
    core.create_namespaced_pod("default", pod("web", "node-1"))
    listed: list[list[str]] = []
    with kube_emulator.held("/api/v1/namespaces/default/pods") as held:
        lister = threading.Thread(
            target=lambda: listed.append([p.metadata.name for p in core.list_namespaced_pod("default").items])
        )
        lister.start()
        held.wait_requests(1)
        assert [n.metadata.name for n in core.list_namespace().items] == [
            "default",
            "kube-public",
            "kube-system",
        ]
        lister.join(0.5)
        assert lister.is_alive() and listed == [], "the held list was answered before release"
    lister.join(10)
    assert listed == [["web"]]
    assert [p.metadata.name for p in core.list_namespaced_pod("default").items] == ["web"]  # not held now
