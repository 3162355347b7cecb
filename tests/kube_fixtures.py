"""Pytest plugin: a Kubernetes API emulator over real HTTP, and a real client for it.

Enable with ``pytest_plugins = ["tests.kube_fixtures"]`` in the top-level conftest, or import
the fixtures into a directory's conftest (``from tests.kube_fixtures import kube_emulator``).

The installed RBAC, not a copy: :func:`rendered_agent_objects` renders the agent role with
``ansible-playbook`` (once per option set and test session) and :func:`apply_rendered_rbac`
loads its namespace, ServiceAccounts, (Cluster)Roles and bindings -- and the CRDs if asked --
into an emulator.  Then ``kube.kubeconfig_for_service_account(AGENT_NAMESPACE, "retina-agent")``
is the agent's identity, exactly as its pod would have it.
"""

from __future__ import annotations

import functools
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml

from retina_lab.kube import KubeEmulator

AGENT_NAMESPACE = "retina-system"
RBAC_KINDS = ("Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
_RENDER_PLAYBOOK = Path(__file__).resolve().parent / "kube" / "render-agent.yml"


@pytest.fixture
def kube_emulator(tmp_path: Path) -> Iterator[KubeEmulator]:
    """A fresh, running emulator; ``kube_emulator.kubeconfig_path`` points clients at it."""
    with KubeEmulator(workdir=tmp_path) as kube:
        yield kube


@pytest.fixture
def kube_api_client(kube_emulator: KubeEmulator) -> Iterator[kubernetes.client.ApiClient]:
    """A real ``kubernetes`` API client configured from the emulator's kubeconfig."""
    client = kubernetes.config.new_client_from_config(config_file=str(kube_emulator.kubeconfig_path))
    try:
        yield client
    finally:
        client.close()


def small_cluster(kube: KubeEmulator) -> None:
    """Seed three Linux nodes, one Windows node, namespaces ``web`` (labelled ``team=web``) and
    ``db``, and running pods with IPs: web/a on node-1, web/b on node-2, db/c on node-3."""
    nodes = [
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": {"kubernetes.io/os": os_name, "kubernetes.io/hostname": name},
            },
        }
        for name, os_name in (
            ("node-1", "linux"),
            ("node-2", "linux"),
            ("node-3", "linux"),
            ("win-1", "windows"),
        )
    ]
    namespaces = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {"team": ns}}}
        for ns in ("web", "db")
    ]
    pods = [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
            "status": {"phase": "Running", "podIP": ip},
        }
        for name, ns, app, node, ip in (
            ("a", "web", "frontend", "node-1", "10.244.1.10"),
            ("b", "web", "frontend", "node-2", "10.244.2.10"),
            ("c", "db", "postgres", "node-3", "10.244.3.10"),
        )
    ]
    kube.seed(nodes + namespaces + pods)


@functools.cache
def _render(options_json: str) -> tuple[str, ...]:
    from tests.installer.ansible_run import run_playbook  # local import: ansible only when rendering

    with tempfile.TemporaryDirectory(prefix="render-agent-") as tmp:
        out = Path(tmp) / "out"
        extra = {"manifest_dir": str(out), **json.loads(options_json)}
        proc = run_playbook(_RENDER_PLAYBOOK, Path(tmp), extra)
        if proc.returncode != 0:
            output = f"{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}"
            raise RuntimeError(f"rendering the agent role failed:\n{output}")
        docs = [d for f in sorted(out.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text())]
    return tuple(json.dumps(d) for d in docs if isinstance(d, dict) and "kind" in d)


def rendered_agent_objects(**options: Any) -> list[dict[str, Any]]:
    """Every object the agent role renders with these options (fresh copies; cached per options)."""
    return [json.loads(d) for d in _render(json.dumps(options, sort_keys=True))]


def apply_rendered_rbac(kube: KubeEmulator, *, crds: bool = False, **options: Any) -> list[dict[str, Any]]:
    """Apply the rendered namespace, ServiceAccounts and RBAC of the agent role (operator and
    capture-user roles included) to ``kube`` -- and its CRDs when ``crds`` -- as the installer would.
    Returns the objects applied."""
    objects = [
        o
        for o in rendered_agent_objects(**options)
        if o["kind"] in RBAC_KINDS or (crds and o["kind"] == "CustomResourceDefinition")
    ]
    objects.sort(key=lambda o: o["kind"] not in ("CustomResourceDefinition", "Namespace"))
    kube.apply(objects)
    return objects


# -- the production identities ------------------------------------------------------------------

#: The user the README's capture-user instructions bind (tests play a cluster admin doing so).
CAPTURE_USER = "capture-user@example.com"


