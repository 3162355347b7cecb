"""kubectl-retina against the Kubernetes API emulator, over HTTP with the real client."""

from __future__ import annotations

import base64
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from retina_capture.cli.main import main
from retina_lab.manifests import validate_manifest
from tests import kube_fixtures
from tests.kube_fixtures import capture_user_kubeconfig_for, small_cluster

# pytest fixtures shared from tests/kube_fixtures.py
kube_emulator = kube_fixtures.kube_emulator
kube_api_client = kube_fixtures.kube_api_client

BIN = Path(sys.executable).parent


def cli(kube, capsys, *argv: str) -> tuple[int, str, str]:
    """kubectl-retina as a capture user (bound only as the README says), not as the admin."""
    code = main([*argv, "--kubeconfig", str(capture_user_kubeconfig_for(kube))])
    out = capsys.readouterr()
    return code, out.out, out.err


def create(kube, capsys, flags: str) -> tuple[int, str, str]:
    """``kubectl-retina capture create FLAGS`` as the capture user (flags split as a shell would)."""
    return cli(kube, capsys, "capture", "create", *shlex.split(flags))


def env_of(job: dict) -> dict[str, object]:
    container = job["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def pinned_node(job: dict) -> str:
    terms = job["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    [expr] = terms[0]["matchFields"]
    assert expr["key"] == "metadata.name" and expr["operator"] == "In"
    [node] = expr["values"]
    return node


def test_create_makes_one_pinned_job_per_linux_node(kube_emulator, capsys) -> None:
    small_cluster(kube_emulator)
    code, out, err = create(
        kube_emulator,
        capsys,
        "--name cap1 -n web --host-path incident/42 --duration 30s --packet-size 96"
        " --include-filter 10.244.1.10:80,*:53 --no-wait",
    )
    assert code == 0, err
    assert "created 3 job(s)" in out

    jobs = kube_emulator.objects("Job", "web")
    assert sorted(pinned_node(j) for j in jobs) == ["node-1", "node-2", "node-3"]  # not win-1
    for job in jobs:
        validate_manifest(job)  # kubernetes-validate, 1.28 to 1.31, strict
        meta, pod = job["metadata"], job["spec"]["template"]["spec"]
        assert meta["labels"] == {"retina.sh/app": "capture", "capture-name": "cap1"}
        assert job["spec"]["backoffLimit"] == 0
        assert pod["hostNetwork"] is True
        sc = pod["containers"][0]["securityContext"]
        assert sc["privileged"] is False and sc["capabilities"] == {
            "drop": ["ALL"],
            "add": ["NET_ADMIN", "NET_RAW", "SETGID", "SETUID"],
        }
        env = env_of(job)
        assert env["RETINA_CAPTURE_NAME"] == "cap1"
        assert env["RETINA_CAPTURE_DURATION"] == "30s"
        assert env["RETINA_CAPTURE_PACKET_SIZE"] == "96"
        assert env["RETINA_CAPTURE_HOST_PATH"] == "incident/42"
        assert env["RETINA_CAPTURE_INCLUDE_FILTER"] == "10.244.1.10:80,*:53"
        assert env["NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
        assert "RETINA_CAPTURE_POD_IPS" not in env  # whole node
        # The capture's hostPath, and the node directory where a tarball whose upload failed stays.
        # (and /tmp: the root file system is read-only).
        assert pod["volumes"] == [
            {"name": "keep", "hostPath": {"path": "/var/log/retina/captures", "type": "DirectoryOrCreate"}},
            {"name": "tmp", "emptyDir": {}},
            {
                "name": "host-path",
                "hostPath": {"path": "/var/lib/retina/captures", "type": "DirectoryOrCreate"},
            },
        ]
        assert pod["containers"][0]["volumeMounts"] == [
            {"name": "keep", "mountPath": "/var/log/retina/captures"},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "host-path", "mountPath": "/var/lib/retina/captures"},
        ]
    assert kube_emulator.objects("Secret", "web") == []  # no credentials needed


def test_the_worker_accepts_the_job_env(kube_emulator, capsys) -> None:
    """The env a Job carries is a valid worker configuration (the worker's own parser says so)."""
    from retina_capture.worker.settings import settings_from_env_and_argv

    small_cluster(kube_emulator)
    assert (
        create(
            kube_emulator, capsys, "--name w -n web --pod-selectors app=frontend --pvc captures --no-wait"
        )[0]
        == 0
    )
    for job in kube_emulator.objects("Job", "web"):
        env = {k: v for k, v in env_of(job).items() if isinstance(v, str)}
        settings = settings_from_env_and_argv([], {**env, "NODE_NAME": pinned_node(job)})
        assert settings.node_name == pinned_node(job)
        assert settings.pvc_mount_path == "/mnt/retina/pvc"
        assert settings.pod_ips == {"node-1": ("10.244.1.10",), "node-2": ("10.244.2.10",)}[pinned_node(job)]


def test_pod_selectors_with_namespace_selectors(kube_emulator, capsys) -> None:
    small_cluster(kube_emulator)
    code, out, err = create(
        kube_emulator,
        capsys,
        "--name pods -n default --pod-selectors app=postgres --namespace-selectors team=db"
        " --host-path x --no-wait",
    )
    assert code == 0, err
    [job] = kube_emulator.objects("Job", "default")
    assert pinned_node(job) == "node-3"
    assert env_of(job)["RETINA_CAPTURE_POD_IPS"] == "10.244.3.10"

    code, out, err = create(
        kube_emulator, capsys, "--name named -n web --pod-names b --host-path x --no-wait"
    )
    assert code == 0, err
    [job] = kube_emulator.objects("Job", "web")
    assert pinned_node(job) == "node-2" and env_of(job)["RETINA_CAPTURE_POD_IPS"] == "10.244.2.10"


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--host-path", "../etc"], "--host-path"),
        (["--host-path", "/etc"], "--host-path"),
        (["--host-path", "x", "--duration", "-5s"], "--duration"),
        (["--host-path", "x", "--max-size", "0"], "--max-size"),
        ([], "--host-path/--pvc/--blob-upload/--s3-bucket"),  # no output at all
        (["--host-path", "x", "--pod-selectors", "app=nothing"], "--pod-selectors"),
        (["--host-path", "x", "--node-names", "node-9"], "--node-names"),
        (["--host-path", "x", "--tcpdump-filter", "port 80; rm -rf /"], "--tcpdump-filter"),
        (["--host-path", "x", "--tcpdump-filter", "-w /etc/passwd"], "--tcpdump-filter"),
        (
            ["--host-path", "x", "--include-filter", "10.0.0.300", "--exclude-filter", "nope:x"],
            "--include-filter",
        ),
        (["--host-path", "x", "--s3-bucket", "b"], "--s3-access-key-id/--s3-secret-access-key"),
    ],
)
def test_bad_input_names_the_flag_and_creates_nothing(kube_emulator, capsys, argv, flag) -> None:
    small_cluster(kube_emulator)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert key not in os.environ
    code, out, err = cli(
        kube_emulator, capsys, "capture", "create", "--name", "bad", "-n", "web", "--no-wait", *argv
    )
    assert code == 2
    assert f"{flag}:" in err and "nothing was created" in err
    assert kube_emulator.objects("Job") == [] and kube_emulator.objects("Secret") == []


