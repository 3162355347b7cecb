"""The README's capture, webhook-token and preflight commands, run verbatim in a shell (``bash
-c``) with the real ``kubectl`` (which finds ``kubectl-retina`` on PATH as its plugin) against
the Kubernetes API emulator, and the preflight on this machine."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from retina_lab.kube import KubeEmulator
from tests.docs.readme import shell_commands
from tests.installer.ansible_run import PLAYBOOKS, ansible_env
from tests.kube_fixtures import capture_user_kubeconfig_for, kube_emulator  # noqa: F401 - fixture

THIS = "tests/docs/test_readme_commands.py"
CAPTURE_CREATE = (
    "kubectl retina capture create --name web-drops -n shop --pod-selectors app=web --duration 30s "
    "--host-path web-drops --no-wait"
)
CAPTURE_LIST = "kubectl retina capture list -n shop"
CAPTURE_DELETE = "kubectl retina capture delete --name web-drops -n shop"
WEBHOOK_TOKEN = (
    "kubectl -n retina-system create secret generic retina-capture-webhook "
    '--from-literal=token="$(openssl rand -hex 32)"'
)
PREFLIGHT_PLAYBOOK = "ansible-playbook -i inventory.yml playbooks/preflight.yml"
PREFLIGHT = "retina-preflight"


def shell(command: str, cwd: Path, kubeconfig: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", command],
        cwd=cwd,
        env=ansible_env(KUBECONFIG=str(kubeconfig)),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_readme_shows_these_commands() -> None:
    assert shell_commands(THIS) == [
        CAPTURE_CREATE,
        CAPTURE_LIST,
        CAPTURE_DELETE,
        WEBHOOK_TOKEN,
        PREFLIGHT_PLAYBOOK,
        PREFLIGHT,
    ]


def test_capture_commands_as_a_capture_user(kube_emulator: KubeEmulator, tmp_path: Path) -> None:  # noqa: F811
    kube = kube_emulator
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": "node-7", "labels": {"kubernetes.io/os": "linux"}},
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web-0", "namespace": "shop", "labels": {"app": "web"}},
        "spec": {"nodeName": "node-7", "containers": [{"name": "c", "image": "nginx"}]},
        "status": {"phase": "Running", "podIP": "10.244.7.10"},
    }
    kube.seed([node, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}, pod])
    # bound as collections/retina/README.md tells the admin to bind capture users
    user = capture_user_kubeconfig_for(kube, namespaces=("shop",))

    proc = shell(CAPTURE_CREATE, tmp_path, user)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [job] = kube.objects("Job", "shop")
    assert job["metadata"]["labels"]["capture-name"] == "web-drops"
    assert "node-7" in json.dumps(job["spec"]["template"]["spec"]["affinity"])
    env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "10.244.7.10" in json.dumps(env)  # the pod selected by app=web

    proc = shell(CAPTURE_LIST, tmp_path, user)
    assert proc.returncode == 0 and "web-drops" in proc.stdout, proc.stdout + proc.stderr

    proc = shell(CAPTURE_DELETE, tmp_path, user)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not kube.objects("Job", "shop")


def test_webhook_token_secret(kube_emulator: KubeEmulator, tmp_path: Path) -> None:  # noqa: F811
    kube = kube_emulator
    kube.seed([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "retina-system"}}])
    proc = shell(WEBHOOK_TOKEN, tmp_path, kube.kubeconfig_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [secret] = kube.objects("Secret", "retina-system")
    assert secret["metadata"]["name"] == "retina-capture-webhook"  # agent_capture_webhook_token_secret
    token = base64.b64decode(secret["data"]["token"]).decode()
    assert re.fullmatch("[0-9a-f]{64}", token), token  # openssl rand -hex 32
    assert token not in proc.stdout + proc.stderr


def test_preflight_commands(kube_emulator: KubeEmulator, tmp_path: Path) -> None:  # noqa: F811
    (tmp_path / "playbooks").symlink_to(PLAYBOOKS)
    (tmp_path / "inventory.yml").write_text(
        yaml.safe_dump(
            {
                "all": {
                    "hosts": {"localhost": {"ansible_connection": "local"}},
                    "vars": {"ansible_python_interpreter": sys.executable, "retina_become": False},
                }
            }
        )
    )
    proc = shell(PREFLIGHT_PLAYBOOK, tmp_path, kube_emulator.kubeconfig_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    # one table for the cluster: each node with its kernel and verdict, then the control host
    assert "6.18" in proc.stdout and "warn:kprobes" in proc.stdout and "CONTROL HOST" in proc.stdout, (
        proc.stdout[-4000:]
    )

    proc = shell(PREFLIGHT, tmp_path, kube_emulator.kubeconfig_path)
    # this machine (as the playbook's table above says): no kprobes, and Debian's 6.1 headers on a
    # 6.18 kernel, are warnings, and warnings are exit 2
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "kernel_version" in proc.stdout and "PLUGIN" in proc.stdout
    assert re.search(r"^kprobes +WARN ", proc.stdout, re.M), proc.stdout
    assert re.search(r"^Result: WARN \(exit 2\): \d+ passed, \d+ warnings, 0 failed", proc.stdout, re.M), (
        proc.stdout
    )
