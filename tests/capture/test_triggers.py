"""Alert-triggered capture: CaptureTriggers, the operator's Alertmanager webhook, Capture expiry.

The operator runs for real (kopf) against the Kubernetes API emulator over HTTP; webhooks are
posted by ``requests`` and, end to end, by a real Alertmanager.
"""

from __future__ import annotations

import datetime
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import requests
import yaml
from kopf.testing import KopfRunner

from retina_capture.spec import SpecError
from retina_capture.triggers.model import LABEL_FINGERPRINT, LABEL_TRIGGER, parse_trigger
from retina_lab.agent import free_port, wait_for
from retina_lab.alertmanager import AlertmanagerServer
from retina_lab.manifests import validate_manifest
from tests import kube_fixtures
from tests.kube_fixtures import (
    OPERATOR_USER,
    capture_user_kubeconfig_for,
    operator_kubeconfig_for,
    refusals_of,
    small_cluster,
)

kube_emulator = kube_fixtures.kube_emulator
kube_api_client = kube_fixtures.kube_api_client

REPO = Path(__file__).parents[2]
CRDS = REPO / "collections/retina/roles/agent/files/crds"
TRIGGER_CRD = yaml.safe_load((CRDS / "retina.sh_capturetriggers.yaml").read_text())
CAPTURE_CRD = yaml.safe_load((CRDS / "retina.sh_captures.yaml").read_text())
EXAMPLES = sorted((REPO / "deploy/alertmanager/triggers").glob("*.yaml"))
TOKEN = "s3cret-token-for-alertmanager"
GROUP, VERSION = "retina.sh", "v1alpha1"


def trigger(name: str = "drops", namespace: str = "web", **spec: Any) -> dict[str, Any]:
    body = {
        "alertMatchers": [{"name": "alertname", "value": "RetinaPodDrops"}],
        "captureTemplate": {
            "captureConfiguration": {"captureOption": {"duration": "30s"}},
            "outputConfiguration": {"hostPath": "alerts"},
        },
        "cooldown": "10m",
        "maxConcurrentCaptures": 2,
        **spec,
    }
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "CaptureTrigger",
        "metadata": {"name": name, "namespace": namespace},
        "spec": body,
    }


def notification(*alerts: dict[str, Any]) -> dict[str, Any]:
    """Alertmanager's webhook body, version 4."""
    return {
        "version": "4",
        "groupKey": "{}:{}",
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "retina",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager",
        "alerts": list(alerts),
    }


def alert(status: str = "firing", fingerprint: str = "a1b2c3d4e5f60718", **labels: str) -> dict[str, Any]:
    return {
        "status": status,
        "labels": {"alertname": "RetinaPodDrops", **labels},
        "annotations": {},
        "startsAt": "2026-11-30T10:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus/graph",
        "fingerprint": fingerprint,
    }


