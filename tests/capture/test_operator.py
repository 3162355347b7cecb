"""The capture operator (kopf) against the Kubernetes API emulator, with the real client."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml
from kopf.testing import KopfRunner

from retina_capture.cli.main import main as cli_main
from retina_lab.manifests import validate_manifest
from tests import kube_fixtures
from tests.kube_fixtures import (
    OPERATOR_USER,
    capture_user_kubeconfig_for,
    operator_kubeconfig_for,
    refusals_of,
    small_cluster,
)

# pytest fixtures shared from tests/kube_fixtures.py
kube_emulator = kube_fixtures.kube_emulator
kube_api_client = kube_fixtures.kube_api_client

CRD_FILE = Path(__file__).parents[2] / "collections/retina/roles/agent/files/crds/retina.sh_captures.yaml"
CRD = yaml.safe_load(CRD_FILE.read_text())


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def capture(name: str, namespace: str, target: dict, output: dict, **config: Any) -> dict:
    return {
        "apiVersion": "retina.sh/v1alpha1",
        "kind": "Capture",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"captureConfiguration": {"captureTarget": target, **config}, "outputConfiguration": output},
    }


@pytest.fixture
def operator(kube_emulator, kube_api_client, monkeypatch) -> Iterator[kubernetes.client.CustomObjectsApi]:
    """The operator running as its ServiceAccount with the rendered RBAC; yields the API of a
    capture user (bound as the README says) to create Captures with."""
    small_cluster(kube_emulator)
    kubernetes.client.ApiextensionsV1Api(kube_api_client).create_custom_resource_definition(CRD)
    # how kopf and the handlers log in: the operator's own token, as in its pod
    monkeypatch.setenv("KUBECONFIG", str(operator_kubeconfig_for(kube_emulator)))
    user_kubeconfig = capture_user_kubeconfig_for(kube_emulator)
    user = kubernetes.config.new_client_from_config(config_file=str(user_kubeconfig))

    argv = ["run", "--all-namespaces", "--standalone", "-m", "retina_capture.operator.handlers"]
    with KopfRunner(argv, timeout=60) as runner:
        yield kubernetes.client.CustomObjectsApi(user)
    assert runner.exception is None, runner.output
    assert refusals_of(kube_emulator, OPERATOR_USER) == [], "the operator's RBAC lacks what it uses"


def strip(job: dict) -> dict:
    """The parts of a Job that the CLI and the operator must agree on."""
    return {
        "labels": job["metadata"]["labels"],
        "annotations": job["metadata"]["annotations"],
        "spec": job["spec"],
    }


def test_crd_is_valid_and_validates_captures() -> None:
    validate_manifest(CRD)
    good = capture(
        "c",
        "web",
        {"nodeSelector": {"matchLabels": {"kubernetes.io/os": "linux"}}},
        {"hostPath": "x"},
        captureOption={"duration": "30s", "maxCaptureSize": 10},
    )
    validate_manifest(good, crds=[CRD])
    bad = capture("c", "web", {}, {"hostPath": "x"}, captureOption={"maxCaptureSize": "big"})
    with pytest.raises(ValueError, match=r"captureOption\.maxCaptureSize"):
        validate_manifest(bad, crds=[CRD])


def test_capture_becomes_the_same_jobs_as_the_cli(operator, kube_emulator, capsys) -> None:
    body = capture(
        "cap",
        "web",
        {"nodeSelector": {"matchLabels": {"kubernetes.io/os": "linux"}}},
        {"hostPath": "incident", "persistentVolumeClaim": "captures"},
        captureOption={"duration": "45s", "packetSize": 128, "interfaces": ["eth0", "eth1"]},
        filters={"include": ["10.244.1.10:80"], "exclude": ["*:22"]},
        tcpdumpFilter="tcp",
    )
    operator.create_namespaced_custom_object("retina.sh", "v1alpha1", "web", "captures", body)
    jobs = wait_for(
        lambda: len(kube_emulator.objects("Job", "web")) == 3 and kube_emulator.objects("Job", "web"),
        "three Jobs from the operator",
    )
    uid = kube_emulator.objects("Capture", "web")[0]["metadata"]["uid"]
    for job in jobs:
        validate_manifest(job)
        [owner] = job["metadata"]["ownerReferences"]
        assert owner["kind"] == "Capture" and owner["uid"] == uid

    # The same capture through the CLI, in another namespace.
    code = cli_main(
        [
            "capture",
            "create",
            "--name",
            "cap",
            "-n",
            "db",
            "--host-path",
            "incident",
            "--pvc",
            "captures",
            "--duration",
            "45s",
            "--packet-size",
            "128",
            "--interfaces",
            "eth0,eth1",
            "--include-filter",
            "10.244.1.10:80",
            "--exclude-filter",
            "*:22",
            "--tcpdump-filter",
            "tcp",
            "--no-wait",
            "--kubeconfig",
            str(capture_user_kubeconfig_for(kube_emulator)),
        ]
    )
    assert code == 0, capsys.readouterr().err
    cli_jobs = kube_emulator.objects("Job", "db")
    assert [j["metadata"]["name"] for j in cli_jobs] == [j["metadata"]["name"] for j in jobs]
    assert [strip(j) for j in cli_jobs] == [strip(j) for j in jobs]

    def accepted_condition() -> dict | None:
        status = kube_emulator.objects("Capture", "web")[0].get("status") or {}
        return next((c for c in status.get("conditions") or [] if c["type"] == "Accepted"), None)

    accepted = wait_for(accepted_condition, "the Accepted condition")
    assert accepted["status"] == "True"


def test_status_follows_the_jobs(operator, kube_emulator) -> None:
    body = capture("st", "web", {"nodeNames": ["node-1", "node-2"]}, {"hostPath": "x"})
    operator.create_namespaced_custom_object("retina.sh", "v1alpha1", "web", "captures", body)
    wait_for(lambda: len(kube_emulator.objects("Job", "web")) == 2, "two Jobs")
    first, second = (j["metadata"]["name"] for j in kube_emulator.objects("Job", "web"))

    def status() -> dict:
        return kube_emulator.objects("Capture", "web")[0].get("status") or {}

    kube_emulator.set_status("Job", "web", first, {"startTime": "2026-01-01T00:00:00Z", "active": 1})
    kube_emulator.set_status(
        "Job",
        "web",
        second,
        {
            "startTime": "2026-01-01T00:00:01Z",
            "failed": 1,
            "conditions": [
                {"type": "Failed", "status": "True", "lastTransitionTime": "2026-01-01T00:01:00Z"}
            ],
        },
    )
    # Job events are handled concurrently: the status converges on what both Jobs say.
    wait_for(
        lambda: (
            status().get("failed") == 1
            and status().get("active") == 1
            and status().get("startTime") == "2026-01-01T00:00:00Z"
        ),
        "one failed, one active, first start",
    )
    assert "completionTime" not in status()
    kube_emulator.set_status(
        "Job",
        "web",
        first,
        {
            "active": None,
            "succeeded": 1,
            "completionTime": "2026-01-01T00:01:05Z",
            "conditions": [{"type": "Complete", "status": "True"}],
        },
    )
    wait_for(lambda: status().get("succeeded") == 1 and status().get("active") == 0, "all finished")
    conditions = {c["type"]: c for c in status()["conditions"]}
    assert conditions["Failed"]["status"] == "True" and conditions["Running"]["status"] == "False"
    assert status()["completionTime"] == "2026-01-01T00:01:05Z"


@pytest.mark.parametrize(
    ("target", "output", "field"),
    [
        ({"nodeNames": ["node-1"]}, {"hostPath": "../../etc"}, "spec.outputConfiguration.hostPath"),
        (
            {"podSelector": {"matchLabels": {"app": "nothing"}}},
            {"hostPath": "x"},
            "spec.captureConfiguration.captureTarget.podSelector",
        ),
        ({"nodeNames": ["node-1"]}, {"hostPath": "x"}, "spec.captureConfiguration.captureOption.duration"),
    ],
)
def test_invalid_capture_gets_an_error_condition_naming_the_field(
    operator, kube_emulator, target, output, field
) -> None:
    body = capture("bad", "web", target, output)
    if field.endswith("duration"):
        body["spec"]["captureConfiguration"]["captureOption"] = {"duration": "0s"}
    operator.create_namespaced_custom_object("retina.sh", "v1alpha1", "web", "captures", body)

    def accepted() -> dict | None:
        conditions = (kube_emulator.objects("Capture", "web")[0].get("status") or {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == "Accepted"), None)

    condition = wait_for(accepted, "the Accepted condition")
    assert condition["status"] == "False" and condition["reason"] == "InvalidSpec"
    assert condition["message"].startswith(field + ":")
    assert kube_emulator.objects("Job") == []


def test_deleting_the_capture_removes_jobs_and_secrets(operator, kube_emulator, kube_api_client) -> None:
    core = kubernetes.client.CoreV1Api(kube_api_client)
    core.create_namespaced_secret(
        "web",
        {
            "metadata": {
                "name": "del-capture-credentials",
                "labels": {"retina.sh/app": "capture", "capture-name": "del"},
            },
            "data": {},
        },
    )
    core.create_namespaced_secret("web", {"metadata": {"name": "unrelated"}})
    body = capture("del", "web", {"nodeNames": ["node-1", "node-3"]}, {"hostPath": "x"})
    operator.create_namespaced_custom_object("retina.sh", "v1alpha1", "web", "captures", body)
    wait_for(lambda: len(kube_emulator.objects("Job", "web")) == 2, "two Jobs")
    operator.delete_namespaced_custom_object("retina.sh", "v1alpha1", "web", "captures", "del")
    wait_for(lambda: not kube_emulator.objects("Capture", "web"), "the Capture to go (finalizer released)")
    assert kube_emulator.objects("Job", "web") == []
    assert [s["metadata"]["name"] for s in kube_emulator.objects("Secret", "web")] == ["unrelated"]


def test_unknown_output_is_refused_by_the_api_schema(operator, kube_emulator) -> None:
    body = capture("bad", "web", {"nodeNames": ["node-1"]}, {"hostPath": "x", "ftpUpload": "y"})
    with pytest.raises(kubernetes.client.ApiException) as exc:
        operator.create_namespaced_custom_object("retina.sh", "v1alpha1", "web", "captures", body)
    assert exc.value.status == 422
    assert "spec.outputConfiguration" in exc.value.body and "ftpUpload" in exc.value.body
    assert kube_emulator.objects("Capture") == [] and kube_emulator.objects("Job") == []


@pytest.fixture
def job_limit_2(monkeypatch) -> None:
    """The operator's setting, as its Deployment gives it: in the environment before it starts."""
    monkeypatch.setenv("RETINA_OPERATOR_CAPTURE_JOB_NUM_LIMIT", "2")


