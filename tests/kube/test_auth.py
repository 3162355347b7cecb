"""Authentication and RBAC in the API emulator, as kube-apiserver does them, seen through the real
``kubernetes`` client (status codes and ``Status`` bodies exactly as a real cluster answers)."""

from __future__ import annotations

import datetime
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import kubernetes
import pytest
import requests
from kubernetes.client.rest import ApiException

from retina_lab import kube_auth
from retina_lab.kube import KubeEmulator
from tests.kube_fixtures import apply_rendered_rbac, custom_resource_definition, rendered_agent_objects

RBAC = "rbac.authorization.k8s.io/v1"
CRD = custom_resource_definition("example.com", "Widget", "widgets", status_subresource=True)


def role(
    name: str,
    rules: list[dict],
    namespace: str | None = None,
    labels: dict | None = None,
    aggregate: dict | None = None,
) -> dict:
    kind = "Role" if namespace else "ClusterRole"
    meta: dict = {"name": name, "labels": labels or {}}
    if namespace:
        meta["namespace"] = namespace
    obj = {"apiVersion": RBAC, "kind": kind, "metadata": meta, "rules": rules}
    if aggregate:
        obj["aggregationRule"] = {"clusterRoleSelectors": [{"matchLabels": aggregate}]}
    return obj


def binding(
    name: str, role_kind: str, role_name: str, subjects: list[dict], namespace: str | None = None
) -> dict:
    meta: dict = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    return {
        "apiVersion": RBAC,
        "kind": "RoleBinding" if namespace else "ClusterRoleBinding",
        "metadata": meta,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role_name},
        "subjects": subjects,
    }


def sa(name: str, namespace: str) -> dict:
    return {"kind": "ServiceAccount", "name": name, "namespace": namespace}


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[KubeEmulator]:
    with KubeEmulator(workdir=tmp_path, namespaces=("default", "kube-system", "web", "db")) as emulator:
        emulator.seed(
            [
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": n, "namespace": ns},
                    "spec": {"containers": [{"name": "c", "image": "busybox"}]},
                }
                for ns in ("web", "db")
                for n in ("p1", "p2")
            ]
        )
        yield emulator


def client_for(path: Path) -> kubernetes.client.ApiClient:
    return kubernetes.config.new_client_from_config(config_file=str(path))


def refused(call, *args, **kwargs) -> dict:
    """Run a client call that must be refused; returns the Status body."""
    with pytest.raises(ApiException) as exc:
        call(*args, **kwargs)
    body = json.loads(exc.value.body)
    assert exc.value.status == body["code"]
    return body


def forbidden(call, *args, **kwargs) -> str:
    body = refused(call, *args, **kwargs)
    assert body["code"] == 403 and body["reason"] == "Forbidden" and body["kind"] == "Status", body
    return body["message"]