# -- the resource --------------------------------------------------------------------------------
def test_crd_and_shipped_examples_are_valid() -> None:
    validate_manifest(TRIGGER_CRD)
    assert EXAMPLES, "deploy/alertmanager ships example CaptureTriggers"
    for path in EXAMPLES:
        body = yaml.safe_load(path.read_text())
        validate_manifest(body, crds=[TRIGGER_CRD])
        parsed = parse_trigger(body)
        assert parsed.matchers, path


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"alertMatchers": []}, "spec.alertMatchers"),
        (
            {"alertMatchers": [{"name": "alertname", "value": "(", "matchType": "=~"}]},
            "spec.alertMatchers[0].value",
        ),
        ({"alertMatchers": [{"name": "bad-name", "value": "x"}]}, "spec.alertMatchers[0].name"),
        ({"cooldown": "soon"}, "spec.cooldown"),
        ({"captureExpiry": "1s"}, "spec.captureExpiry"),
        ({"maxConcurrentCaptures": 0}, "spec.maxConcurrentCaptures"),
        (
            {"captureTemplate": {"captureConfiguration": {}, "outputConfiguration": {"hostPath": "/abs"}}},
            "spec.captureTemplate.outputConfiguration.hostPath",
        ),
        (
            {"targetLabels": {"pairs": [{"namespace": "ns", "pod": "not a label"}]}},
            "spec.targetLabels.pairs[0].pod",
        ),
    ],
)
def test_bad_trigger_is_refused_naming_the_field(change: dict, field: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_trigger(trigger(**change))
    assert field in [p.field for p in info.value.problems], info.value


def test_matchers_follow_alertmanager_rules() -> None:
    t = parse_trigger(
        trigger(
            alertMatchers=[
                {"name": "alertname", "value": "Retina.*", "matchType": "=~"},
                {"name": "severity", "value": "info", "matchType": "!="},
                {"name": "namespace", "value": "kube-.*", "matchType": "!~"},
            ]
        )
    )
    assert t.matches({"alertname": "RetinaDrops", "severity": "warning", "namespace": "shop"})
    assert not t.matches({"alertname": "xRetinaDrops", "namespace": "shop"})  # anchored
    assert not t.matches({"alertname": "RetinaDrops", "severity": "info", "namespace": "shop"})
    assert not t.matches({"alertname": "RetinaDrops", "namespace": "kube-system"})
    assert t.matches({"alertname": "RetinaDrops"})  # a missing label is the empty string


def test_a_namespace_target_leaves_host_network_pods_out_of_the_filter(
    kube_emulator, kube_api_client
) -> None:
    """A host-network pod's IP is its node's: in the include filter it would capture every packet
    of the node (found end to end: a retina-system alert captured the agent pod's 127.0.0.1)."""
    from retina_capture.triggers.decide import TriggerEngine

    small_cluster(kube_emulator)
    ext = kubernetes.client.ApiextensionsV1Api(kube_api_client)
    ext.create_custom_resource_definition(CAPTURE_CRD)
    ext.create_custom_resource_definition(TRIGGER_CRD)
    host_pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "node-agent", "namespace": "web"},
        "spec": {
            "nodeName": "node-1",
            "hostNetwork": True,
            "containers": [{"name": "c", "image": "busybox"}],
        },
        "status": {"phase": "Running", "podIP": "192.168.0.11"},
    }
    in_ops = {**host_pod, "metadata": {"name": "node-agent", "namespace": "ops"}}
    kube_emulator.seed(
        [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ops"}}, host_pod, in_ops]
    )
    body = trigger(name="ns", namespace="web")
    kubernetes.client.CustomObjectsApi(kube_api_client).create_namespaced_custom_object(
        GROUP, VERSION, "web", "capturetriggers", body
    )
    engine = TriggerEngine(kube_api_client)
    spec = parse_trigger(body)
    made = engine.handle(spec, alert(namespace="web"))
    assert made is not None and made.result == "Created", made
    [capture] = kube_emulator.objects("Capture", "web")
    config = capture["spec"]["captureConfiguration"]
    assert config["filters"]["include"] == ["10.244.1.10", "10.244.2.10"]  # pods a and b, not 192.168.0.11
    assert config["captureTarget"] == {"nodeNames": ["node-1", "node-2"]}
    # a namespace of host-network pods only: no Capture, and the reason says why
    none = engine.handle(spec, alert(fingerprint="ff", namespace="ops"))
    assert none is not None and none.result == "TargetNotFound", none
    assert "only host-network pods" in none.reason
    assert len(kube_emulator.objects("Capture", "web")) == 1


# -- the operator and its webhook ----------------------------------------------------------------
@pytest.fixture
def operator(kube_emulator, kube_api_client, monkeypatch, tmp_path) -> Iterator[dict[str, Any]]:
    small_cluster(kube_emulator)
    ext = kubernetes.client.ApiextensionsV1Api(kube_api_client)
    ext.create_custom_resource_definition(CAPTURE_CRD)
    ext.create_custom_resource_definition(TRIGGER_CRD)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    port = free_port()
    # The operator runs as its ServiceAccount with the rendered RBAC; triggers are made by a user
    # bound as capture users are (the README's retina-capture roles).
    monkeypatch.setenv("KUBECONFIG", str(operator_kubeconfig_for(kube_emulator)))
    user = kubernetes.config.new_client_from_config(
        config_file=str(capture_user_kubeconfig_for(kube_emulator))
    )
    monkeypatch.setenv("RETINA_OPERATOR_WEBHOOK_TOKEN_FILE", str(token_file))
    monkeypatch.setenv("RETINA_OPERATOR_WEBHOOK_ADDRESS", "127.0.0.1")
    monkeypatch.setenv("RETINA_OPERATOR_WEBHOOK_PORT", str(port))
    argv = ["run", "--all-namespaces", "--standalone", "-m", "retina_capture.operator.handlers"]
    url = f"http://127.0.0.1:{port}"
    with KopfRunner(argv, timeout=90) as runner:
        wait_for(lambda: requests.get(url + "/healthz", timeout=2).ok, 30, 0.2, "the webhook receiver")
        yield {"url": url, "custom": kubernetes.client.CustomObjectsApi(user), "runner": runner}
    assert runner.exception is None, runner.output
    assert refusals_of(kube_emulator, OPERATOR_USER) == [], "the operator's RBAC lacks what triggers use"


def post(url: str, body: Any, token: str | None = TOKEN) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(url, data=data, headers=headers, timeout=30)


def accepted(kube, namespace: str, name: str) -> dict | None:
    for obj in kube.objects("CaptureTrigger", namespace):
        if obj["metadata"]["name"] == name:
            return next(
                (c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == "Accepted"),
                None,
            )
    return None


def test_webhook_creates_captures_with_cooldown_cap_and_reasons(operator, kube_emulator) -> None:
    custom, url = operator["custom"], operator["url"]
    custom.create_namespaced_custom_object(GROUP, VERSION, "web", "capturetriggers", trigger())
    assert wait_for(lambda: accepted(kube_emulator, "web", "drops"), 20, 0.1, "Accepted")["status"] == "True"
    hook = f"{url}/v1/triggers/web/drops"
    pair = alert(
        source_namespace="web", source_podname="a", destination_namespace="web", destination_podname="b"
    )

    # Refused requests change nothing.
    assert post(hook, notification(pair), token=None).status_code == 401
    assert post(hook, notification(pair), token="wrong").status_code == 401
    assert post(hook, "not json").status_code == 400
    bad = post(hook, {**notification(pair), "version": "3"})
    assert bad.status_code == 400 and "version" in bad.text
    bad = post(hook, notification({**pair, "labels": {"alertname": 5}}))
    assert bad.status_code == 400 and "alerts[0].labels" in bad.text
    assert post(f"{url}/v1/triggers/web/nope", notification(pair)).status_code == 404
    assert kube_emulator.objects("Capture", "web") == []

    # A firing alert for a pod pair: one Capture on both pods' nodes, keeping both pods' IPs.
    answer = post(hook, notification(pair))
    assert answer.status_code == 200, answer.text
    [decision] = answer.json()["decisions"]
    assert decision["result"] == "Created", decision
    [capture] = kube_emulator.objects("Capture", "web")
    assert capture["metadata"]["name"] == decision["capture"]
    assert capture["metadata"]["name"].startswith("retinapoddrops-")
    assert capture["metadata"]["labels"][LABEL_FINGERPRINT] == "a1b2c3d4e5f60718"
    assert capture["metadata"]["labels"][LABEL_TRIGGER] == "drops"
    config = capture["spec"]["captureConfiguration"]
    assert config["captureTarget"] == {"nodeNames": ["node-1", "node-2"]}
    assert config["filters"]["include"] == ["10.244.1.10", "10.244.2.10"]
    assert capture["spec"]["outputConfiguration"] == {"hostPath": "alerts"}
    # The operator turns it into Jobs, as any Capture.
    wait_for(lambda: len(kube_emulator.objects("Job", "web")) == 2, 30, 0.1, "two capture Jobs")

    # The same alert again, within the cooldown: nothing new, and the status says why.
    [again] = post(hook, notification(pair)).json()["decisions"]
    assert again["result"] == "Cooldown" and "cooldown is 600s" in again["reason"]
    assert len(kube_emulator.objects("Capture", "web")) == 1

    # Another target: created; a third while two run: capped.
    [second] = post(hook, notification(alert(fingerprint="ff01", namespace="db", pod="c"))).json()[
        "decisions"
    ]
    assert second["result"] == "Created"
    [third] = post(hook, notification(alert(fingerprint="ff02", node="node-3"))).json()["decisions"]
    assert third["result"] == "Capped" and "maxConcurrentCaptures 2" in third["reason"]
    # No target in the labels, a pod that does not exist, a resolved alert.
    [none] = post(hook, notification(alert(fingerprint="ff03"))).json()["decisions"]
    assert none["result"] == "NoTarget"
    [resolved] = post(hook, notification(alert(status="resolved", namespace="db", pod="c"))).json()[
        "decisions"
    ]
    assert resolved["result"] == "Ignored"
    assert len(kube_emulator.objects("Capture", "web")) == 2
    # An alert that does not match the trigger: no decision at all.
    other = {
        **alert(namespace="db", pod="c"),
        "labels": {"alertname": "Other", "namespace": "db", "pod": "c"},
    }
    assert post(hook, notification(other)).json()["decisions"] == []

    [obj] = kube_emulator.objects("CaptureTrigger", "web")
    status = obj["status"]
    assert status["lastAction"]["result"] == "Ignored"
    assert status["counts"] == {"Created": 2, "Cooldown": 1, "Capped": 1, "NoTarget": 1, "Ignored": 1}
    assert len(status["targets"]) == 2


def test_missing_pod_is_reported_and_invalid_trigger_answers_409(operator, kube_emulator) -> None:
    custom, url = operator["custom"], operator["url"]
    custom.create_namespaced_custom_object(GROUP, VERSION, "web", "capturetriggers", trigger())
    bad = trigger("broken", alertMatchers=[{"name": "alertname", "value": "(", "matchType": "=~"}])
    custom.create_namespaced_custom_object(GROUP, VERSION, "web", "capturetriggers", bad)
    condition = wait_for(lambda: accepted(kube_emulator, "web", "broken"), 20, 0.1, "Accepted=False")
    assert condition["status"] == "False" and "spec.alertMatchers[0].value" in condition["message"]
    wait_for(lambda: accepted(kube_emulator, "web", "drops"), 20, 0.1, "Accepted")
    refused = post(f"{url}/v1/triggers/web/broken", notification(alert(namespace="web", pod="a")))
    assert refused.status_code == 409 and "spec.alertMatchers[0].value" in refused.text

    [missing] = post(f"{url}/v1/triggers/web/drops", notification(alert(namespace="web", pod="gone"))).json()[
        "decisions"
    ]
    assert missing["result"] == "TargetNotFound" and "web/gone" in missing["reason"]
    # /v1/alerts asks every valid trigger; the broken one is skipped.
    [decision] = post(f"{url}/v1/alerts", notification(alert(node="node-3"))).json()["decisions"]
    assert decision["trigger"] == "web/drops" and decision["result"] == "Created"


def test_expired_capture_is_deleted(operator, kube_emulator) -> None:
    past = (datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=1)).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    future = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    for name, expires in (("old", past), ("young", future)):
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Capture",
            "metadata": {"name": name, "namespace": "web", "annotations": {"retina.sh/expires-at": expires}},
            "spec": {
                "captureConfiguration": {"captureTarget": {"nodeNames": ["node-1"]}},
                "outputConfiguration": {"hostPath": "x"},
            },
        }
        operator["custom"].create_namespaced_custom_object(GROUP, VERSION, "web", "captures", body)
    wait_for(
        lambda: [c["metadata"]["name"] for c in kube_emulator.objects("Capture", "web")] == ["young"],
        40,
        0.2,
        "the expired capture to be deleted",
    )