def test_both_malformed_filters_are_reported(kube_emulator, capsys) -> None:
    small_cluster(kube_emulator)
    code, _, err = create(
        kube_emulator, capsys, "-n web --host-path x --include-filter 10.0.0.300 --exclude-filter nope:x"
    )
    assert code == 2 and "--include-filter:" in err and "--exclude-filter:" in err


def test_unknown_output_is_a_usage_error(kube_emulator, capsys) -> None:
    code, _, err = cli(kube_emulator, capsys, "capture", "create", "--ftp-upload", "x")
    assert code == 2 and "--ftp-upload" in err
    assert kube_emulator.objects("Job") == []


def test_job_num_limit_uses_retinas_message(kube_emulator, capsys) -> None:
    small_cluster(kube_emulator)
    code, out, err = create(kube_emulator, capsys, "-n web --host-path x --job-num-limit 2 --no-wait")
    assert code == 1
    assert err.strip() == "the number of capture jobs 3 exceeds the limit 2"
    assert kube_emulator.objects("Job") == []
    assert create(kube_emulator, capsys, "-n web --host-path x --job-num-limit 3 --no-wait")[0] == 0


def test_list_and_delete(kube_emulator, capsys) -> None:
    small_cluster(kube_emulator)
    for name, ns in (("one", "web"), ("two", "db")):
        assert (
            cli(
                kube_emulator,
                capsys,
                "capture",
                "create",
                "--name",
                name,
                "-n",
                ns,
                "--node-names",
                "node-1,node-2",
                "--host-path",
                "x",
                "--no-wait",
            )[0]
            == 0
        )
    code, out, _ = cli(kube_emulator, capsys, "capture", "list", "-n", "web")
    assert code == 0 and "one" in out and "two" not in out
    code, out, _ = cli(kube_emulator, capsys, "capture", "list", "-A")
    lines = out.splitlines()
    assert lines[0].split() == ["NAMESPACE", "CAPTURE", "NAME", "JOBS", "COMPLETIONS", "AGE", "STATUS"]
    rows = [line.split() for line in lines[1:]]  # Retina's columns, then STATUS
    assert [(r[0], r[1], r[3], r[5]) for r in rows] == [
        ("db", "two", "0/2", "Running"),
        ("web", "one", "0/2", "Running"),
    ]
    assert [sorted(r[2].split(",")) for r in rows] == [
        sorted(j["metadata"]["name"] for j in kube_emulator.objects("Job", ns)) for ns in ("db", "web")
    ]

    code, out, _ = cli(kube_emulator, capsys, "capture", "delete", "--name", "one", "-n", "web")
    assert code == 0 and "2 job(s)" in out
    assert kube_emulator.objects("Job", "web") == [] and len(kube_emulator.objects("Job", "db")) == 2
    code, _, err = cli(kube_emulator, capsys, "capture", "delete", "--name", "one", "-n", "web")
    assert code == 1 and "--name" in err
    code, out, _ = cli(kube_emulator, capsys, "capture", "list", "-n", "web")
    assert "No captures found" in out