def test_service_account_token_from_the_token_request_api(kube: KubeEmulator) -> None:
    admin = client_for(kube.kubeconfig_path)
    core = kubernetes.client.CoreV1Api(admin)
    core.create_namespaced_service_account("web", {"metadata": {"name": "reader"}})
    answer = core.create_namespaced_service_account_token(
        "reader",
        "web",
        {"spec": {"audiences": ["https://kubernetes.default.svc"], "expirationSeconds": 1800}},
    )
    assert answer.kind == "TokenRequest" and answer.api_version == "authentication.k8s.io/v1"
    # it expires when asked (half an hour from now, not the default hour), as bound tokens do
    left = (answer.status.expiration_timestamp - datetime.datetime.now(datetime.UTC)).total_seconds()
    assert 1800 - 60 < left <= 1800, left
    token = answer.status.token

    who = requests.post(
        f"{kube.url}/apis/authentication.k8s.io/v1/selfsubjectreviews",
        json={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=5,
        verify=str(kube.ca_path),
    ).json()
    assert who["status"]["userInfo"]["username"] == "system:serviceaccount:web:reader"
    assert who["status"]["userInfo"]["groups"] == [
        "system:serviceaccounts",
        "system:serviceaccounts:web",
        "system:authenticated",
    ]

    # Bound to nothing yet: every resource request is refused with kube-apiserver's message.
    reader = client_for(
        kube.write_kubeconfig(kube.kubeconfig_path.with_name("reader"), token, namespace="web")
    )
    message = forbidden(kubernetes.client.CoreV1Api(reader).list_namespaced_pod, "web")
    assert message == (
        'pods is forbidden: User "system:serviceaccount:web:reader" cannot list resource '
        '"pods" in API group "" in the namespace "web"'
    )

    # Too short a lifetime, or an unknown ServiceAccount: refused like the API server does.
    assert (
        refused(
            core.create_namespaced_service_account_token, "reader", "web", {"spec": {"expirationSeconds": 60}}
        )["code"]
        == 422
    )
    assert refused(core.create_namespaced_service_account_token, "nobody", "web", {"spec": {}})["code"] == 404

    # The token dies with its ServiceAccount: 401 afterwards, also for a new one of the same name.
    core.delete_namespaced_service_account("reader", "web")
    core.create_namespaced_service_account("web", {"metadata": {"name": "reader"}})
    body = refused(kubernetes.client.CoreV1Api(reader).list_namespaced_pod, "web")
    assert body == kube_auth.UNAUTHORIZED_STATUS


def test_bad_and_missing_tokens(kube: KubeEmulator) -> None:
    pods = f"{kube.url}/api/v1/namespaces/web/pods"
    ca = str(kube.ca_path)
    bad = requests.get(pods, headers={"Authorization": "Bearer nope"}, timeout=5, verify=ca)
    assert bad.status_code == 401 and bad.json() == kube_auth.UNAUTHORIZED_STATUS
    forged = kube.service_account_token("web", "default")[:-4] + "AAAA"
    assert (
        requests.get(pods, headers={"Authorization": f"Bearer {forged}"}, timeout=5, verify=ca).status_code
        == 401
    )
    # No token: system:anonymous (kube-apiserver's --anonymous-auth default), which RBAC lets
    # see only the health and version endpoints (system:public-info-viewer).
    anonymous = requests.get(pods, timeout=5, verify=ca)
    assert anonymous.status_code == 403
    assert anonymous.json()["message"] == (
        'pods is forbidden: User "system:anonymous" cannot list resource '
        '"pods" in API group "" in the namespace "web"'
    )
    assert requests.get(f"{kube.url}/version", timeout=5, verify=ca).status_code == 200
    assert requests.get(f"{kube.url}/healthz", timeout=5, verify=ca).text == "ok"
    api = requests.get(f"{kube.url}/api", timeout=5, verify=ca)
    assert api.status_code == 403
    assert api.json()["message"] == 'forbidden: User "system:anonymous" cannot get path "/api"'


def test_anonymous_auth_off_gives_401(tmp_path: Path) -> None:
    with KubeEmulator(workdir=tmp_path, anonymous_auth=False) as kube:
        answer = requests.get(f"{kube.url}/version", timeout=5, verify=str(kube.ca_path))
        assert answer.status_code == 401 and answer.json() == kube_auth.UNAUTHORIZED_STATUS


def test_role_binding_grants_only_its_namespace_and_verbs(kube: KubeEmulator) -> None:
    kube.apply(
        [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "app", "namespace": "web"}},
            role("pod-reader", [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}], "web"),
            binding("app-reads-pods", "Role", "pod-reader", [sa("app", "web")], "web"),
        ]
    )
    core = kubernetes.client.CoreV1Api(client_for(kube.kubeconfig_for_service_account("web", "app")))
    assert [p.metadata.name for p in core.list_namespaced_pod("web").items] == ["p1", "p2"]
    assert core.read_namespaced_pod("p1", "web").metadata.name == "p1"

    msg = forbidden(core.list_namespaced_pod, "db")
    assert msg.endswith('cannot list resource "pods" in API group "" in the namespace "db"')
    msg = forbidden(core.list_pod_for_all_namespaces)
    assert msg == (
        'pods is forbidden: User "system:serviceaccount:web:app" cannot list resource "pods" '
        'in API group "" at the cluster scope'
    )
    body = refused(core.delete_namespaced_pod, "p1", "web")
    assert body["message"] == (
        'pods "p1" is forbidden: User "system:serviceaccount:web:app" cannot delete '
        'resource "pods" in API group "" in the namespace "web"'
    )
    assert body["details"] == {"name": "p1", "kind": "pods"} | {"group": ""}
    forbidden(core.list_namespaced_pod, "web", watch=True)  # watch is its own verb
    forbidden(core.delete_collection_namespaced_pod, "web")  # so is deletecollection
    forbidden(core.list_namespaced_service, "web")  # another resource
    forbidden(core.read_namespaced_pod_log, "p1", "web")  # a subresource needs its own rule
    assert len(kube.objects("Pod", "web")) == 2


