"""Talk to the API server for captures: pick nodes, create/list/delete a capture's objects.

Used by the CLI and the operator alike (with a ``kubernetes.client.ApiClient``).
"""

from __future__ import annotations

from typing import Any

import kubernetes
from kubernetes.client.rest import ApiException

from retina_capture import jobs as jobs_mod
from retina_capture.spec import _TGT, CaptureSpec, Problem, SpecError, selector_to_string
from retina_preflight.core import kubeconfig as _kubeconfig

#: No way to reach the API server was found (or the chosen kubeconfig cannot be loaded).
KubeconfigError = _kubeconfig.KubeconfigError


class CaptureExists(RuntimeError):
    """A capture of that name already has Jobs or a Secret in the namespace."""


class JobLimitExceeded(RuntimeError):
    """More Jobs than ``--job-num-limit`` allows (Retina's message)."""

    def __init__(self, current: int, limit: int) -> None:
        super().__init__(f"the number of capture jobs {current} exceeds the limit {limit}")
        self.current, self.limit = current, limit


def api_client(kubeconfig: str | None = None, context: str | None = None) -> kubernetes.client.ApiClient:
    """A client from the project's one kubeconfig loader (``retina_preflight.core.kubeconfig``):
    --kubeconfig, else $KUBECONFIG, else the in-cluster service account, else ~/.kube/config."""
    return _kubeconfig.load_api_client(kubeconfig, context)


def connection_settings(kubeconfig: str | None = None) -> dict[str, Any]:
    """The loader's choice as ``kopf.ConnectionInfo`` arguments, so that kopf logs in exactly
    where and as whom the handlers' client does (kopf's own login tries in-cluster first)."""
    config = api_client(kubeconfig).configuration
    auth = next(
        (
            a.get("value") or ""
            for a in config.auth_settings().values()
            if str(a.get("key", "")).lower() == "authorization"
        ),
        "",
    )
    token = auth.split(" ", 1)[1] if auth.lower().startswith("bearer ") else None
    return {
        "server": config.host,
        "ca_path": config.ssl_ca_cert,
        "insecure": not config.verify_ssl,
        "scheme": "Bearer" if token else None,
        "token": token,
        "username": config.username or None,
        "password": config.password or None,
        "certificate_path": config.cert_file,
        "private_key_path": config.key_file,
        "default_namespace": default_namespace(kubeconfig),
    }


def default_namespace(kubeconfig: str | None = None, context: str | None = None) -> str:
    """The namespace of the kubeconfig context (in a pod: its own), ``default`` when none is named."""
    return _kubeconfig.default_namespace(kubeconfig, context)


def resolve_targets(client: kubernetes.client.ApiClient, spec: CaptureSpec) -> dict[str, tuple[str, ...]]:
    """Resolve node names, node selectors, pod selectors (+ namespace selectors) and pod names.

    Raises ``SpecError`` naming the target field when nothing matches or a name is unknown.
    """
    core = kubernetes.client.CoreV1Api(client)
    if spec.node_names:
        known = {n.metadata.name for n in core.list_node().items}
        missing = [n for n in spec.node_names if n not in known]
        if missing:
            raise SpecError(
                [
                    Problem(
                        f"{_TGT}.nodeNames",
                        f"no such node: {', '.join(missing)} (kubectl get nodes lists them)",
                    )
                ]
            )
        return {n: () for n in spec.node_names}
    if spec.node_selector is not None:
        selector = selector_to_string(spec.node_selector)
        nodes = [n.metadata.name for n in core.list_node(label_selector=selector).items]
        if not nodes:
            raise SpecError([Problem(f"{_TGT}.nodeSelector", f"no node matches {selector!r}")])
        return {n: () for n in nodes}

    pods: list[Any] = []
    if spec.pod_names:
        for name in spec.pod_names:
            try:
                pods.append(core.read_namespaced_pod(name, spec.namespace))
            except ApiException as exc:
                if exc.status == 404:
                    raise SpecError(
                        [Problem(f"{_TGT}.podNames", f"no pod {name!r} in namespace {spec.namespace!r}")]
                    ) from None
                raise
    else:
        assert spec.pod_selector is not None
        selector = selector_to_string(spec.pod_selector)
        if spec.namespace_selector is not None:
            ns_selector = selector_to_string(spec.namespace_selector)
            namespaces = [n.metadata.name for n in core.list_namespace(label_selector=ns_selector).items]
            if not namespaces:
                raise SpecError(
                    [Problem(f"{_TGT}.namespaceSelector", f"no namespace matches {ns_selector!r}")]
                )
        else:
            namespaces = [spec.namespace]
        for ns in namespaces:
            pods += core.list_namespaced_pod(ns, label_selector=selector).items
        if not pods:
            where = "namespaces " + ", ".join(namespaces)
            raise SpecError([Problem(f"{_TGT}.podSelector", f"no pod matches {selector!r} in {where}")])
    nodes: dict[str, list[str]] = {}
    unscheduled = []
    for pod in pods:
        node = pod.spec.node_name if pod.spec else None
        ip = pod.status.pod_ip if pod.status else None
        if not node or not ip:
            unscheduled.append(pod.metadata.name)
            continue
        nodes.setdefault(node, [])
        if ip not in nodes[node]:
            nodes[node].append(ip)
    if not nodes:
        field = f"{_TGT}.podNames" if spec.pod_names else f"{_TGT}.podSelector"
        raise SpecError(
            [
                Problem(
                    field,
                    f"the selected pods ({', '.join(unscheduled)}) have no node or IP "
                    "yet; wait until they run",
                )
            ]
        )
    return {n: tuple(ips) for n, ips in nodes.items()}


