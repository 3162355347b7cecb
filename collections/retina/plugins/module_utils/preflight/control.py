# Copyright: retina-onprem contributors
# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
"""Control-host checks: Helm, kubectl, the cluster, kube-prometheus-stack, Grafana."""

import json
import shutil
from http.client import HTTPConnection, HTTPException, HTTPSConnection
from typing import Any, List, Optional, Tuple
from urllib.parse import urlsplit

from .commands import run_command
from .kubeconfig import load_api_client
from .model import FAIL, PASS, SKIP, WARN, CheckResult, PreflightInputError
from .versions import minimum, parse_version

try:
    from kubernetes import client as k8s_client
    from kubernetes.client.rest import ApiException

    HAS_KUBERNETES = True
except ImportError:
    HAS_KUBERNETES = False

MIN_HELM = "3.8"
TIMEOUT = 10
PROMETHEUS_CRDS = (
    "podmonitors.monitoring.coreos.com",
    "servicemonitors.monitoring.coreos.com",
    "prometheuses.monitoring.coreos.com",
)


def check_helm() -> CheckResult:
    title = f"Helm >= {MIN_HELM}"
    fix = f"Install Helm >= {MIN_HELM} (https://helm.sh/docs/intro/install/) on the control host."
    helm = shutil.which("helm")
    if helm is None:
        return CheckResult("helm", title, FAIL, "helm not found on PATH", fix=fix, scope="control")
    code, out, err = run_command([helm, "version", "--short"], TIMEOUT)
    if code != 0:
        return CheckResult(
            "helm", title, FAIL, "helm version failed: %s" % (err or out), fix=fix, scope="control"
        )
    try:
        version = parse_version(out)
    except ValueError:
        return CheckResult("helm", title, FAIL, f"unreadable version {out!r}", fix=fix, scope="control")
    detail = {"path": helm, "version": out}
    if version >= minimum(MIN_HELM):
        return CheckResult("helm", title, PASS, f"{out} ({helm})", scope="control", detail=detail)
    return CheckResult("helm", title, FAIL, f"{out} < {MIN_HELM}", fix=fix, scope="control", detail=detail)


def check_kubectl() -> CheckResult:
    title = "kubectl"
    fix = "Install kubectl matching the cluster (https://kubernetes.io/docs/tasks/tools/)."
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return CheckResult("kubectl", title, FAIL, "kubectl not found on PATH", fix=fix, scope="control")
    code, out, err = run_command([kubectl, "version", "--client", "-o", "json"], TIMEOUT)
    if code != 0:
        return CheckResult(
            "kubectl", title, FAIL, "kubectl version failed: %s" % (err or out), fix=fix, scope="control"
        )
    try:
        git_version = json.loads(out)["clientVersion"]["gitVersion"]
        parse_version(git_version)
    except (ValueError, KeyError, TypeError):
        return CheckResult("kubectl", title, FAIL, "unreadable client version", fix=fix, scope="control")
    return CheckResult(
        "kubectl",
        title,
        PASS,
        f"client {git_version} ({kubectl})",
        scope="control",
        detail={"path": kubectl, "client_version": git_version},
    )


def _api_client(kubeconfig: Optional[str], context: Optional[str]) -> Any:
    """A kubernetes ApiClient from the project's one loader (see kubeconfig.py for the order)."""
    return load_api_client(kubeconfig, context)


def check_cluster(kubeconfig: Optional[str], context: Optional[str]) -> Tuple[CheckResult, Any]:
    title = "Kubernetes cluster reachable"
    fix = "Point --kubeconfig/--context (module: kubeconfig/context) at the cluster and check the API server."
    if not HAS_KUBERNETES:
        return CheckResult(
            "cluster",
            title,
            FAIL,
            "Python package kubernetes not installed",
            fix="pip install kubernetes (kubernetes.core needs it too).",
            scope="control",
        ), None
    try:
        api = _api_client(kubeconfig, context)
        info = k8s_client.VersionApi(api).get_code(_request_timeout=TIMEOUT)
    except Exception as error:  # noqa: BLE001 - any failure means "unreachable", reported with its text
        return CheckResult(
            "cluster",
            title,
            FAIL,
            f"unreachable: {str(error).splitlines()[0][:200]}",
            fix=fix,
            scope="control",
        ), None
    host = api.configuration.host
    return CheckResult(
        "cluster",
        title,
        PASS,
        f"{info.git_version} at {host}",
        scope="control",
        detail={"server": host, "version": info.git_version},
    ), api


