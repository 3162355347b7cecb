"""Upgrades, end to end: the README's install command run again with a new agent image tag and a
changed plugin list rolls the agent DaemonSet on the node runner (real podman containers of the
built images), install.yml waits for the new pod, a node whose preflight now fails stops the
upgrade before anything changes, the old agent's TC filters are gone and the new agent serves
/metrics. The README's install, verify and uninstall commands are run verbatim from here
(tests/docs/test_readme.py checks they are)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from images.names import image_refs
from retina_lab.agent import free_port, our_tc_filters
from retina_lab.kube import KubeEmulator
from retina_lab.noderunner import NodeRunner
from tests.installer.ansible_run import PLAYBOOKS, REPO, ansible_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

NODE = "upgrade-node-1"
NAMESPACE = "retina-system"
CENTOS7 = REPO / "tests" / "preflight" / "hosts" / "centos7"

# The README's commands ("Install on your cluster"), run as written from a directory holding
# inventory.yml, options.yml and the repository's playbooks.
INSTALL = "ansible-playbook -i inventory.yml playbooks/install.yml -e @options.yml"
VERIFY_ROLLOUT = "kubectl -n retina-system rollout status daemonset/retina-agent --timeout=5m"
VERIFY_PODS = (
    "kubectl -n retina-system get pods -l app.kubernetes.io/name=retina-agent "
    "-o custom-columns=POD:.metadata.name,NODE:.spec.nodeName,READY:.status.containerStatuses[0].ready,"
    "IMAGE:.spec.containers[0].image"
)
AGENT_LOGS = "kubectl -n retina-system logs daemonset/retina-agent --tail=50"
UNINSTALL = "ansible-playbook -i inventory.yml playbooks/uninstall.yml -e @options.yml"

PLUGINS_BEFORE = ["linuxutil", "packetforward", "dropreason", "dns", "tcpretrans"]
PLUGINS_AFTER = ["linuxutil", "packetforward", "dropreason", "dns"]


@dataclass
class Site:
    """The admin's working directory and the cluster it talks to."""

    kube: KubeEmulator
    runner: NodeRunner
    path: Path
    agent_port: int

    def run(self, command: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", command],
            cwd=self.path,
            env=ansible_env(KUBECONFIG=str(self.kube.kubeconfig_path)),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def write_options(self, **options: Any) -> None:
        (self.path / "options.yml").write_text(yaml.safe_dump(options))

    def write_inventory(self, *, with_centos7: bool = False) -> None:
        hosts: dict[str, Any] = {"localhost": {"ansible_connection": "local"}}
        if with_centos7:
            # a node audited from a CentOS 7 host tree: kernel 3.10, no BTF (preflight fails)
            hosts["centos7"] = {"ansible_connection": "local", "preflight_root": str(CENTOS7)}
        inventory = {
            "all": {
                "hosts": hosts,
                "vars": {"ansible_python_interpreter": sys.executable, "retina_become": False},
            }
        }
        (self.path / "inventory.yml").write_text(yaml.safe_dump(inventory))

    def agent_pods(self) -> list[dict[str, Any]]:
        return [
            p
            for p in self.kube.objects("Pod", NAMESPACE)
            if p["metadata"].get("labels", {}).get("app.kubernetes.io/name") == "retina-agent"
            and not p["metadata"].get("deletionTimestamp")
        ]

    def daemonset(self) -> dict[str, Any]:
        return next(
            d for d in self.kube.objects("DaemonSet", NAMESPACE) if d["metadata"]["name"] == "retina-agent"
        )

    def agent_filters(self, pod: dict[str, Any]) -> list[str]:
        """The TC filters of this pod's agent. Other agents may run on this shared machine: ours
        are told apart by the process start time in their ``@pid.start`` tag (the pid is the one in
        the container's pid namespace, the start time is since boot, the same in every namespace)."""
        worker = self.runner.kubelet.worker_for(NAMESPACE, pod["metadata"]["name"])
        [run] = [r for r in worker.containers.values() if not r.init]
        pid = subprocess.run(
            [
                "podman",
                "--runtime",
                "runc",
                "--cgroup-manager=cgroupfs",
                "inspect",
                "--format",
                "{{.State.Pid}}",
                run.podman_name,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        start = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
        return [f for f in our_tc_filters() if f.endswith(f".{start}")]

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.agent_port}/metrics", timeout=5) as resp:
            return resp.read().decode()


def _existing_images(request: pytest.FixtureRequest) -> dict[str, str]:
    """The built images; built by scripts/build_images.sh only when they are not there yet."""
    refs = image_refs()
    missing = [
        ref
        for ref in refs.values()
        if subprocess.run(["podman", "image", "exists", ref], check=False).returncode != 0
    ]
    return request.getfixturevalue("built_images") if missing else refs


@pytest.fixture(scope="module")
def site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    if os.geteuid() != 0:
        pytest.fail("the upgrade scenario needs root (rootful podman, BPF, TC)")
    images = _existing_images(request)
    path = tmp_path_factory.mktemp("admin")
    (path / "playbooks").symlink_to(PLAYBOOKS)
    with KubeEmulator() as kube, NodeRunner.for_emulator(kube, nodes=[NODE]) as runner:
        site = Site(kube, runner, path, free_port())
        site.images = images  # type: ignore[attr-defined]
        yield site
        site.run(UNINSTALL)
    assert not runner.containers(), "the node runner left containers"


def _options(site: Site, **extra: Any) -> dict[str, Any]:
    return {
        "agent_port": site.agent_port,
        "agent_metrics_interval": "1s",
        "preflight_report_dir": str(site.path / "preflight"),
        "prometheus_helm_values_path": str(site.path / "retina-prometheus-values.yaml"),
        **extra,
    }


def _wait_ready_pod(site: Site, image: str, timeout: float = 300) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        pods = site.agent_pods()
        if len(pods) != 1:
            return None
        pod = pods[0]
        ok = pod["spec"]["containers"][0]["image"] == image and any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in (pod.get("status") or {}).get("conditions") or []
        )
        return pod if ok else None

    return site.runner.wait_for(f"one ready agent pod of {image}", ready, timeout=timeout)


def _counters(site: Site) -> dict[str, float]:
    """Counter samples of the agent's /metrics with a value above 0, by sample line."""
    found = {}
    for line in site.metrics().splitlines():
        if line.startswith("networkobservability_") and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            if ("_count" in name or "_bytes" in name) and float(value) > 0:
                found[name] = float(value)
    return found


def test_install_upgrade_with_a_new_tag_and_plugins_then_uninstall(site: Site) -> None:
    agent_image = site.images["agent"]  # type: ignore[attr-defined]
    site.write_inventory()
    site.write_options(**_options(site, agent_plugins=PLUGINS_BEFORE))

    # -- install, verify ------------------------------------------------------------------------
    proc = site.run(INSTALL)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    old_pod = _wait_ready_pod(site, agent_image, timeout=30)  # install.yml waited for it
    rollout = site.run(VERIFY_ROLLOUT, timeout=330)
    assert rollout.returncode == 0 and "successfully rolled out" in rollout.stdout, (
        rollout.stdout + rollout.stderr
    )
    listing = site.run(VERIFY_PODS, timeout=60)
    assert listing.returncode == 0 and old_pod["metadata"]["name"] in listing.stdout, (
        listing.stdout + listing.stderr
    )
    row = next(line.split() for line in listing.stdout.splitlines() if old_pod["metadata"]["name"] in line)
    assert row == [old_pod["metadata"]["name"], NODE, "true", agent_image], listing.stdout
    logs = site.run(AGENT_LOGS, timeout=60)
    assert logs.returncode == 0 and "plugin tcpretrans running" in logs.stdout, (
        logs.stdout[-3000:] + logs.stderr
    )
    old_filters = set(site.runner.wait_for("the old agent's TC filters", lambda: site.agent_filters(old_pod)))
    site.runner.wait_for("old agent counting", lambda: _counters(site) or None, timeout=60)
    assert 'plugin="tcpretrans"' in site.metrics()
    ds = site.daemonset()
    assert ds["spec"]["updateStrategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}

    new_image = agent_image.rsplit(":", 1)[0] + f":upgrade-{secrets.token_hex(3)}"
    subprocess.run(["podman", "tag", agent_image, new_image], check=True, capture_output=True)
    try:
        site.write_options(
            **_options(site, agent_plugins=PLUGINS_AFTER, agent_image=new_image, agent_max_unavailable="100%")
        )

        # -- a node whose preflight now fails stops the upgrade before anything changes ----------
        site.write_inventory(with_centos7=True)
        proc = site.run(INSTALL)
        output = proc.stdout + proc.stderr
        assert proc.returncode != 0, output[-4000:]
        assert "Preflight failed on centos7" in output and "Nothing was installed" in output, output[-4000:]
        assert site.daemonset()["spec"]["template"]["spec"]["containers"][0]["image"] == agent_image
        assert [p["metadata"]["uid"] for p in site.agent_pods()] == [old_pod["metadata"]["uid"]]

        # -- the upgrade: the old pod is replaced, install.yml waits for the new one ---------------
        site.write_inventory()
        proc = site.run(INSTALL)
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
        assert "Wait until every node runs a ready agent of the new revision" in proc.stdout
        new_pod = _wait_ready_pod(site, new_image, timeout=30)  # ready when install.yml returned
        assert new_pod["metadata"]["uid"] != old_pod["metadata"]["uid"]
        ds = site.daemonset()
        assert ds["spec"]["updateStrategy"]["rollingUpdate"] == {"maxUnavailable": "100%"}
        status = ds["status"]
        assert status["observedGeneration"] == ds["metadata"]["generation"]
        assert (
            status["updatedNumberScheduled"] == status["numberReady"] == status["desiredNumberScheduled"] == 1
        )
        rollout = site.run(VERIFY_ROLLOUT, timeout=330)
        assert rollout.returncode == 0, rollout.stdout + rollout.stderr
        listing = site.run(VERIFY_PODS, timeout=60)
        assert [line.split() for line in listing.stdout.splitlines()[1:]] == [
            [new_pod["metadata"]["name"], NODE, "true", new_image]
        ], listing.stdout

        # no filter of the old agent is left; the new agent has its own
        new_filters = set(
            site.runner.wait_for("the new agent's TC filters", lambda: site.agent_filters(new_pod))
        )
        old_tags = {f.rsplit("@", 1)[1] for f in old_filters}
        assert not [f for f in our_tc_filters() if f.rsplit("@", 1)[1] in old_tags], (
            "old agent's filters left"
        )
        assert any(f.startswith("eth0/") for f in new_filters), sorted(new_filters)
        # metrics continue, from the new agent with the new plugin list
        site.runner.wait_for("new agent counting", lambda: _counters(site) or None, timeout=60)
        text = site.metrics()
        assert 'plugin="packetforward"' in text and 'plugin="tcpretrans"' not in text

        # -- uninstall --------------------------------------------------------------------------
        proc = site.run(UNINSTALL)
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
        site.runner.wait_for("agent containers gone", lambda: not site.runner.containers(), timeout=120)
        new_tags = {f.rsplit("@", 1)[1] for f in new_filters}
        assert not [f for f in our_tc_filters() if f.rsplit("@", 1)[1] in new_tags], (
            "new agent's filters left"
        )
        assert not site.kube.objects("DaemonSet", NAMESPACE)
    finally:
        subprocess.run(["podman", "rmi", new_image], check=False, capture_output=True)


def test_a_new_agent_that_never_gets_ready_fails_the_run_naming_the_pod(site: Site) -> None:
    """The rollout stops at the node whose new agent is not ready; install.yml says which."""
    agent_image = site.images["agent"]  # type: ignore[attr-defined]
    site.write_inventory()
    site.write_options(**_options(site, agent_plugins=PLUGINS_BEFORE))
    proc = site.run(INSTALL)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    old_pod = _wait_ready_pod(site, agent_image, timeout=30)
    # an image that does not exist on the node: the new pod never starts
    missing = agent_image.rsplit(":", 1)[0] + f":missing-{secrets.token_hex(3)}"
    site.write_options(
        **_options(
            site,
            agent_plugins=PLUGINS_BEFORE,
            agent_image=missing,
            agent_image_pull_policy="Never",
            retina_rollout_timeout=30,
        )
    )
    proc = site.run(INSTALL)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-4000:]
    assert "did not roll out within 30s" in output and f"on {NODE}" in output, output[-4000:]
    # the old pod was replaced (one node, maxUnavailable 1); the new one is named as not ready
    names = [p["metadata"]["name"] for p in site.agent_pods()]
    assert old_pod["metadata"]["name"] not in names and len(names) == 1, json.dumps(names)
    assert f"{names[0]} on {NODE}" in output and "ready=False" in output, output[-4000:]