def agent_kubeconfig_for(kube: KubeEmulator) -> Path:
    """The agent's identity: the rendered RBAC applied, a token of the ``retina-agent`` ServiceAccount."""
    apply_rendered_rbac(kube)
    return kube.kubeconfig_for_service_account(AGENT_NAMESPACE, "retina-agent")


def operator_kubeconfig_for(kube: KubeEmulator) -> Path:
    """The capture operator's identity: the ``retina-operator`` ServiceAccount and its rendered RBAC."""
    apply_rendered_rbac(kube)
    return kube.kubeconfig_for_service_account(AGENT_NAMESPACE, "retina-operator")


def capture_user_kubeconfig_for(
    kube: KubeEmulator, namespaces: tuple[str, ...] | None = None, user: str = CAPTURE_USER
) -> Path:
    """A user bound only as collections/retina/README.md tells a cluster admin to bind capture users:
    ClusterRole ``retina-capture`` (in ``namespaces`` through RoleBindings, or everywhere through a
    ClusterRoleBinding when None) plus ClusterRole ``retina-capture-cluster`` cluster-wide."""
    apply_rendered_rbac(kube)
    subject = [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]
    ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole"}
    tag = user.split("@")[0]
    bindings: list[dict[str, Any]] = [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": f"retina-capture-cluster-{tag}"},
            "roleRef": {**ref, "name": "retina-capture-cluster"},
            "subjects": subject,
        }
    ]
    if namespaces is None:
        bindings.append(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": f"retina-capture-{tag}"},
                "roleRef": {**ref, "name": "retina-capture"},
                "subjects": subject,
            }
        )
    else:
        bindings += [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": f"retina-capture-{tag}", "namespace": ns},
                "roleRef": {**ref, "name": "retina-capture"},
                "subjects": subject,
            }
            for ns in namespaces
        ]
    kube.apply(bindings)
    return kube.kubeconfig_for_user(user)


@pytest.fixture
def agent_kubeconfig(kube_emulator: KubeEmulator) -> Path:
    return agent_kubeconfig_for(kube_emulator)


@pytest.fixture
def agent_api_client(
    kube_emulator: KubeEmulator, agent_kubeconfig: Path
) -> Iterator[kubernetes.client.ApiClient]:
    """A client with the agent's production identity (``retina-agent`` token, rendered RBAC).
    The test fails when RBAC refused the agent anything: the role must grant what the code uses."""
    client = kubernetes.config.new_client_from_config(config_file=str(agent_kubeconfig))
    try:
        yield client
    finally:
        client.close()
    assert refusals_of(kube_emulator, AGENT_USER) == [], "the agent's RBAC lacks what it uses"


@pytest.fixture
def operator_kubeconfig(kube_emulator: KubeEmulator) -> Path:
    return operator_kubeconfig_for(kube_emulator)


@pytest.fixture
def capture_user_kubeconfig(kube_emulator: KubeEmulator) -> Path:
    return capture_user_kubeconfig_for(kube_emulator)


def refusals_of(kube: KubeEmulator, user: str) -> list[str]:
    """What RBAC refused ``user`` (e.g. ``system:serviceaccount:retina-system:retina-agent``) so far."""
    return [f"{r['method']} {r['path']}: {r['message']}" for r in kube.refusals if r["user"] == user]


AGENT_USER = f"system:serviceaccount:{AGENT_NAMESPACE}:retina-agent"
OPERATOR_USER = f"system:serviceaccount:{AGENT_NAMESPACE}:retina-operator"


#: The schema of a CRD that keeps whatever its instances hold (what a test needs to store them).
ANY_OBJECT_SCHEMA: dict[str, Any] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}


def custom_resource_definition(
    group: str,
    kind: str,
    plural: str,
    *,
    schema: dict[str, Any] | None = None,
    status_subresource: bool = False,
    short_names: list[str] | None = None,
) -> dict[str, Any]:
    """A namespaced ``apiextensions.k8s.io/v1`` CRD serving and storing ``v1`` of ``kind``."""
    names: dict[str, Any] = {
        "plural": plural,
        "singular": kind.lower(),
        "kind": kind,
        "listKind": f"{kind}List",
    }
    if short_names:
        names["shortNames"] = short_names
    version: dict[str, Any] = {"name": "v1", "served": True, "storage": True}
    if status_subresource:
        version["subresources"] = {"status": {}}
    version["schema"] = {"openAPIV3Schema": schema or ANY_OBJECT_SCHEMA}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {"group": group, "scope": "Namespaced", "names": names, "versions": [version]},
    }