def test_job_num_limit(job_limit_2, operator, kube_emulator) -> None:  # job_limit_2 first: set before start
    body = capture(
        "many", "web", {"nodeSelector": {"matchLabels": {"kubernetes.io/os": "linux"}}}, {"hostPath": "x"}
    )
    operator.create_namespaced_custom_object("retina.sh", "v1alpha1", "web", "captures", body)

    def accepted() -> dict | None:
        conditions = (kube_emulator.objects("Capture", "web")[0].get("status") or {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == "Accepted"), None)

    condition = wait_for(accepted, "the Accepted condition")
    assert condition["reason"] == "ExceedJobNumLimit"
    assert condition["message"] == "the number of capture jobs 3 exceeds the limit 2"
    assert kube_emulator.objects("Job") == []


def accepted_condition(kube_emulator) -> dict | None:
    conditions = (kube_emulator.objects("Capture", "web")[0].get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "Accepted"), None)


def test_bad_match_expression_is_an_error_condition_not_a_retry_loop(operator, kube_emulator) -> None:
    """The API answers 400 to a selector with a bad key; the operator says so on the Capture instead."""
    selector = {"matchExpressions": [{"key": "bad key!", "operator": "In", "values": ["web"]}]}
    body = capture("sel", "web", {"podSelector": selector}, {"hostPath": "x"})
    operator.create_namespaced_custom_object("retina.sh", "v1alpha1", "web", "captures", body)
    condition = wait_for(lambda: accepted_condition(kube_emulator), "the Accepted condition")
    assert condition["status"] == "False" and condition["reason"] == "InvalidSpec"
    assert condition["message"].startswith(
        "spec.captureConfiguration.captureTarget.podSelector: "
        "matchExpressions[0].key: 'bad key!' is not a label key"
    )
    assert kube_emulator.objects("Job") == []


def test_a_request_the_api_refuses_is_an_error_condition(operator, kube_emulator, monkeypatch) -> None:
    """A Job the API refuses (here: a name it calls invalid) is reported once, not retried for ever."""
    import retina_capture.jobs as jobs_mod

    real = jobs_mod.job_name
    monkeypatch.setattr(jobs_mod, "job_name", lambda name, node: real(name, node).upper())  # the API: 422
    body = capture("refused", "web", {"nodeNames": ["node-1"]}, {"hostPath": "x"})
    operator.create_namespaced_custom_object("retina.sh", "v1alpha1", "web", "captures", body)
    condition = wait_for(lambda: accepted_condition(kube_emulator), "the Accepted condition")
    assert condition["status"] == "False" and condition["reason"] == "Rejected"
    assert condition["message"].startswith("the API server refused it (422")
    assert kube_emulator.objects("Job") == []