def check_prometheus_stack(api: Any) -> CheckResult:
    title = "kube-prometheus-stack CRDs"
    if api is None:
        return CheckResult(
            "kube_prometheus_stack", title, SKIP, "skipped (cluster unreachable)", scope="control"
        )
    extensions = k8s_client.ApiextensionsV1Api(api)
    present, missing = [], []
    for name in PROMETHEUS_CRDS:
        try:
            # Existence is all we need: skip deserialising the CRD body.
            extensions.read_custom_resource_definition(name, _request_timeout=TIMEOUT, _preload_content=False)
            present.append(name)
        except ApiException as error:
            if error.status != 404:
                return CheckResult(
                    "kube_prometheus_stack",
                    title,
                    FAIL,
                    f"cannot read CRD {name}: HTTP {error.status}",
                    fix="Allow get on customresourcedefinitions for the installer's account.",
                    scope="control",
                )
            missing.append(name)
        except Exception as error:  # noqa: BLE001 - connection dropped mid-way: report, do not crash
            return CheckResult(
                "kube_prometheus_stack",
                title,
                FAIL,
                f"cannot read CRD {name}: {error}",
                fix="Check the API server connection.",
                scope="control",
            )
    detail = {"present": present, "missing": missing}
    if not missing:
        return CheckResult(
            "kube_prometheus_stack",
            title,
            PASS,
            "present ({})".format(", ".join(present)),
            scope="control",
            detail=detail,
        )
    return CheckResult(
        "kube_prometheus_stack",
        title,
        WARN,
        "missing: {}".format(", ".join(missing)),
        fix=(
            "Install kube-prometheus-stack (helm install prometheus-community/kube-prometheus-stack), or use "
            "the prometheus role's additionalScrapeConfigs mode."
        ),
        scope="control",
        detail=detail,
    )


def validate_grafana_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PreflightInputError(
            f"grafana_url must be an http(s) URL such as http://grafana.example:3000, got {url!r}"
        )
    if parts.username or parts.password:
        raise PreflightInputError(
            "grafana_url must not carry credentials (/api/health needs none); remove user:password@"
        )
    return url.rstrip("/")


def _get_json(url: str) -> dict:
    """GET a JSON document with the standard library (module_utils must not need Ansible's open_url)."""
    parts = urlsplit(url)
    connection_class = HTTPSConnection if parts.scheme == "https" else HTTPConnection
    connection = connection_class(parts.hostname, parts.port, timeout=TIMEOUT)
    try:
        connection.request("GET", parts.path or "/", headers={"Accept": "application/json"})
        response = connection.getresponse()
        payload = response.read().decode("utf-8")
        if response.status != 200:
            raise ValueError(f"HTTP {response.status} from {url}")
        return json.loads(payload or "{}")
    finally:
        connection.close()


def check_grafana(url: Optional[str]) -> CheckResult:
    title = "Grafana reachable"
    if not url:
        return CheckResult("grafana", title, SKIP, "skipped (no Grafana URL configured)", scope="control")
    base = validate_grafana_url(url)
    fix = f"Check grafana_url ({base}) and that Grafana answers GET /api/health."
    try:
        body = _get_json(base + "/api/health")
    except (HTTPException, OSError, ValueError) as error:
        return CheckResult("grafana", title, FAIL, f"unreachable: {error}", fix=fix, scope="control")
    database = body.get("database")
    version = body.get("version", "unknown version")
    detail = {"url": base, "version": version, "database": database}
    if database != "ok":
        return CheckResult(
            "grafana",
            title,
            FAIL,
            f"{base} answers, database {database!r}",
            fix=fix,
            scope="control",
            detail=detail,
        )
    return CheckResult("grafana", title, PASS, f"Grafana {version} at {base}", scope="control", detail=detail)


def control_checks(
    kubeconfig: Optional[str], context: Optional[str], grafana_url: Optional[str]
) -> List[CheckResult]:
    cluster, api = check_cluster(kubeconfig, context)
    return [check_helm(), check_kubectl(), cluster, check_prometheus_stack(api), check_grafana(grafana_url)]