def test_real_alertmanager_posts_to_the_operator(operator, kube_emulator, tmp_path) -> None:
    """Alertmanager's own webhook client, with its bearer token from a file, reaches the trigger."""
    operator["custom"].create_namespaced_custom_object(GROUP, VERSION, "web", "capturetriggers", trigger())
    wait_for(lambda: accepted(kube_emulator, "web", "drops"), 20, 0.1, "Accepted")
    credentials = tmp_path / "am-token"
    credentials.write_text(TOKEN)
    config = {
        "route": {
            "receiver": "retina-web-drops",
            "group_by": ["alertname", "namespace", "pod"],
            "group_wait": "0s",
            "group_interval": "1s",
            "repeat_interval": "1h",
        },
        "receivers": [
            {
                "name": "retina-web-drops",
                "webhook_configs": [
                    {
                        "url": f"{operator['url']}/v1/triggers/web/drops",
                        "send_resolved": True,
                        "http_config": {
                            "authorization": {"type": "Bearer", "credentials_file": str(credentials)}
                        },
                    }
                ],
            }
        ],
    }
    with AlertmanagerServer(config) as am:
        started = time.monotonic()
        am.post_alerts(
            [
                {
                    "labels": {"alertname": "RetinaPodDrops", "namespace": "web", "pod": "a"},
                    "annotations": {"summary": "drops"},
                    "generatorURL": "http://prometheus/graph",
                }
            ]
        )
        [capture] = wait_for(
            lambda: kube_emulator.objects("Capture", "web"), 60, 0.1, "a Capture from Alertmanager"
        )
        elapsed = time.monotonic() - started
    assert capture["spec"]["captureConfiguration"]["captureTarget"] == {"nodeNames": ["node-1"]}
    assert capture["spec"]["captureConfiguration"]["filters"]["include"] == ["10.244.1.10"]
    assert capture["metadata"]["labels"][LABEL_FINGERPRINT]  # Alertmanager's own fingerprint
    # kopf's runner swaps sys.stdout while it runs: the figure goes to a file when asked for.
    if os.environ.get("RETINA_TIMING_FILE"):
        with open(os.environ["RETINA_TIMING_FILE"], "a") as fh:
            fh.write(f"alert posted to Alertmanager -> Capture created: {elapsed:.2f} s\n")
    assert elapsed < 60