def test_cluster_role_via_role_binding_is_namespaced_and_never_cluster_scope(kube: KubeEmulator) -> None:
    kube.apply(
        [
            role(
                "node-and-pod-reader",
                [{"apiGroups": [""], "resources": ["pods", "nodes"], "verbs": ["list"]}],
            ),
            binding(
                "alice-in-web",
                "ClusterRole",
                "node-and-pod-reader",
                [{"kind": "User", "name": "alice"}],
                "web",
            ),
        ]
    )
    core = kubernetes.client.CoreV1Api(client_for(kube.kubeconfig_for_user("alice")))
    assert len(core.list_namespaced_pod("web").items) == 2
    forbidden(core.list_namespaced_pod, "db")
    msg = forbidden(core.list_node)
    assert msg == (
        'nodes is forbidden: User "alice" cannot list resource "nodes" in API group "" at the cluster scope'
    )
    kube.apply(
        [
            binding(
                "alice-everywhere", "ClusterRole", "node-and-pod-reader", [{"kind": "Group", "name": "sre"}]
            )
        ]
    )
    forbidden(core.list_node)  # alice is not in sre
    sre = kubernetes.client.CoreV1Api(client_for(kube.kubeconfig_for_user("bob", groups=["sre"])))
    assert sre.list_node().items == [] and len(sre.list_pod_for_all_namespaces().items) == 4


def test_wildcards_subresources_and_api_groups(kube: KubeEmulator) -> None:
    kube.apply(
        [
            role(
                "logs",
                [
                    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
                    {"apiGroups": ["batch"], "resources": ["*"], "verbs": ["*"]},
                    {"apiGroups": ["*"], "resources": ["*/status"], "verbs": ["patch"]},
                ],
                "web",
            ),
            binding("carol", "Role", "logs", [{"kind": "User", "name": "carol"}], "web"),
        ]
    )
    user = kube_auth.UserInfo("carol", ("system:authenticated",))
    assert kube.can(user, "get", "pods", subresource="log", namespace="web", name="p1")
    assert not kube.can(user, "get", "pods", namespace="web", name="p1")
    assert not kube.can(user, "create", "pods", subresource="exec", namespace="web", name="p1")
    assert kube.can(user, "deletecollection", "jobs", group="batch", namespace="web")
    assert not kube.can(user, "list", "jobs", group="apps", namespace="web")  # the group matters
    assert not kube.can(user, "create", "jobs", group="batch", namespace="db")
    assert kube.can(user, "patch", "pods", subresource="status", namespace="web", name="p1")
    assert kube.can(
        user, "patch", "deployments", group="apps", subresource="status", namespace="web", name="x"
    )
    assert not kube.can(user, "patch", "deployments", group="apps", namespace="web", name="x")

    batch = kubernetes.client.BatchV1Api(client_for(kube.kubeconfig_for_user("carol")))
    job = {
        "metadata": {"name": "j"},
        "spec": {
            "template": {
                "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}
            }
        },
    }
    batch.create_namespaced_job("web", job)
    msg = forbidden(batch.create_namespaced_job, "db", job)
    assert msg == (
        'jobs.batch is forbidden: User "carol" cannot create resource "jobs" in API group "batch" '
        'in the namespace "db"'
    )