def check_job_limit(count: int, limit: int) -> None:
    if limit and count > limit:
        raise JobLimitExceeded(count, limit)


def list_jobs(
    client: kubernetes.client.ApiClient, namespace: str | None, name: str | None = None
) -> list[dict[str, Any]]:
    """The capture Jobs (as dicts) in a namespace, or in all namespaces when it is None."""
    batch = kubernetes.client.BatchV1Api(client)
    selector = jobs_mod.capture_selector(name)
    result = (
        batch.list_job_for_all_namespaces(label_selector=selector)
        if namespace is None
        else batch.list_namespaced_job(namespace, label_selector=selector)
    )
    return [client.sanitize_for_serialization(j) for j in result.items]


def create_objects(
    client: kubernetes.client.ApiClient,
    namespace: str,
    name: str,
    jobs: list[dict[str, Any]],
    secret: dict[str, Any] | None = None,
    *,
    exist_ok: bool = False,
) -> list[str]:
    """Create the Secret (if any) and the Jobs; returns the Job names.

    Refuses (``CaptureExists``) when the capture already has objects, unless ``exist_ok``
    (the operator re-running a handler), in which case existing Jobs are kept as they are.
    """
    core = kubernetes.client.CoreV1Api(client)
    batch = kubernetes.client.BatchV1Api(client)
    if not exist_ok and list_jobs(client, namespace, name):
        raise CaptureExists(
            f"capture {name!r} already exists in namespace {namespace!r}; "
            f"delete it first (kubectl retina capture delete --name {name} -n {namespace}) "
            "or choose another --name"
        )
    if secret is not None:
        try:
            core.create_namespaced_secret(namespace, secret)
        except ApiException as exc:
            if exc.status != 409:
                raise
            if not exist_ok:
                raise CaptureExists(
                    f"secret {secret['metadata']['name']!r} already exists in namespace "
                    f"{namespace!r}; delete the old capture first"
                ) from None
    created = []
    for job in jobs:
        try:
            batch.create_namespaced_job(namespace, job)
        except ApiException as exc:
            if exc.status != 409 or not exist_ok:
                raise
        created.append(job["metadata"]["name"])
    return created


def delete_capture(client: kubernetes.client.ApiClient, namespace: str, name: str) -> tuple[int, int]:
    """Delete a capture's Jobs (with their pods) and its Secret; returns (jobs, secrets) deleted.

    The Secret is looked up by its known name (``jobs.secret_name``), never listed: listing Secrets
    would need ``list`` on secrets, which reads every Secret of the namespace, where ``get`` and
    ``delete`` of one name is all this takes. A Secret of that name without the capture's labels is
    somebody else's and stays.
    """
    core = kubernetes.client.CoreV1Api(client)
    batch = kubernetes.client.BatchV1Api(client)
    jobs = batch.list_namespaced_job(namespace, label_selector=jobs_mod.capture_selector(name)).items
    for job in jobs:
        _ignore_404(
            batch.delete_namespaced_job, job.metadata.name, namespace, propagation_policy="Background"
        )
    try:
        secret = core.read_namespaced_secret(jobs_mod.secret_name(name), namespace)
    except ApiException as exc:
        if exc.status != 404:
            raise
        return len(jobs), 0
    labels = secret.metadata.labels or {}
    if any(labels.get(key) != value for key, value in jobs_mod.capture_labels(name).items()):
        return len(jobs), 0
    _ignore_404(core.delete_namespaced_secret, secret.metadata.name, namespace)
    return len(jobs), 1


def read_secret_data(client: kubernetes.client.ApiClient, namespace: str, name: str) -> dict[str, str]:
    import base64

    secret = kubernetes.client.CoreV1Api(client).read_namespaced_secret(name, namespace)
    return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}


def _ignore_404(call: Any, *args: Any, **kwargs: Any) -> None:
    try:
        call(*args, **kwargs)
    except ApiException as exc:
        if exc.status != 404:
            raise
