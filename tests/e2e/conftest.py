"""One installation for the end-to-end scenarios: ``ansible-playbook -i INVENTORY
playbooks/install.yml`` against the API emulator (HTTPS, RBAC), with the images that
scripts/build_images.sh built, on a node played by this machine (``retina_lab.noderunner``):
the agent DaemonSet and the operator Deployment run as real containers, exactly as rendered.

The installation is module-scoped: the scenarios of one module share it (each leaves it as it
found it), and the uninstall scenario, last, takes it down.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml

from images.podman import podman
from retina_agent.tc import process_tag
from retina_lab.agent import free_port, our_tc_filters
from retina_lab.kube import KubeEmulator
from retina_lab.noderunner import NodeRunner
from tests.images.conftest import built_images  # noqa: F401 (the fixture: images as shipped)
from tests.installer.ansible_run import PLAYBOOKS, localhost_inventory, run_playbook

NODE = "e2e-node-1"
NAMESPACE = "retina-system"
#: The default plugins plus packetparser (pod-level flows), from the first install: a user who
#: sets ``agent_pod_level: true`` wants pod-level flow metrics, which only packetparser makes.
PLUGINS = ["linuxutil", "packetforward", "packetparser", "dropreason", "dns", "tcpretrans"]
#: Host paths the product documents (README, collections/retina/README.md); nothing else may be written.
HOST_PATHS = ("/var/run/retina", "/var/lib/retina/captures", "/var/log/retina/captures")


@dataclass
class Installed:
    kube: KubeEmulator
    runner: NodeRunner
    tmp: Path
    inventory: Path
    options: dict[str, Any]
    admin: kubernetes.client.ApiClient
    agent_port: int
    images: dict[str, str]

    def playbook(self, name: str, **extra: Any) -> subprocess.CompletedProcess[str]:
        return run_playbook(
            PLAYBOOKS / name,
            self.tmp,
            {**self.options, **extra},
            inventory=self.inventory,
            env={"KUBECONFIG": str(self.kube.kubeconfig_path)},
            timeout=900,
        )

    def pods(self, label_selector: str, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
        return [
            p.to_dict()
            for p in kubernetes.client.CoreV1Api(self.admin)
            .list_namespaced_pod(namespace, label_selector=label_selector)
            .items
        ]

    def ready_pod(
        self, app: str, timeout: float = 240, not_named: str = "", namespace: str = NAMESPACE
    ) -> dict[str, Any]:
        """The Running, Ready pod of ``app.kubernetes.io/name=app`` (raw API dict)."""

        def ready() -> dict[str, Any] | None:
            for pod in self.kube.objects("Pod", namespace):
                if (
                    pod["metadata"]["name"] != not_named
                    and pod["metadata"].get("labels", {}).get("app.kubernetes.io/name") == app
                    and (pod.get("status") or {}).get("phase") == "Running"
                    and any(
                        c["type"] == "Ready" and c["status"] == "True"
                        for c in pod["status"].get("conditions") or []
                    )
                ):
                    return pod
            return None

        try:
            return self.runner.wait_for(f"{app} pod Running and Ready", ready, timeout=timeout)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{self.diagnose(app, namespace)}") from None

    def agent_tc_programs(self) -> list[str]:
        """What the running agent pod's process has attached (``dev/direction/retina_<x>_<dir>@tag``,
        cls_bpf filters and TCX links alike), read from the kernel."""
        agent = self.ready_pod("retina-agent")
        worker = (
            self.runner.kubelet.worker_for(NAMESPACE, agent["metadata"]["name"])
            if self.runner.kubelet
            else None
        )
        assert worker is not None, "no pod worker for the agent pod"
        name = worker.containers["retina-agent"].podman_name
        tag = process_tag(int(podman("inspect", "--format", "{{.State.Pid}}", name).stdout.strip()))
        assert tag is not None, f"the agent container {name} has no process"
        # the owner tag is <pid>.<start time>; the pid may be one of the container's PID namespace
        start = tag.split(".")[1]
        return [f for f in our_tc_filters() if f.endswith(f".{start}")]

    def agent_memory(self) -> dict[str, int]:
        """The agent container's memory cgroup (v1): peak, limit and how often the limit was hit
        (its start, with the loader child loading the BPF objects, is the usual peak)."""
        agent = self.ready_pod("retina-agent")
        worker = (
            self.runner.kubelet.worker_for(NAMESPACE, agent["metadata"]["name"])
            if self.runner.kubelet
            else None
        )
        assert worker is not None
        name = worker.containers["retina-agent"].podman_name
        cgroup = Path(
            "/sys/fs/cgroup/memory"
            + podman("inspect", "--format", "{{.State.CgroupPath}}", name).stdout.strip()
        )
        files = {
            "peak": "memory.max_usage_in_bytes",
            "limit": "memory.limit_in_bytes",
            "failcnt": "memory.failcnt",
        }
        return {k: int((cgroup / f).read_text()) for k, f in files.items() if (cgroup / f).exists()}

    def diagnose(self, app: str, namespace: str = NAMESPACE) -> str:
        out = []
        for pod in self.kube.objects("Pod", namespace):
            if pod["metadata"].get("labels", {}).get("app.kubernetes.io/name") != app:
                continue
            out.append(json.dumps(pod.get("status"), indent=1)[:3000])
            worker = (
                self.runner.kubelet.worker_for(namespace, pod["metadata"]["name"])
                if self.runner.kubelet
                else None
            )
            for run in worker.containers.values() if worker else []:
                logs = podman("logs", "--tail", "60", run.podman_name, check=False)
                out.append(f"--- {run.podman_name}\n{logs.stdout[-4000:]}{logs.stderr[-4000:]}")
        return "\n".join(out)


def host_path_listing() -> dict[str, list[str]]:
    """Everything under the documented host paths (and /sys/fs/bpf: nothing may be pinned)."""
    listing = {}
    for base in (*HOST_PATHS, "/sys/fs/bpf"):
        root = Path(base)
        listing[base] = sorted(str(p) for p in root.rglob("*")) if root.exists() else []
    return listing


@pytest.fixture(scope="module")
def installed(
    built_images: dict[str, str],  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Installed]:
    if os.geteuid() != 0:
        pytest.fail("the end-to-end scenarios need root (rootful podman, network namespaces, BPF)")
    tmp = tmp_path_factory.mktemp("e2e")
    # The node of the inventory is this machine: preflight audits it for real.
    inventory = localhost_inventory(tmp)
    agent_port = free_port()
    options = {
        "retina_become": False,  # root already, no sudo here
        "preflight_report_dir": str(tmp / "preflight"),
        "agent_port": agent_port,
        "agent_pod_level": True,
        "agent_plugins": PLUGINS,
        "agent_metrics_interval": "1s",
        "prometheus_helm_values_path": str(tmp / "retina-prometheus-values.yaml"),
        "prometheus_scrape_interval": "1s",
    }
    with KubeEmulator() as kube, NodeRunner.for_emulator(kube, nodes=[NODE]) as runner:
        admin = kubernetes.config.new_client_from_config(config_file=str(kube.kubeconfig_path))
        state = Installed(kube, runner, tmp, inventory, options, admin, agent_port, dict(built_images))
        started = time.monotonic()
        proc = state.playbook("install.yml")
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
        print(f"install.yml took {time.monotonic() - started:.0f}s")
        try:
            yield state
        finally:
            admin.close()


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())