def test_resource_names(kube: KubeEmulator) -> None:
    kube.apply(
        [
            role(
                "one-pod",
                [
                    {
                        "apiGroups": [""],
                        "resources": ["pods"],
                        "resourceNames": ["p1"],
                        "verbs": ["get", "list", "watch", "create", "delete", "deletecollection"],
                    }
                ],
                "web",
            ),
            binding("dave", "Role", "one-pod", [{"kind": "User", "name": "dave"}], "web"),
        ]
    )
    core = kubernetes.client.CoreV1Api(client_for(kube.kubeconfig_for_user("dave")))
    assert core.read_namespaced_pod("p1", "web").metadata.name == "p1"
    msg = forbidden(core.read_namespaced_pod, "p2", "web")
    assert msg.startswith('pods "p2" is forbidden: User "dave" cannot get resource "pods"')
    # No name in the request: resourceNames can never match a list, create or deletecollection...
    forbidden(core.list_namespaced_pod, "web")
    forbidden(
        core.create_namespaced_pod,
        "web",
        {"metadata": {"name": "p1b"}, "spec": {"containers": [{"name": "c", "image": "x"}]}},
    )
    forbidden(core.delete_collection_namespaced_pod, "web")
    # ...but a list or watch with the field selector metadata.name=<name> asks for that name.
    assert [
        p.metadata.name for p in core.list_namespaced_pod("web", field_selector="metadata.name=p1").items
    ] == ["p1"]
    forbidden(core.list_namespaced_pod, "web", field_selector="metadata.name=p2")
    stream = kubernetes.watch.Watch().stream(
        core.list_namespaced_pod, "web", field_selector="metadata.name=p1", timeout_seconds=1
    )
    assert [e["object"].metadata.name for e in stream] == ["p1"]
    core.delete_namespaced_pod("p1", "web")


