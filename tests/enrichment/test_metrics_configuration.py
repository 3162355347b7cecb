"""MetricsConfiguration: the CRD, the validation, and the live watch with status written back."""

from __future__ import annotations

import copy
import logging
import queue
from collections.abc import Iterator
from pathlib import Path

import kubernetes
import pytest

from retina_agent.enrichment import (
    MetricsConfigurationWatcher,
    MetricsSpec,
    SpecError,
    validate_spec,
)
from retina_lab.kube import KubeEmulator
from retina_lab.manifests import ManifestError, load_crds, validate_manifest
from tests.enrichment.cluster import wait_for

CRD_FILE = (
    Path(__file__).parents[2] / "collections/retina/roles/agent/files/crds/"
    "retina.sh_metricsconfigurations.yaml"
)
GROUP, VERSION, PLURAL = "retina.sh", "v1alpha1", "metricsconfigurations"
JSON_PATCH = "application/json-patch+json"

GOOD_SPEC = {
    "contextOptions": [
        {
            "metricName": "forward_count",
            "sourceLabels": ["ip", "podname", "workload"],
            "destinationLabels": ["ip", "namespace", "port"],
            "additionalLabels": ["direction"],
            "ttl": "24h",
        },
        {"metricName": "drop_count", "sourceLabels": ["podname"]},
    ],
    "namespaces": {"include": ["shop"]},
}


def config(name: str, spec: dict) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "MetricsConfiguration",
        "metadata": {"name": name},
        "spec": copy.deepcopy(spec),
    }


def with_change(path: str, value: object) -> dict:
    """GOOD_SPEC with one value replaced (``contextOptions.0.ttl``)."""
    spec = copy.deepcopy(GOOD_SPEC)
    *parents, last = path.split(".")
    node = spec
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    node[int(last) if last.isdigit() else last] = value
    return spec


# -- validation ------------------------------------------------------------------------------


def test_valid_spec() -> None:
    spec = validate_spec(GOOD_SPEC)
    forward = spec.context_options["forward_count"]
    assert forward.source_labels == ("ip", "podname", "workload")
    assert forward.additional_labels == ("direction",)
    assert forward.ttl_seconds == 86400
    assert spec.context_options["drop_count"].ttl_seconds == 0  # never expires
    assert spec.namespace_selected("shop") and not spec.namespace_selected("other")
    everything = validate_spec({**GOOD_SPEC, "namespaces": {"exclude": ["kube-system"]}})
    assert everything.namespace_selected("shop") and not everything.namespace_selected("kube-system")
    # Retina's own metric names map to this agent's
    retina = validate_spec(with_change("contextOptions.1.metricName", "tcp_retransmission_count"))
    assert "tcpretrans_count" in retina.context_options


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        (None, "spec", "missing"),
        ({**GOOD_SPEC, "contextOptions": []}, "spec.contextOptions", "at least one"),
        ({"namespaces": {"include": ["a"]}}, "spec.contextOptions", "required"),
        (
            with_change("contextOptions.0.metricName", "bogus"),
            "spec.contextOptions[0].metricName",
            "not an advanced metric",
        ),
        (
            with_change("contextOptions.1.metricName", "forward_count"),
            "spec.contextOptions[1].metricName",
            "twice",
        ),
        (
            with_change("contextOptions.0.sourceLabels", ["ip", "pod_name"]),
            "spec.contextOptions[0].sourceLabels[1]",
            "unknown label 'pod_name'",
        ),
        (
            with_change("contextOptions.0.additionalLabels", ["colour"]),
            "spec.contextOptions[0].additionalLabels[0]",
            "unknown label",
        ),
        (with_change("contextOptions.0.ttl", "-5m"), "spec.contextOptions[0].ttl", "negative"),
        (with_change("contextOptions.0.ttl", "soon"), "spec.contextOptions[0].ttl", "not a duration"),
        (with_change("namespaces", {"include": ["a"], "exclude": ["b"]}), "spec.namespaces", "both"),
        (with_change("namespaces", {}), "spec.namespaces", "neither"),
        (with_change("namespaces", {"include": []}), "spec.namespaces.include", "exclude: []"),
    ],
)
def test_invalid_spec_names_the_field(spec: dict, field: str, words: str) -> None:
    with pytest.raises(SpecError) as caught:
        validate_spec(spec)
    assert caught.value.field == field
    assert words in caught.value.message
    assert str(caught.value).startswith(f"{field}: ")


