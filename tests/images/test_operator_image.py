"""The operator image run as the rendered Deployment declares (non-root, read-only root, no
capabilities), against the Kubernetes API emulator over real HTTP: a Capture becomes Jobs.
And the image names the manifests use all come from deploy/images.yaml."""

from __future__ import annotations

import copy
import json
import shutil
import time
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml

from images.names import image_refs
from images.podman import podman
from retina_capture.jobs import build_job
from retina_capture.spec import CaptureSpec
from retina_lab.kube import KubeEmulator
from tests.images.conftest import Containers
from tests.images.podspec import podman_run_argv
from tests.kube_fixtures import small_cluster

CRD_FILE = Path(__file__).parents[2] / "collections/retina/roles/agent/files/crds/retina.sh_captures.yaml"
KUBECONFIG_DIR = "/etc/retina-kube"


def test_rendered_manifests_name_the_images_of_deploy_images_yaml(rendered_agent: dict[str, Any]) -> None:
    refs = image_refs()
    pod = rendered_agent["DaemonSet/retina-agent"]["spec"]["template"]["spec"]
    assert {c["image"] for c in pod.get("initContainers", []) + pod["containers"]} == {refs["agent"]}
    operator = rendered_agent["Deployment/retina-operator"]["spec"]["template"]["spec"]
    assert {c["image"] for c in operator["containers"]} == {refs["operator"]}


def test_capture_jobs_default_to_the_agent_image() -> None:
    job = build_job(CaptureSpec(name="c", namespace="default", host_path="x"), "node-1")
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == image_refs()["agent"]


def _operator_pod(rendered_agent: dict[str, Any], kubeconfig_dir: Path) -> dict[str, Any]:
    """The Deployment's pod spec plus a kubeconfig (in a cluster: the service account token)."""
    pod = copy.deepcopy(rendered_agent["Deployment/retina-operator"]["spec"]["template"]["spec"])
    container = pod["containers"][0]
    pod["volumes"].append({"name": "kubeconfig", "hostPath": {"path": str(kubeconfig_dir)}})
    container["volumeMounts"].append({"name": "kubeconfig", "mountPath": KUBECONFIG_DIR, "readOnly": True})
    container["env"].append({"name": "KUBECONFIG", "value": f"{KUBECONFIG_DIR}/kubeconfig"})
    return pod


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_operator_image_turns_a_capture_into_jobs(
    built_images: dict[str, str], rendered_agent: dict[str, Any], containers: Containers, tmp_path: Path
) -> None:
    image = built_images["operator"]
    user = podman("image", "inspect", "--format", "{{.Config.User}}", image).stdout.strip()
    assert user == "65532:65532", f"the operator image's default user is {user!r}, not the non-root 65532"
    kube_dir = tmp_path / "kube"
    kube_dir.mkdir()
    with KubeEmulator(workdir=kube_dir) as kube:
        small_cluster(kube)
        client = kubernetes.config.new_client_from_config(config_file=str(kube.kubeconfig_path))
        try:
            kubernetes.client.ApiextensionsV1Api(client).create_custom_resource_definition(
                yaml.safe_load(CRD_FILE.read_text())
            )
            # Readable by the operator's uid (bind-mounted, so only this directory's mode counts).
            public = Path(tmp_path / "kubeconfig")
            public.mkdir(mode=0o755)
            shutil.copy(kube.kubeconfig_path, public / "kubeconfig")
            (public / "kubeconfig").chmod(0o644)
            pod = _operator_pod(rendered_agent, public)
            name = containers.name("operator")
            # The emulator listens on 127.0.0.1: host network stands in for the pod network.
            podman(
                *podman_run_argv(
                    pod,
                    pod["containers"][0],
                    name=name,
                    image=image,
                    pod_network="host",
                    field_values={"metadata.namespace": "retina-system"},
                ),
                timeout=60,
            )
            body = {
                "apiVersion": "retina.sh/v1alpha1",
                "kind": "Capture",
                "metadata": {"name": "img", "namespace": "web"},
                "spec": {
                    "captureConfiguration": {"captureTarget": {"nodeNames": ["node-1", "node-2"]}},
                    "outputConfiguration": {"hostPath": "img"},
                },
            }
            kubernetes.client.CustomObjectsApi(client).create_namespaced_custom_object(
                "retina.sh", "v1alpha1", "web", "captures", body
            )
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and len(kube.objects("Job", "web")) < 2:
                state = json.loads(podman("inspect", "--format", "{{json .State}}", name).stdout)
                assert state["Running"], (
                    f"the operator exited {state['ExitCode']}:\n{containers.logs(name)[-3000:]}"
                )
                time.sleep(0.5)
            jobs = kube.objects("Job", "web")
            assert len(jobs) == 2, f"the operator made {len(jobs)} Jobs:\n{containers.logs(name)[-3000:]}"
        finally:
            client.close()