# -- the installer -------------------------------------------------------------------------------
def test_agent_role_renders_the_webhook_and_example_triggers() -> None:
    from tests.kube_fixtures import rendered_agent_objects

    plain = rendered_agent_objects()
    assert not [
        o
        for o in plain
        if o["kind"] in ("CaptureTrigger", "Service")
        and o["metadata"]["name"].startswith(("retina-capture-webhook", "namespace-drops"))
    ]
    objects = rendered_agent_objects(
        agent_capture_webhook_enabled=True,
        agent_capture_triggers_examples=True,
        agent_capture_webhook_port=9443,
    )
    crds = [o for o in objects if o["kind"] == "CustomResourceDefinition"]
    for obj in objects:
        validate_manifest(obj, crds=crds)
    [deployment] = [
        o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "retina-operator"
    ]
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["RETINA_OPERATOR_WEBHOOK_TOKEN_FILE"] == "/etc/retina/webhook/token"
    assert env["RETINA_OPERATOR_WEBHOOK_PORT"] == "9443"
    assert container["ports"] == [{"name": "webhook", "containerPort": 9443, "protocol": "TCP"}]
    [volume] = [v for v in pod["volumes"] if v["name"] == "webhook-token"]
    assert volume["secret"]["secretName"] == "retina-capture-webhook"
    [service] = [
        o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == "retina-capture-webhook"
    ]
    assert service["spec"]["ports"][0]["port"] == 9443
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    triggers = sorted(o["metadata"]["name"] for o in objects if o["kind"] == "CaptureTrigger")
    assert triggers == sorted(yaml.safe_load(p.read_text())["metadata"]["name"] for p in EXAMPLES)
    for t in (o for o in objects if o["kind"] == "CaptureTrigger"):
        parse_trigger(t)
        assert t["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "retina-installer"