# -- the CRD manifest ------------------------------------------------------------------------


def test_crd_manifest_is_valid_and_rejects_bad_shapes() -> None:
    crds = load_crds([CRD_FILE])
    assert len(crds) == 1
    validate_manifest(crds[0])
    validate_manifest(config("good", GOOD_SPEC), crds=crds)
    bad = [
        {"namespaces": {"include": ["a"]}},  # no contextOptions
        {**GOOD_SPEC, "contextOptions": "forward_count"},  # not a list
        with_change("contextOptions.0.ttl", 3600),  # not a string
        with_change("contextOptions.0.sourceLabels", "ip"),  # not a list
        {**GOOD_SPEC, "namespace": {"include": ["a"]}},  # misspelt field
        {**GOOD_SPEC, "contextOptions": [{"sourceLabels": ["ip"]}]},  # no metricName
    ]
    for spec in bad:
        with pytest.raises(ManifestError):
            validate_manifest(config("bad", spec), crds=crds)


# -- the live watch --------------------------------------------------------------------------


@pytest.fixture
def custom(
    kube_emulator: KubeEmulator, kube_api_client: kubernetes.client.ApiClient
) -> kubernetes.client.CustomObjectsApi:
    """The emulator with the MetricsConfiguration CRD installed (through the API)."""
    ext = kubernetes.client.ApiextensionsV1Api(kube_api_client)
    ext.create_custom_resource_definition(load_crds([CRD_FILE])[0])
    return kubernetes.client.CustomObjectsApi(kube_api_client)


@pytest.fixture
def watcher(
    custom: kubernetes.client.CustomObjectsApi, agent_api_client: kubernetes.client.ApiClient
) -> Iterator[MetricsConfigurationWatcher]:
    """The agent's watcher with the agent's identity (retina-agent token, rendered RBAC)."""
    w = MetricsConfigurationWatcher(agent_api_client)
    w.start()
    try:
        assert w.wait_synced(10)
        yield w
    finally:
        w.stop()


def status_of(kube: KubeEmulator, name: str) -> dict:
    found = [o for o in kube.objects("MetricsConfiguration") if o["metadata"]["name"] == name]
    return (found[0].get("status") or {}) if found else {}


def wait_state(kube: KubeEmulator, name: str, state: str) -> dict:
    return wait_for(
        lambda: (s := status_of(kube, name)).get("state") == state and s,
        what=f"{name} to be {state} (now {status_of(kube, name)})",
    )


def test_live_configuration(
    kube_emulator: KubeEmulator,
    custom: kubernetes.client.CustomObjectsApi,
    watcher: MetricsConfigurationWatcher,
) -> None:
    seen: queue.Queue[MetricsSpec | None] = queue.Queue()
    watcher.subscribe(seen.put)
    assert watcher.current() is None

    custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, config("first", GOOD_SPEC))
    status = wait_state(kube_emulator, "first", "Accepted")
    assert status["lastKnownSpec"] == GOOD_SPEC
    accepted = validate_spec(GOOD_SPEC)
    assert watcher.current() == accepted and watcher.in_force == "first"
    assert seen.get(timeout=5) == accepted

    # a second one: Retina uses only one
    other = with_change("namespaces", {"exclude": ["kube-system"]})
    custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, config("second", other))
    assert "'first' is in force" in wait_state(kube_emulator, "second", "Warning")["reason"]
    assert watcher.current() == accepted

    # invalid edits of the one in force: Errored, naming the field; the previous spec stays
    for bad, field in [
        (with_change("namespaces", {"include": ["shop"], "exclude": ["db"]}), "spec.namespaces"),
        ({**GOOD_SPEC, "contextOptions": []}, "spec.contextOptions"),
        (with_change("contextOptions.0.ttl", "-1h"), "spec.contextOptions[0].ttl"),
        (
            with_change("contextOptions.1.destinationLabels", ["pod"]),
            "spec.contextOptions[1].destinationLabels[0]",
        ),
    ]:
        custom.patch_cluster_custom_object(
            GROUP,
            VERSION,
            PLURAL,
            "first",
            [{"op": "replace", "path": "/spec", "value": bad}],
            _content_type=JSON_PATCH,
        )
        status = wait_for(
            lambda f=field: (
                (s := status_of(kube_emulator, "first")).get("state") == "Errored"
                and s["reason"].startswith(f + ":")
                and s
            ),
            what=f"Errored naming {field}",
        )
        assert "previous spec stays in force" in status["reason"]
        assert status["lastKnownSpec"] == GOOD_SPEC
        assert watcher.current() == accepted and watcher.in_force == "first"

    # fixed: Accepted again, the new spec in force, subscribers told
    fixed = with_change("namespaces", {"include": ["shop", "db"]})
    custom.patch_cluster_custom_object(
        GROUP,
        VERSION,
        PLURAL,
        "first",
        [{"op": "replace", "path": "/spec", "value": fixed}],
        _content_type=JSON_PATCH,
    )
    assert wait_state(kube_emulator, "first", "Accepted")["lastKnownSpec"] == fixed
    assert watcher.current() == validate_spec(fixed)
    assert wait_for(lambda: _drain(seen) == validate_spec(fixed), what="subscriber told")

    # the one in force deleted: the other takes over
    custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, "first")
    wait_state(kube_emulator, "second", "Accepted")
    assert watcher.current() == validate_spec(other) and watcher.in_force == "second"
    custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, "second")
    wait_for(lambda: watcher.current() is None, what="no configuration in force")


