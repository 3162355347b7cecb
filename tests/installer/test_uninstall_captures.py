"""uninstall.yml with Captures still present: it completes and leaves no Terminating CRD.

A Capture carries the operator's finalizer, and a CRD stays Terminating while an object of its
kind has a finalizer (the emulator does as Kubernetes does). The installed operator runs here as
its Deployment says (its command, its ServiceAccount's token, the rendered RBAC) and lives only as
long as that Deployment, as its pod would."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import kubernetes
import pytest

from retina_capture.operator.handlers import FINALIZER
from retina_lab.kube import KubeEmulator
from tests.helpers.capture import stop_group, wait_until
from tests.installer.ansible_run import PLAYBOOKS, VENV_BIN, run_playbook
from tests.kube_fixtures import (
    AGENT_NAMESPACE,
    OPERATOR_USER,
    capture_user_kubeconfig_for,
    operator_kubeconfig_for,
    refusals_of,
    rendered_agent_objects,
    small_cluster,
)

MANAGED = "app.kubernetes.io/managed-by"
ROLE_VARS = Path(__file__).resolve().parents[2] / "collections/retina/roles/agent/vars/main.yml"


def capture(name: str) -> dict:
    return {
        "apiVersion": "retina.sh/v1alpha1",
        "kind": "Capture",
        "metadata": {"name": name, "namespace": "web"},
        "spec": {
            "captureConfiguration": {"captureTarget": {"nodeNames": ["node-1", "node-2"]}},
            "outputConfiguration": {"hostPath": "incident"},
        },
    }


class OperatorPod:
    """The operator Deployment's container command, run as its ServiceAccount; it is stopped
    when the Deployment is deleted (as the pod would be)."""

    def __init__(self, kube: KubeEmulator, deployment: dict, log: Path) -> None:
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        command = [str(VENV_BIN / container["command"][0]), *container["command"][1:]]
        env = {**os.environ, "KUBECONFIG": str(operator_kubeconfig_for(kube))}
        env.update({e["name"]: e["value"] for e in container.get("env") or [] if "value" in e})
        self.kube, self.name = kube, deployment["metadata"]["name"]
        self.log = log
        with log.open("w") as out:
            self.proc = subprocess.Popen(
                command,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._done = threading.Event()
        self._reaper = threading.Thread(target=self._follow_deployment, daemon=True)
        self._reaper.start()

    def _follow_deployment(self) -> None:
        while not self._done.wait(0.1):
            if not self.kube.objects("Deployment", AGENT_NAMESPACE):
                self.stop()

    def stop(self) -> None:
        self._done.set()
        stop_group(self.proc, grace=15)


@pytest.fixture
def installed(tmp_path: Path) -> Iterator[KubeEmulator]:
    """Every object install.yml applies for the agent role (rendered by the role), plus nodes and pods."""
    with KubeEmulator(workdir=tmp_path / "kube", namespaces=("default", "kube-system")) as kube:
        small_cluster(kube)
        objects = rendered_agent_objects()
        objects.sort(key=lambda o: o["kind"] not in ("CustomResourceDefinition", "Namespace"))
        kube.apply(objects)
        yield kube


def uninstall(kube: KubeEmulator, tmp_path: Path, **options: object) -> subprocess.CompletedProcess[str]:
    return run_playbook(
        PLAYBOOKS / "uninstall.yml", tmp_path, dict(options), env={"KUBECONFIG": str(kube.kubeconfig_path)}
    )


def leftovers(kube: KubeEmulator) -> list[str]:
    found = [
        f"CustomResourceDefinition/{c['metadata']['name']}" for c in kube.objects("CustomResourceDefinition")
    ]
    for kind in (
        "ClusterRole",
        "ClusterRoleBinding",
        "ServiceAccount",
        "Deployment",
        "DaemonSet",
        "Namespace",
    ):
        found += [
            f"{kind}/{o['metadata']['name']}"
            for o in kube.objects(kind)
            if (o["metadata"].get("labels") or {}).get(MANAGED) == "retina-installer"
        ]
    return found + [f"Job/{j['metadata']['name']}" for j in kube.objects("Job")]


def test_the_role_knows_the_operators_finalizer() -> None:
    assert f"__agent_capture_finalizer: {FINALIZER}\n" in ROLE_VARS.read_text()


def test_uninstall_lets_the_running_operator_release_captures_first(
    installed: KubeEmulator, tmp_path: Path
) -> None:
    kube = installed
    [deployment] = [o for o in rendered_agent_objects() if o["kind"] == "Deployment"]
    operator = OperatorPod(kube, deployment, tmp_path / "operator.log")
    try:
        user = kubernetes.config.new_client_from_config(config_file=str(capture_user_kubeconfig_for(kube)))
        custom = kubernetes.client.CustomObjectsApi(user)
        custom.create_namespaced_custom_object(
            "retina.sh", "v1alpha1", "web", "captures", capture("incident")
        )
        wait_until(
            lambda: (
                len(kube.objects("Job", "web")) == 2
                and FINALIZER in kube.objects("Capture", "web")[0]["metadata"].get("finalizers", [])
            ),
            60,
            "the operator's Jobs and finalizer",
        )

        proc = uninstall(kube, tmp_path)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
        assert "Capture(s) within" not in proc.stdout  # the operator did it, nobody forced it
    finally:
        operator.stop()
    assert leftovers(kube) == []
    assert "capture web/incident deleted: 2 job(s)" in operator.log.read_text()
    assert refusals_of(kube, OPERATOR_USER) == []


def test_uninstall_without_a_running_operator_drops_its_finalizer(
    installed: KubeEmulator, tmp_path: Path
) -> None:
    """The operator crashed (or never ran): the Capture keeps its finalizer; uninstall waits for the
    timeout, removes the finalizer, and the Capture, its Job (owner reference) and the CRD go."""
    kube = installed
    [stuck] = kube.seed(
        [{**capture("stuck"), "metadata": {"name": "stuck", "namespace": "web", "finalizers": [FINALIZER]}}]
    )
    kube.seed(
        [
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": {
                    "name": "stuck-1",
                    "namespace": "web",
                    "ownerReferences": [
                        {
                            "apiVersion": "retina.sh/v1alpha1",
                            "kind": "Capture",
                            "name": "stuck",
                            "uid": stuck["metadata"]["uid"],
                            "controller": True,
                        }
                    ],
                },
                "spec": {
                    "template": {
                        "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]}
                    }
                },
            }
        ]
    )
    proc = uninstall(kube, tmp_path, agent_uninstall_capture_timeout=2)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "did not release 1 Capture(s) within 2s" in " ".join(proc.stdout.split())
    assert leftovers(kube) == []
