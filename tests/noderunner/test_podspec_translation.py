"""The pod-spec translation and the scheduler filter, without containers: what a spec means
on this node, and that a field the runner cannot honour is refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retina_lab.noderunner.env import container_env, field_value
from retina_lab.noderunner.podspec import UnsupportedSpec, podman_run_argv
from retina_lab.noderunner.scheduling import fits


def _pod(**spec):
    return {
        "metadata": {"name": "p", "namespace": "ns1", "uid": "u-1", "labels": {"app": "x"}},
        "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "img"}], **spec},
        "status": {"podIP": "10.0.0.5", "hostIP": "127.0.0.1"},
    }


def test_security_context_becomes_podman_flags(tmp_path: Path) -> None:
    container = {
        "name": "c",
        "image": "img",
        "command": ["sh", "-c"],
        "args": ["true"],
        "securityContext": {
            "capabilities": {"drop": ["ALL"], "add": ["NET_RAW", "NET_ADMIN"]},
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "resources": {"limits": {"memory": "64Mi", "cpu": "250m"}},
    }
    argv = podman_run_argv(
        {"hostNetwork": True, "hostPID": True, "containers": [container]},
        container,
        name="n",
        env_file=tmp_path / "env",
        labels={"l": "v"},
    )
    text = " ".join(argv)
    assert "--network host" in text and "--pid host" in text and "--label l=v" in text
    assert "--cap-drop ALL --cap-add CAP_NET_ADMIN --cap-add CAP_NET_RAW" in text
    assert "no-new-privileges" in text and "--read-only" in text and "--user 65532:65532" in text
    assert "--memory 67108864 --memory-swap 67108864 --cpus 0.25" in text
    assert "seccomp" not in text  # RuntimeDefault is podman's default profile
    assert argv[-2:] == ["img", "true"]
    assert '--entrypoint ["sh", "-c"]' in text
    assert f"--env-file {tmp_path / 'env'}" in text  # values (secrets) never on the command line


def test_dropping_one_capability_keeps_the_runtime_defaults_but_that_one() -> None:
    container = {"name": "c", "image": "img", "securityContext": {"capabilities": {"drop": ["NET_RAW"]}}}
    argv = podman_run_argv({"hostNetwork": True}, container, name="n")
    caps = {argv[i + 1] for i, a in enumerate(argv) if a == "--cap-add"}
    assert "CAP_NET_RAW" not in caps and "CAP_CHOWN" in caps


@pytest.mark.parametrize(
    ("spec", "hostname"),
    [
        ({}, "web-7d4f-abcde"),  # the pod's name, as the kubelet sets it
        ({"hostname": "db-0"}, "db-0"),  # spec.hostname wins
        ({"hostNetwork": True}, None),  # a host-network pod keeps the node's name
    ],
)
def test_the_container_hostname_is_the_pods(spec: dict, hostname: str | None) -> None:
    container = {"name": "c", "image": "img"}
    argv = podman_run_argv(spec, container, name="n", network="ns:/run/netns/x", pod_name="web-7d4f-abcde")
    given = [argv[i + 1] for i, a in enumerate(argv) if a == "--hostname"]
    assert given == ([hostname] if hostname else [])


@pytest.mark.parametrize(
    ("container", "pod_extra", "field"),
    [
        ({"securityContext": {"runAsNonRoot": True}}, {}, "runAsNonRoot"),
        (
            {"securityContext": {"seccompProfile": {"type": "Localhost", "localhostProfile": "x.json"}}},
            {},
            "seccompProfile",
        ),
        (
            {"volumeMounts": [{"name": "v", "mountPath": "/x"}]},
            {"volumes": [{"name": "v", "nfs": {}}]},
            "nfs",
        ),
        (
            {"volumeMounts": [{"name": "v", "mountPath": "/x", "subPath": "a"}]},
            {"volumes": [{"name": "v", "emptyDir": {}}]},
            "subPath",
        ),
        ({"resources": {"limits": {"nvidia.com/gpu": 1}}}, {}, "nvidia.com/gpu"),
        ({"lifecycle": {"preStop": {}}}, {}, "lifecycle"),
        ({"securityContext": {"seLinuxOptions": {"level": "s0"}}}, {}, "seLinuxOptions"),
    ],
)
def test_fields_the_runner_cannot_honour_are_refused_by_name(container, pod_extra, field) -> None:
    spec = {"name": "c", "image": "img", **container}
    with pytest.raises(UnsupportedSpec, match=field.replace(".", r"\.")):
        podman_run_argv(
            {"hostNetwork": True, **pod_extra}, spec, name="n", volume_dirs={"v": "tmpfs"}, image_user=""
        )


def test_env_resolves_downward_api_and_secret_and_configmap_keys() -> None:
    pod = _pod()
    container = {
        "name": "c",
        "env": [
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "PASS", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
            {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "k", "optional": True}}},
            {"name": "CM", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "a"}}},
            {"name": "PLAIN", "value": "v"},
        ],
    }
    data = {("Secret", "s"): {"k": "secret-value"}, ("ConfigMap", "cm"): {"a": "1"}}
    env = container_env(
        pod,
        container,
        lambda kind, ns, name: data.get((kind, name)),
        {"KUBERNETES_SERVICE_HOST": "127.0.0.1"},
    )
    assert env == {
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
        "NODE": "node-1",
        "IP": "10.0.0.5",
        "APP": "x",
        "PASS": "secret-value",
        "CM": "1",
        "PLAIN": "v",
    }
    with pytest.raises(UnsupportedSpec, match=r"env\[X\].*Secret ns1/missing not found"):
        container_env(
            pod,
            {
                "name": "c",
                "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "missing", "key": "k"}}}],
            },
            lambda *a: None,
            {},
        )
    with pytest.raises(UnsupportedSpec, match="resourceFieldRef"):
        container_env(
            pod,
            {
                "name": "c",
                "env": [{"name": "X", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}}],
            },
            lambda *a: None,
            {},
        )
    with pytest.raises(UnsupportedSpec, match="status.nope"):
        field_value(pod, "status.nope")


def _node(name: str, labels=None, taints=None):
    return {"metadata": {"name": name, "labels": labels or {}}, "spec": {"taints": taints or []}}


NO_MATCH = "node(s) didn't match Pod's node affinity/selector"
UNTOLERATED = "node(s) had untolerated taint {dedicated: x}"


def test_scheduler_filter_honours_selector_affinity_and_taints() -> None:
    gpu = _node("n1", {"kind": "gpu"})
    tainted = _node("n2", {"kind": "cpu"}, [{"key": "dedicated", "value": "x", "effect": "NoSchedule"}])
    assert fits({"nodeSelector": {"kind": "gpu"}}, gpu) is None
    # kube-scheduler's own reasons, as `kubectl describe pod` shows them
    assert fits({"nodeSelector": {"kind": "gpu"}}, tainted) == NO_MATCH
    assert fits({}, tainted) == UNTOLERATED
    assert fits({"tolerations": [{"operator": "Exists"}]}, tainted) is None
    assert (
        fits({"tolerations": [{"key": "dedicated", "value": "x", "effect": "NoSchedule"}]}, tainted) is None
    )
    assert fits({"tolerations": [{"key": "dedicated", "value": "y"}]}, tainted) == UNTOLERATED
    by_name = {
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}
                    ]
                }
            }
        }
    }
    assert fits(by_name, gpu) is None and fits(by_name, _node("n3")) == NO_MATCH
    expr = {
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "kind", "operator": "NotIn", "values": ["gpu"]}]}
                    ]
                }
            }
        }
    }
    assert fits(expr, gpu) == NO_MATCH and fits(expr, _node("n4", {"kind": "cpu"})) is None
    with pytest.raises(UnsupportedSpec, match="podAntiAffinity|pod \\(anti-\\)affinity"):
        fits({"affinity": {"podAntiAffinity": {"x": 1}}}, gpu)


def test_command_and_args_expand_env_references_as_the_kubelet_does() -> None:
    """``$(VAR)`` in command/args comes from the container's env (the agent DaemonSet binds
    ``--bind-address $(NODE_IP)``); ``$$`` escapes, an undefined reference stays as written."""
    container = {
        "name": "c",
        "image": "img",
        "command": ["agent", "--bind-address", "$(NODE_IP)"],
        "args": ["$$(NODE_IP)", "$(UNSET)", "x$(NODE_IP)y"],
    }
    argv = podman_run_argv({"hostNetwork": True}, container, name="n", env={"NODE_IP": "10.1.2.3"})
    entrypoint = json.loads(argv[argv.index("--entrypoint") + 1])
    assert entrypoint == ["agent", "--bind-address", "10.1.2.3"]
    assert argv[-3:] == ["$(NODE_IP)", "$(UNSET)", "x10.1.2.3y"]