def _drain(q: queue.Queue) -> object:
    last = None
    while not q.empty():
        last = q.get_nowait()
    return last


def test_invalid_first_configuration_changes_nothing(
    kube_emulator: KubeEmulator,
    custom: kubernetes.client.CustomObjectsApi,
    watcher: MetricsConfigurationWatcher,
) -> None:
    custom.create_cluster_custom_object(
        GROUP,
        VERSION,
        PLURAL,
        config("broken", with_change("contextOptions.0.sourceLabels", ["ip", "nodename"])),
    )
    status = wait_state(kube_emulator, "broken", "Errored")
    assert status["reason"].startswith("spec.contextOptions[0].sourceLabels[1]: unknown label 'nodename'")
    assert watcher.current() is None


def test_oldest_configuration_wins_at_start(
    kube_emulator: KubeEmulator,
    custom: kubernetes.client.CustomObjectsApi,
    agent_api_client: kubernetes.client.ApiClient,
) -> None:
    kube_emulator.seed(
        [
            {
                **config("newer", GOOD_SPEC),
                "metadata": {"name": "newer", "creationTimestamp": "2024-05-02T00:00:00Z"},
            },
            {
                **config("older", with_change("namespaces", {"include": ["db"]})),
                "metadata": {"name": "older", "creationTimestamp": "2024-05-01T00:00:00Z"},
            },
        ]
    )
    w = MetricsConfigurationWatcher(agent_api_client)
    w.start()
    try:
        wait_state(kube_emulator, "older", "Accepted")
        wait_state(kube_emulator, "newer", "Warning")
        assert w.current().include_namespaces == {"db"}
    finally:
        w.stop()


def test_without_the_crd_the_defaults_are_in_force_until_it_is_installed(
    kube_api_client: kubernetes.client.ApiClient,
    agent_api_client: kubernetes.client.ApiClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No CRD: the API server's 404 settles start-up at once (the agent does not wait for a
    configuration that cannot exist); the watch retries and picks up one created later."""
    caplog.set_level(logging.WARNING, logger="retina_agent.enrichment.reflector")
    w = MetricsConfigurationWatcher(agent_api_client)
    w.start()
    try:
        assert w.wait_synced(10), "a 404 answers the question: no MetricsConfiguration"
        assert w.current() is None and not w.connected
        said = [r.getMessage() for r in caplog.records]
        assert any("is its CRD installed?" in m for m in said), said
        assert not any("lost the API server" in m for m in said), "the API server answered: not lost"
        ext = kubernetes.client.ApiextensionsV1Api(kube_api_client)
        ext.create_custom_resource_definition(load_crds([CRD_FILE])[0])
        kubernetes.client.CustomObjectsApi(kube_api_client).create_cluster_custom_object(
            GROUP, VERSION, PLURAL, config("late", GOOD_SPEC)
        )
        wait_for(lambda: w.current() == validate_spec(GOOD_SPEC), 20, "the configuration created later")
        assert w.in_force == "late" and w.connected
    finally:
        w.stop()