def test_s3_credentials_go_into_a_secret_only(kube_emulator) -> None:
    small_cluster(kube_emulator)
    key_id, secret_key = "AKIAEXAMPLEKEYID0001", "s3cr3t-Value-Never-Logged"
    env = {
        **os.environ,
        "RETINA_CAPTURE_S3_ACCESS_KEY_ID": key_id,
        "RETINA_CAPTURE_S3_SECRET_ACCESS_KEY": secret_key,
    }
    proc = subprocess.run(
        [
            str(BIN / "kubectl-retina"),
            "capture",
            "create",
            "--name",
            "s3cap",
            "-n",
            "web",
            "--node-names",
            "node-1",
            "--s3-bucket",
            "captures",
            "--s3-endpoint",
            "http://127.0.0.1:9",
            "--kubeconfig",
            str(capture_user_kubeconfig_for(kube_emulator)),
            "--no-wait",
            "--debug",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert secret_key not in proc.stdout + proc.stderr and key_id not in proc.stdout + proc.stderr
    [secret] = kube_emulator.objects("Secret", "web")
    assert secret["metadata"]["labels"]["capture-name"] == "s3cap"
    assert base64.b64decode(secret["data"]["s3-secret-access-key"]).decode() == secret_key
    [job] = kube_emulator.objects("Job", "web")
    assert secret_key not in json.dumps(job) and key_id not in json.dumps(job)
    env_vars = env_of(job)
    assert env_vars["RETINA_CAPTURE_S3_SECRET_ACCESS_KEY"] == {
        "secretKeyRef": {"name": secret["metadata"]["name"], "key": "s3-secret-access-key"}
    }
    assert env_vars["RETINA_CAPTURE_S3_BUCKET"] == "captures"
    validate_manifest(secret)


def test_create_waits_and_reports_progress(kube_emulator) -> None:
    """Each state the CLI prints is waited for before the next is made (the CLI polls every 0.1 s)."""
    import threading

    small_cluster(kube_emulator)
    proc = subprocess.Popen(
        [
            str(BIN / "kubectl-retina"),
            "capture",
            "create",
            "--name",
            "waiting",
            "-n",
            "web",
            "--node-names",
            "node-1,node-2",
            "--host-path",
            "x",
            "--duration",
            "5s",
            "--poll-interval",
            "0.1",
            "--kubeconfig",
            str(capture_user_kubeconfig_for(kube_emulator)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()

    def wait_for_line(text: str) -> None:
        deadline = time.monotonic() + 30
        while not any(text in line for line in list(lines)):
            assert time.monotonic() < deadline and proc.poll() is None, f"no {text!r} in {lines}"
            time.sleep(0.05)

    try:
        wait_for_line("2 job(s): 2 running, 0 succeeded, 0 failed")
        first, second = (j["metadata"]["name"] for j in kube_emulator.objects("Job", "web"))
        done = {
            "succeeded": 1,
            "startTime": "2026-01-01T00:00:00Z",
            "completionTime": "2026-01-01T00:00:05Z",
            "conditions": [{"type": "Complete", "status": "True"}],
        }
        kube_emulator.set_status("Job", "web", first, done)
        wait_for_line("2 job(s): 1 running, 1 succeeded, 0 failed")
        kube_emulator.set_status("Job", "web", second, done)
        assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=10)
    assert "2 job(s): 0 running, 2 succeeded, 0 failed" in "".join(lines)
    assert "capture waiting done" in "".join(lines)


def test_version() -> None:
    proc = subprocess.run(
        [str(BIN / "kubectl-retina"), "version"], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0 and proc.stdout.startswith("kubectl-retina ")
