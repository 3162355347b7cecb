"""Every manifest the installer roles render is valid Kubernetes for the versions we claim, and
says what the contract says (capabilities per plugin, probes, mounts, RBAC, scrape job)."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.helpers.tools import require
from tests.installer.ansible_run import COLLECTION, KUBERNETES_VERSIONS, REPO, TEST_PLAYBOOKS, run_playbook

EBPF_CAPS = {"BPF", "PERFMON", "SYS_RESOURCE"}
DASHBOARDS = COLLECTION / "roles" / "dashboards" / "files" / "dashboards"
Obj = dict[str, Any]
Rendered = dict[str, list[Obj]]


def render(tmp_path: Path, **options: Any) -> Rendered:
    """Render all roles into tmp_path/out; returns the manifests per role, in file order."""
    out = tmp_path / "out"
    proc = run_playbook(TEST_PLAYBOOKS / "render.yml", tmp_path, {"manifest_dir": str(out), **options})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    rendered: Rendered = {}
    for role_dir in sorted(out.iterdir()):
        docs = [doc for f in sorted(role_dir.glob("*.yaml")) for doc in yaml.safe_load_all(f.read_text())]
        # scrape-job.yaml and helm-values.yaml are Prometheus/Helm files, not Kubernetes objects
        rendered[role_dir.name] = [d for d in docs if isinstance(d, dict) and "kind" in d]
    return rendered


@pytest.fixture(scope="module")
def default_render(tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    return render(tmp_path_factory.mktemp("render"))


def by_kind(manifests: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = [
        m for m in manifests if m.get("kind") == kind and (name is None or m["metadata"]["name"] == name)
    ]
    names = [m["metadata"]["name"] for m in found]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {names}"
    return found[0]


def agent_container(manifests: list[Obj]) -> Obj:
    return by_kind(manifests, "DaemonSet", "retina-agent")["spec"]["template"]["spec"]["containers"][0]


def validate_all(manifests: list[Obj]) -> list[str]:
    """kubernetes-validate (strict) for every claimed version; returns the kinds validated."""
    validated = []
    for manifest in manifests:
        if manifest.get("apiVersion", "").startswith(("monitoring.coreos.com/", "retina.sh/")):
            continue  # custom resources: no schema in kubernetes-validate (checked separately)
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(manifest, version, strict=True)
        validated.append(manifest["kind"])
    return validated


def test_every_manifest_passes_kubernetes_validate(default_render: Rendered) -> None:
    kinds = validate_all([m for role in default_render.values() for m in role])
    for kind in (
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "DaemonSet",
        "Service",
        "Deployment",
        "CustomResourceDefinition",
    ):
        assert kind in kinds, f"{kind} was not rendered"


@pytest.mark.parametrize("mode", ["additional_scrape_config", "helm_values"])
def test_other_prometheus_modes_validate(tmp_path: Path, mode: str) -> None:
    rendered = render(tmp_path, render_prometheus_mode=mode)
    validate_all(rendered["prometheus"])
    if mode == "additional_scrape_config":
        secret = by_kind(rendered["prometheus"], "Secret")
        jobs = yaml.safe_load(base64.b64decode(secret["data"]["retina-scrape-configs.yaml"]))
    else:
        values = yaml.safe_load((tmp_path / "out" / "prometheus" / "helm-values.yaml").read_text())
        jobs = values["prometheus"]["prometheusSpec"]["additionalScrapeConfigs"]
    assert [job["job_name"] for job in jobs] == ["retina-pods"]
    # the relabelling is the repository's one scrape job, deploy/prometheus/retina-pods.scrape.yaml
    reference = yaml.safe_load((REPO / "deploy" / "prometheus" / "retina-pods.scrape.yaml").read_text())
    assert jobs[0]["relabel_configs"] == reference[0]["relabel_configs"]
    assert jobs[0]["kubernetes_sd_configs"] == [{"role": "pod", "namespaces": {"names": ["retina-system"]}}]


def test_pod_level_variant_validates_and_adds_metricsconfiguration(tmp_path: Path) -> None:
    rendered = render(
        tmp_path,
        agent_pod_level=True,
        agent_metrics_namespaces={"include": ["default", "web"]},
        agent_plugins=["linuxutil", "packetparser", "dns"],
        agent_priority_class_name="system-node-critical",
        agent_operator_enabled=False,
    )
    agent = rendered["agent"]
    validate_all(agent)
    mc = by_kind(agent, "MetricsConfiguration", "retina-metrics")
    # the custom resource against its own CRD's schema (kubernetes-validate has none for it)
    crd = by_kind(agent, "CustomResourceDefinition", "metricsconfigurations.retina.sh")
    version = next(v for v in crd["spec"]["versions"] if v["name"] == mc["apiVersion"].split("/")[1])
    jsonschema.validate(mc, version["schema"]["openAPIV3Schema"])
    assert mc["spec"]["namespaces"] == {"include": ["default", "web"]}
    defaults = yaml.safe_load((COLLECTION / "roles" / "agent" / "defaults" / "main.yml").read_text())
    assert mc["spec"]["contextOptions"] == defaults["agent_metrics_context_options"]  # verbatim
    # the agent accepts the installed spec (the default once named "dns", which the agent refuses:
    # the whole MetricsConfiguration was Errored and no pod-level metric was made; e2e found it)
    from retina_agent.enrichment.metricsconfig import validate_spec

    validate_spec(mc["spec"])
    pod = by_kind(agent, "DaemonSet")["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "system-node-critical"
    assert not [m for m in agent if m["kind"] == "Deployment"], "operator disabled, yet rendered"
    assert not [m for m in agent if m["metadata"]["name"] == "retina-operator"]
    config = yaml.safe_load(by_kind(agent, "ConfigMap", "retina-config")["data"]["config.yaml"])
    assert config["enablePodLevel"] is True
    assert config["enabledPlugin"] == ["linuxutil", "packetparser", "dns"]


def test_default_metricsconfiguration_gives_the_labels_the_pod_dashboards_select(tmp_path: Path) -> None:
    """Every label the shipped pod-traffic dashboard selects or groups adv_ metrics by is one the
    agent makes under the installer's default MetricsConfiguration (forward_count had no
    ``direction``: the dashboard's ingress and egress panels stayed empty; the e2e pod-level
    scenario found it)."""
    import re

    from retina_agent.enrichment.metricsconfig import validate_spec
    from retina_agent.podlevel.context import plan_for

    mc = by_kind(render(tmp_path, agent_pod_level=True)["agent"], "MetricsConfiguration", "retina-metrics")
    forward = validate_spec(mc["spec"]).context_options["forward_count"]
    dashboard = COLLECTION / "roles" / "dashboards" / "files" / "dashboards" / "retina-pod-traffic.json"
    exprs = re.findall(r'"expr": "((?:[^"\\]|\\.)*)"', dashboard.read_text())
    wanted = [e for e in exprs if "direction" in e and "networkobservability_adv_forward" in e]
    assert wanted, "the dashboard no longer splits pod traffic by direction: update this test"
    for remote in (False, True):  # local context (the default) and agent_remote_context
        assert "direction" in plan_for(forward, remote=remote).additional, wanted[0]


def test_daemonset_follows_the_agent_contract(default_render: Rendered) -> None:
    agent = default_render["agent"]
    ds = by_kind(agent, "DaemonSet", "retina-agent")
    pod = ds["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["tolerations"] == [{"operator": "Exists"}]
    # The node's address, not every interface of a hostNetwork pod ($(NODE_IP) from status.hostIP).
    assert container["command"] == [
        "retina-agent",
        "--config",
        "/etc/retina/config.yaml",
        "--bind-address",
        "$(NODE_IP)",
    ]
    node_ip = next(e for e in container["env"] if e["name"] == "NODE_IP")
    assert node_ip["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    sc = container["securityContext"]
    assert sc["privileged"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    # default plugins: eBPF ones and TC ones (packetforward, dns) are enabled
    assert set(sc["capabilities"]["add"]) == EBPF_CAPS | {"NET_ADMIN"}
    # No privileged init container and no bpffs: the agent pins nothing (issue 10).
    assert "initContainers" not in pod
    assert not any(c["securityContext"].get("privileged") for c in pod["containers"])
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    # No kernel headers (/lib/modules, /usr/src) from the node: the BPF objects are in the image.
    host_paths = {"/sys/kernel/tracing", "/sys/kernel/debug", "/var/run/retina"}
    assert set(mounts) == host_paths | {"/etc/retina", "/tmp"}
    assert "/sys/fs/bpf" not in mounts and "bpffs" not in {v["name"] for v in pod["volumes"]}
    # tracefs/debugfs are only read (formats, ids); attaching uses perf_event_open
    assert mounts["/sys/kernel/tracing"]["readOnly"] and mounts["/sys/kernel/debug"]["readOnly"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["state"]["hostPath"] == {"path": "/var/run/retina", "type": "DirectoryOrCreate"}
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
    assert env == {"NODE_NAME": "spec.nodeName", "NODE_IP": "status.hostIP"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 10093}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 10093}
    assert container["resources"] == {
        "requests": {"cpu": "50m", "memory": "96Mi"},
        "limits": {"cpu": "500m", "memory": "320Mi"},
    }
    annotations = ds["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == "10093"
    assert len(annotations["retina.sh/config-checksum"]) == 64
    # image from deploy/images.yaml, the one place naming images
    images = yaml.safe_load((REPO / "deploy" / "images.yaml").read_text())
    assert container["image"] == f"{images['registry']}/{images['images']['agent']}:{images['tag']}"
    operator = by_kind(agent, "Deployment", "retina-operator")["spec"]["template"]["spec"]["containers"][0]
    assert operator["image"] == f"{images['registry']}/{images['images']['operator']}:{images['tag']}"


def test_agent_config_has_retinas_keys(default_render: Rendered) -> None:
    configmap = by_kind(default_render["agent"], "ConfigMap", "retina-config")
    config = yaml.safe_load(configmap["data"]["config.yaml"])
    assert config == {
        "apiServer": {"host": "0.0.0.0", "port": 10093},
        "logLevel": "info",
        "enabledPlugin": ["linuxutil", "packetforward", "dropreason", "dns", "tcpretrans"],
        "metricsIntervalDuration": "10s",
        "enablePodLevel": False,
        "remoteContext": False,
        "enableAnnotations": False,
        "dataSamplingRate": 1,
    }


@pytest.mark.parametrize(
    ("plugins", "expected"),
    [
        (["linuxutil"], set()),
        (["dropreason"], EBPF_CAPS),
        (["packetforward"], EBPF_CAPS | {"NET_ADMIN"}),
        (["packetparser"], EBPF_CAPS | {"NET_ADMIN"}),
    ],
)
def test_capabilities_are_the_union_for_the_enabled_plugins(
    tmp_path: Path, plugins: list[str], expected: set[str]
) -> None:
    container = agent_container(render(tmp_path, agent_plugins=plugins)["agent"])
    assert set(container["securityContext"]["capabilities"]["add"]) == expected
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_config_change_changes_the_checksum_that_rolls_the_pods(
    tmp_path: Path, default_render: Rendered
) -> None:
    def checksum(manifests: list[Obj]) -> str:
        ds = by_kind(manifests, "DaemonSet")
        return ds["spec"]["template"]["metadata"]["annotations"]["retina.sh/config-checksum"]

    changed = render(tmp_path, agent_log_level="debug")["agent"]
    assert checksum(changed) != checksum(default_render["agent"])
    again = render(tmp_path / "again")["agent"]
    assert checksum(again) == checksum(default_render["agent"]), "same config, different checksum"


def test_rbac_is_exactly_the_contract(default_render: Rendered) -> None:
    def rules(name: str) -> set[tuple[str, str, str]]:
        role = by_kind(default_render["agent"], "ClusterRole", name)
        return {
            (group, resource, verb)
            for rule in role["rules"]
            for group in rule["apiGroups"]
            for resource in rule["resources"]
            for verb in rule["verbs"]
        }

    watch = ("list", "watch")
    agent = {("", r, v) for r in ("pods", "namespaces", "services", "nodes") for v in watch}
    agent |= {("apps", "replicasets", v) for v in watch} | {("batch", "jobs", v) for v in watch}
    agent |= {("retina.sh", "metricsconfigurations", v) for v in watch}
    agent |= {("retina.sh", "metricsconfigurations/status", "patch"), ("", "endpoints", "get")}
    assert rules("retina-agent") == agent
    [endpoints] = [
        r
        for r in by_kind(default_render["agent"], "ClusterRole", "retina-agent")["rules"]
        if r["resources"] == ["endpoints"]
    ]
    assert endpoints["resourceNames"] == ["kubernetes"]

    operator = {("retina.sh", "captures", v) for v in ("get", "list", "watch", "patch")}
    operator |= {("retina.sh", "captures/status", "patch")}
    operator |= {("batch", "jobs", v) for v in ("create", "delete", "list", "watch")}
    operator |= {("", "secrets", v) for v in ("get", "delete")}  # by name: never list
    operator |= {("", "pods", v) for v in ("get", "list")}
    operator |= {("", r, "list") for r in ("nodes", "namespaces")}
    operator |= {("", "events", "create")}
    operator |= {("apiextensions.k8s.io", "customresourcedefinitions", v) for v in ("list", "watch")}
    # Alert-triggered capture: Captures made from CaptureTriggers (and deleted when they expire),
    # decisions in the trigger's status, a node target checked by name.
    operator |= {("retina.sh", "captures", v) for v in ("create", "delete")}
    operator |= {("retina.sh", "capturetriggers", v) for v in ("get", "list", "watch", "patch")}
    operator |= {("retina.sh", "capturetriggers/status", "patch"), ("", "nodes", "get")}
    assert rules("retina-operator") == operator

    capture = {("batch", "jobs", v) for v in ("create", "list", "delete")}
    capture |= {("", "secrets", v) for v in ("create", "get", "delete")}
    capture |= {("", "pods", v) for v in ("get", "list", "create", "delete")} | {("", "pods/log", "get")}
    capture |= {("", "pods/exec", v) for v in ("get", "create")}  # download of host-path/PVC captures
    capture |= {("retina.sh", "captures", v) for v in ("create", "get", "list", "watch", "delete")}
    capture |= {
        ("retina.sh", "capturetriggers", v)
        for v in ("create", "get", "list", "watch", "update", "patch", "delete")
    }
    assert rules("retina-capture") == capture
    assert rules("retina-capture-cluster") == {("", "nodes", "list"), ("", "namespaces", "list")}
    for name in ("retina-agent", "retina-operator"):
        binding = by_kind(default_render["agent"], "ClusterRoleBinding", name)
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name, "namespace": "retina-system"}]


def test_operator_runs_unprivileged(default_render: Rendered) -> None:
    pod = by_kind(default_render["agent"], "Deployment", "retina-operator")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["command"] == [
        "kopf",
        "run",
        "--all-namespaces",
        "--standalone",
        "-m",
        "retina_capture.operator",
    ]


def test_every_object_is_labelled_for_uninstall(default_render: Rendered) -> None:
    for role, manifests in default_render.items():
        for manifest in manifests:
            labels, where = manifest["metadata"].get("labels", {}), (role, manifest["metadata"]["name"])
            assert labels.get("app.kubernetes.io/managed-by") == "retina-installer", where
            assert labels.get("app.kubernetes.io/instance") == "retina", where


def test_podmonitor_and_dashboards(default_render: Rendered) -> None:
    monitor = by_kind(default_render["prometheus"], "PodMonitor", "retina-pods")
    assert monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == "retina-agent"
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    assert endpoint["relabelings"][0]["targetLabel"] == "instance"
    job_rule = {"action": "replace", "targetLabel": "job", "replacement": "retina-pods"}
    assert job_rule in endpoint["relabelings"]
    ports = agent_container(default_render["agent"])["ports"]
    assert {"name": "metrics", "containerPort": 10093, "protocol": "TCP"} in ports
    # one ConfigMap per JSON file of the role, labelled for the Grafana sidecar, JSON unchanged
    files = sorted(DASHBOARDS.glob("*.json"))
    assert files, f"no dashboard in {DASHBOARDS}"
    configmaps = {d["metadata"]["name"]: d for d in default_render["dashboards"]}
    assert len(configmaps) == len(files)
    for path in files:
        name = "retina-dashboard-" + path.stem.removeprefix("retina-")
        configmap = configmaps[name]
        assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert json.loads(configmap["data"][path.name]) == json.loads(path.read_text())


def test_scrape_job_passes_promtool(tmp_path: Path) -> None:
    promtool = require("promtool")  # setup.sh installs it: a skip would hide an untested job
    rendered_dir = tmp_path / "promtool"
    render(rendered_dir)
    jobs = yaml.safe_load((rendered_dir / "out" / "prometheus" / "scrape-job.yaml").read_text())
    # Debian's Prometheus is built without Kubernetes service discovery, so promtool checks the
    # job (relabel rules, regexes, intervals) with the same targets given statically.
    for job in jobs:
        assert job["kubernetes_sd_configs"] == [{"role": "pod", "namespaces": {"names": ["retina-system"]}}]
        job["static_configs"] = [{"targets": ["127.0.0.1:10093"]}]
        del job["kubernetes_sd_configs"]
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({"global": {"scrape_interval": "30s"}, "scrape_configs": jobs}))
    proc = subprocess.run(
        [promtool, "check", "config", str(config)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