def test_namespace_objects_are_in_their_own_namespace(kube: KubeEmulator) -> None:
    kube.apply(
        [
            role("ns-get", [{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"]}]),
            binding("erin", "ClusterRole", "ns-get", [{"kind": "User", "name": "erin"}], "web"),
        ]
    )
    core = kubernetes.client.CoreV1Api(client_for(kube.kubeconfig_for_user("erin")))
    assert core.read_namespace("web").metadata.name == "web"
    msg = forbidden(core.read_namespace, "db")
    assert (
        msg == 'namespaces "db" is forbidden: User "erin" cannot get resource "namespaces" in API group "" '
        'in the namespace "db"'
    )


def test_custom_resources_and_status_subresource(kube: KubeEmulator) -> None:
    kube.apply(
        [
            CRD,
            role(
                "widget-status",
                [
                    {
                        "apiGroups": ["example.com"],
                        "resources": ["widgets"],
                        "verbs": ["get", "list", "watch"],
                    },
                    {"apiGroups": ["example.com"], "resources": ["widgets/status"], "verbs": ["patch"]},
                ],
            ),
            binding("frank", "ClusterRole", "widget-status", [{"kind": "User", "name": "frank"}]),
        ]
    )
    kube.seed(
        [
            {
                "apiVersion": "example.com/v1",
                "kind": "Widget",
                "metadata": {"name": "w", "namespace": "web"},
                "spec": {"size": 1},
            }
        ]
    )
    custom = kubernetes.client.CustomObjectsApi(client_for(kube.kubeconfig_for_user("frank")))
    custom.patch_namespaced_custom_object_status(
        "example.com", "v1", "web", "widgets", "w", {"status": {"ready": True}}
    )
    msg = forbidden(
        custom.patch_namespaced_custom_object,
        "example.com",
        "v1",
        "web",
        "widgets",
        "w",
        {"spec": {"size": 2}},
    )
    assert msg == (
        'widgets.example.com "w" is forbidden: User "frank" cannot patch resource "widgets" in API '
        'group "example.com" in the namespace "web"'
    )
    assert kube.objects("Widget", "web")[0]["status"] == {"ready": True}


def test_aggregated_cluster_roles(kube: KubeEmulator) -> None:
    kube.apply(
        [
            role("monitoring", [], aggregate={"example.com/aggregate-to-monitoring": "true"}),
            role(
                "monitoring-pods",
                [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}],
                labels={"example.com/aggregate-to-monitoring": "true"},
            ),
            binding("gina", "ClusterRole", "monitoring", [{"kind": "User", "name": "gina"}]),
        ]
    )
    gina = kube_auth.UserInfo("gina", ("system:authenticated",))
    assert kube.can(gina, "list", "pods", namespace="db")
    assert not kube.can(gina, "list", "services", namespace="db")
    kube.apply(
        [
            role(
                "monitoring-services",
                [{"apiGroups": [""], "resources": ["services"], "verbs": ["list"]}],
                labels={"example.com/aggregate-to-monitoring": "true"},
            )
        ]
    )
    assert kube.can(gina, "list", "services", namespace="db")
    # The built-in aggregation: a role labelled aggregate-to-view reaches view, edit and admin.
    kube.apply(
        [
            role(
                "widgets-view",
                [{"apiGroups": ["example.com"], "resources": ["widgets"], "verbs": ["get"]}],
                labels={"rbac.authorization.k8s.io/aggregate-to-view": "true"},
            ),
            binding("hank", "ClusterRole", "admin", [{"kind": "User", "name": "hank"}], "web"),
        ]
    )
    hank = kube_auth.UserInfo("hank", ("system:authenticated",))
    assert kube.can(hank, "get", "widgets", group="example.com", namespace="web", name="w")
    assert not kube.can(hank, "get", "pods", namespace="web", name="p1")  # admin has no built-in rules here


def test_discovery_for_every_authenticated_user(kube: KubeEmulator) -> None:
    client = client_for(kube.kubeconfig_for_user("nobody-special"))
    assert kubernetes.client.VersionApi(client).get_code().major == "1"
    assert "v1" in kubernetes.client.CoreApi(client).get_api_versions().versions
    groups = {g.name for g in kubernetes.client.ApisApi(client).get_api_versions().groups}
    assert {"apps", "batch", "rbac.authorization.k8s.io", "authorization.k8s.io"} <= groups
    assert kubernetes.client.CoreV1Api(client).get_api_resources().group_version == "v1"
    # The dynamic client (kubernetes.core's) discovers and then gets its 403 on the resource itself.
    dynamic = kubernetes.dynamic.DynamicClient(client)
    pods = dynamic.resources.get(api_version="v1", kind="Pod")
    with pytest.raises(kubernetes.dynamic.exceptions.ForbiddenError):
        pods.get(namespace="web")


def test_access_reviews_and_kubectl_auth_can_i(kube: KubeEmulator) -> None:
    kube.apply(
        [
            role("pod-reader", [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}], "web"),
            binding("ivy", "Role", "pod-reader", [{"kind": "User", "name": "ivy"}], "web"),
        ]
    )
    authz = kubernetes.client.AuthorizationV1Api(client_for(kube.kubeconfig_for_user("ivy")))
    review = authz.create_self_subject_access_review(
        {"spec": {"resourceAttributes": {"verb": "list", "resource": "pods", "namespace": "web"}}}
    )
    assert review.status.allowed is True
    review = authz.create_self_subject_access_review(
        {"spec": {"resourceAttributes": {"verb": "list", "resource": "pods", "namespace": "db"}}}
    )
    assert review.status.allowed is False
    # Asking about somebody else needs create on subjectaccessreviews (the admin has it).
    forbidden(
        authz.create_subject_access_review,
        {
            "spec": {
                "user": "ivy",
                "resourceAttributes": {"verb": "get", "resource": "pods", "namespace": "web"},
            }
        },
    )
    admin = kubernetes.client.AuthorizationV1Api(client_for(kube.kubeconfig_path))
    review = admin.create_subject_access_review(
        {
            "spec": {
                "user": "ivy",
                "resourceAttributes": {"verb": "delete", "resource": "pods", "namespace": "web"},
            }
        }
    )
    assert review.status.allowed is False

    kubeconfig = kube.kubeconfig_for_user("ivy")

    def can_i(*argv: str) -> str:
        done = subprocess.run(
            ["kubectl", "--kubeconfig", str(kubeconfig), "auth", "can-i", *argv],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return done.stdout.strip()

    assert can_i("list", "pods", "-n", "web") == "yes"
    assert can_i("list", "pods", "-n", "db") == "no"
    assert can_i("delete", "pods", "-n", "web") == "no"


def test_admin_kubeconfig_is_system_masters(kube: KubeEmulator) -> None:
    core = kubernetes.client.CoreV1Api(client_for(kube.kubeconfig_path))
    assert len(core.list_pod_for_all_namespaces().items) == 4
    bootstrap = {r["metadata"]["name"] for r in kube.objects("ClusterRole")}
    assert {"cluster-admin", "system:discovery", "system:basic-user", "admin", "edit", "view"} <= bootstrap
    assert {"default"} == {s["metadata"]["name"] for s in kube.objects("ServiceAccount", "web")}


def test_rendered_agent_rbac_is_what_the_agent_gets(kube: KubeEmulator) -> None:
    """The RBAC the agent role renders, applied as is: the agent may read pods everywhere and
    patch MetricsConfiguration status, and nothing else (no secrets, no writes)."""
    objects = rendered_agent_objects()
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert ("ClusterRole", "retina-agent") in kinds and ("ServiceAccount", "retina-agent") in kinds
    apply_rendered_rbac(kube)
    agent = kubernetes.client.CoreV1Api(
        client_for(kube.kubeconfig_for_service_account("retina-system", "retina-agent"))
    )
    assert len(agent.list_pod_for_all_namespaces().items) == 4
    msg = forbidden(agent.list_secret_for_all_namespaces)
    assert msg == (
        'secrets is forbidden: User "system:serviceaccount:retina-system:retina-agent" cannot '
        'list resource "secrets" in API group "" at the cluster scope'
    )
    forbidden(agent.delete_namespaced_pod, "p1", "web")


def test_impersonation_needs_the_impersonate_verb(kube: KubeEmulator) -> None:
    """kubectl --as: the admin may (README's `kubectl auth can-i ... --as=` check); others may not."""
    kube.apply(
        [
            role("pod-reader", [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}], "web"),
            binding("jane", "Role", "pod-reader", [{"kind": "User", "name": "jane"}], "web"),
        ]
    )

    def kubectl(kubeconfig: Path, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["kubectl", "--kubeconfig", str(kubeconfig), *argv],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    admin = kube.kubeconfig_path
    assert kubectl(admin, "auth", "can-i", "list", "pods", "-n", "web", "--as=jane").stdout.strip() == "yes"
    assert kubectl(admin, "auth", "can-i", "list", "pods", "-n", "db", "--as=jane").stdout.strip() == "no"
    got = kubectl(admin, "get", "pods", "-n", "web", "--as=jane", "-o", "name")
    assert got.stdout.split() == ["pod/p1", "pod/p2"], got.stderr
    denied = kubectl(kube.kubeconfig_for_user("mallory"), "get", "pods", "-n", "web", "--as=jane")
    assert denied.returncode != 0
    assert (
        'users "jane" is forbidden: User "mallory" cannot impersonate resource "users" in API group ""'
        in denied.stderr
    )
