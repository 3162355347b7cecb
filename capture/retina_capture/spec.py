"""What a capture is: the Capture resource's ``spec``, read and checked once for CLI and operator.

The one code path is::

    kubectl retina capture create --flags   ->  capture_from_flags()  -> Capture body (dict)
    kubectl apply -f capture.yaml (operator) ->                           Capture body (dict)
    Capture body -> parse_capture() -> CaptureSpec -> kube.resolve_targets() -> jobs.build_jobs()

so both paths make the same Jobs. Problems are reported as :class:`SpecError`, one
``Problem(field, message)`` per bad field; ``field`` is the path in the Capture resource
(``spec.outputConfiguration.hostPath``) and the CLI shows the matching flag instead
(:data:`FIELD_TO_FLAG`).

The resource follows Retina's ``retina.sh/v1alpha1`` Capture (see RETINA-METRICS.md, Capture);
``captureTarget.nodeNames`` is our addition (Retina's CLI turns ``--node-names`` into a hostname
selector; naming nodes directly also works where the hostname label differs from the name).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from retina_capture.filters import FilterError, check_expression, parse_endpoint_list
from retina_capture.worker.settings import DEFAULT_S3_PATH, format_duration, parse_duration

API_GROUP = "retina.sh"
API_VERSION = "v1alpha1"
KIND = "Capture"
PLURAL = "captures"

DEFAULT_DURATION = 60.0
DEFAULT_MAX_SIZE = 100
DEFAULT_NODE_SELECTOR = "kubernetes.io/os=linux"

_OPT = "spec.captureConfiguration.captureOption"
_CFG = "spec.captureConfiguration"
_TGT = "spec.captureConfiguration.captureTarget"
_OUT = "spec.outputConfiguration"

#: Capture field -> kubectl-retina flag, so that the CLI names what the user typed.
FIELD_TO_FLAG: dict[str, str] = {
    "metadata.name": "--name",
    "metadata.namespace": "--namespace",
    f"{_OPT}.duration": "--duration",
    f"{_OPT}.maxCaptureSize": "--max-size",
    f"{_OPT}.packetSize": "--packet-size",
    f"{_OPT}.fileCount": "--file-count",
    f"{_OPT}.interfaces": "--interfaces",
    f"{_OPT}.pcapFilter": "--pcap-filter",
    f"{_CFG}.tcpdumpFilter": "--tcpdump-filter",
    f"{_CFG}.filters.include": "--include-filter",
    f"{_CFG}.filters.exclude": "--exclude-filter",
    f"{_CFG}.includeMetadata": "--include-metadata",
    f"{_TGT}.nodeNames": "--node-names",
    f"{_TGT}.nodeSelector": "--node-selectors",
    f"{_TGT}.podSelector": "--pod-selectors",
    f"{_TGT}.namespaceSelector": "--namespace-selectors",
    f"{_TGT}.podNames": "--pod-names",
    f"{_TGT}": "--node-selectors/--node-names/--pod-selectors/--pod-names",
    f"{_OUT}.hostPath": "--host-path",
    f"{_OUT}.persistentVolumeClaim": "--pvc",
    f"{_OUT}.blobUpload": "--blob-upload",
    f"{_OUT}.s3Upload.bucket": "--s3-bucket",
    f"{_OUT}.s3Upload.region": "--s3-region",
    f"{_OUT}.s3Upload.endpoint": "--s3-endpoint",
    f"{_OUT}.s3Upload.path": "--s3-path",
    f"{_OUT}.s3Upload.secretName": "--s3-access-key-id/--s3-secret-access-key",
    f"{_OUT}": "--host-path/--pvc/--blob-upload/--s3-bucket",
}


@dataclass(frozen=True)
class Problem:
    field: str
    message: str

    def for_cli(self) -> str:
        return f"{FIELD_TO_FLAG.get(self.field, self.field)}: {self.message}"

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class SpecError(ValueError):
    """A Capture that cannot be run; ``problems`` names every bad field."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(str(p) for p in self.problems))

    def for_cli(self) -> str:
        return "\n".join(p.for_cli() for p in self.problems)


@dataclass(frozen=True)
class S3Output:
    bucket: str
    secret_name: str
    region: str | None = None
    endpoint: str | None = None
    path: str = DEFAULT_S3_PATH


@dataclass(frozen=True)
class CaptureSpec:
    """A checked Capture: what to capture, where, and where to write the tarballs."""

    name: str
    namespace: str
    duration: float = DEFAULT_DURATION  # seconds
    max_size: int = DEFAULT_MAX_SIZE  # MB
    packet_size: int = 0
    file_count: int = 0
    interfaces: tuple[str, ...] = ("any",)
    tcpdump_filter: str = ""
    include_filter: tuple[str, ...] = ()
    exclude_filter: tuple[str, ...] = ()
    include_metadata: bool = True
    # targets: node names, or a node selector, or pods (selector or names)
    node_names: tuple[str, ...] = ()
    node_selector: Mapping[str, Any] | None = None
    pod_selector: Mapping[str, Any] | None = None
    namespace_selector: Mapping[str, Any] | None = None
    pod_names: tuple[str, ...] = ()
    # outputs
    host_path: str | None = None
    pvc: str | None = None
    blob_secret: str | None = None
    s3: S3Output | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def targets_pods(self) -> bool:
        return self.pod_selector is not None or bool(self.pod_names)

    @property
    def duration_text(self) -> str:
        return format_duration(self.duration)


# -- label selectors -------------------------------------------------------------------------

def parse_selector_flag(text: str, field_name: str) -> dict[str, Any]:
    """``a=b,c=d`` (the CLI's form, as Retina's) -> a LabelSelector ``{"matchLabels": {...}}``."""
    labels: dict[str, str] = {}
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SpecError([Problem(field_name,
                                     f"{item!r} is not key=value; write e.g. app=web,tier=front")])
        labels[key.strip()] = value.strip()
    return {"matchLabels": labels}


def selector_to_string(selector: Mapping[str, Any]) -> str:
    """A LabelSelector (matchLabels + matchExpressions) as the API's ``labelSelector`` string."""
    terms = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In":
            terms.append(f"{key} in ({','.join(values)})")
        elif op == "NotIn":
            terms.append(f"{key} notin ({','.join(values)})")
        elif op == "Exists":
            terms.append(key)
        elif op == "DoesNotExist":
            terms.append(f"!{key}")
    return ",".join(terms)


_LABEL_KEY = re.compile(r"([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")
_DNS_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")


def _check_selector(selector: Any, field_name: str, problems: list[Problem]) -> None:
    if not isinstance(selector, Mapping):
        problems.append(Problem(field_name, "must be a label selector (matchLabels / matchExpressions)"))
        return
    for key, value in (selector.get("matchLabels") or {}).items():
        if not _LABEL_KEY.fullmatch(str(key)) or not _LABEL_VALUE.fullmatch(str(value)):
            problems.append(Problem(field_name, f"{key}={value} is not a valid label"))
    for expr in selector.get("matchExpressions") or []:
        if expr.get("operator") not in ("In", "NotIn", "Exists", "DoesNotExist"):
            problems.append(Problem(field_name, f"operator {expr.get('operator')!r} is not one of "
                                                "In, NotIn, Exists, DoesNotExist"))
    if not selector.get("matchLabels") and not selector.get("matchExpressions"):
        problems.append(Problem(field_name, "is empty; it would select everything, give labels"))


# -- parsing the resource --------------------------------------------------------------------

def _relative_path(value: Any, field_name: str, problems: list[Problem]) -> str | None:
    if value is None:
        return None
    text = str(value)
    if not text.strip():
        problems.append(Problem(field_name, "is empty; give a directory relative to the capture base"))
    elif text.startswith("/"):
        problems.append(Problem(field_name, f"{text!r} is absolute; give a path relative to the node's "
                                            "capture directory /var/lib/retina/captures"))
    elif ".." in PurePosixPath(text).parts:
        problems.append(Problem(field_name, f"{text!r} contains '..'; give a path that stays inside the "
                                            "capture directory"))
    elif any(c in text for c in "\0\n\r"):
        problems.append(Problem(field_name, "contains control characters"))
    return text


def _int(value: Any, field_name: str, problems: list[Problem], minimum: int, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        problems.append(Problem(field_name, f"{value!r} is not a whole number"))
        return default
    if value < minimum:
        problems.append(Problem(field_name, f"must be at least {minimum} (got {value})"))
    return value


def _list(value: Any, field_name: str, problems: list[Problem]) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [v for v in value.split(",")]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems.append(Problem(field_name, "must be a list of strings"))
        return ()
    return tuple(v.strip() for v in value if v.strip())


def parse_capture(body: Mapping[str, Any]) -> CaptureSpec:
    """Read and check a Capture resource (a dict as the API returns it)."""
    problems: list[Problem] = []
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    cfg = spec.get("captureConfiguration") or {}
    opt = cfg.get("captureOption") or {}
    tgt = cfg.get("captureTarget") or {}
    out = spec.get("outputConfiguration") or {}
    filters = cfg.get("filters") or {}

    name = str(meta.get("name") or "")
    if not _DNS_NAME.fullmatch(name) or len(name) > 40:
        problems.append(Problem("metadata.name", f"{name!r} must be 1-40 lowercase letters, digits and '-', "
                                                 "starting and ending with a letter or digit"))
    namespace = str(meta.get("namespace") or "default")

    duration = DEFAULT_DURATION
    if opt.get("duration") is not None:
        try:
            duration = parse_duration(str(opt["duration"]))
        except ValueError as exc:
            problems.append(Problem(f"{_OPT}.duration", str(exc)))
        if duration <= 0:
            problems.append(Problem(f"{_OPT}.duration", f"must be more than zero, e.g. 30s or 1m "
                                                        f"(got {opt['duration']})"))
    max_size = _int(opt.get("maxCaptureSize"), f"{_OPT}.maxCaptureSize", problems, 1, DEFAULT_MAX_SIZE)
    packet_size = _int(opt.get("packetSize"), f"{_OPT}.packetSize", problems, 0, 0)
    file_count = _int(opt.get("fileCount"), f"{_OPT}.fileCount", problems, 0, 0)
    interfaces = _list(opt.get("interfaces"), f"{_OPT}.interfaces", problems) or ("any",)
    for iface in interfaces:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._@:-]{0,14}", iface):
            problems.append(Problem(f"{_OPT}.interfaces", f"{iface!r} is not an interface name"))

    tcpdump_filter = ""
    for field_name, value in ((f"{_CFG}.tcpdumpFilter", cfg.get("tcpdumpFilter")),
                              (f"{_OPT}.pcapFilter", opt.get("pcapFilter"))):
        if value:
            try:
                checked = check_expression(str(value), field_name)
            except FilterError as exc:
                problems.append(Problem(field_name, str(exc).split(": ", 1)[1]))
                continue
            if tcpdump_filter and checked != tcpdump_filter:
                problems.append(Problem(field_name, "differs from tcpdumpFilter; give only one of them"))
            tcpdump_filter = checked
    endpoint_lists = {}
    for key in ("include", "exclude"):
        field_name = f"{_CFG}.filters.{key}"
        items = _list(filters.get(key), field_name, problems)
        try:
            parse_endpoint_list(",".join(items), field_name)
        except FilterError as exc:
            problems.append(Problem(field_name, str(exc).split(": ", 1)[1]))
        endpoint_lists[key] = items
    include_metadata = cfg.get("includeMetadata", True)
    if not isinstance(include_metadata, bool):
        problems.append(Problem(f"{_CFG}.includeMetadata", "must be true or false"))
        include_metadata = True

    # Targets.
    node_names = _list(tgt.get("nodeNames"), f"{_TGT}.nodeNames", problems)
    pod_names = _list(tgt.get("podNames"), f"{_TGT}.podNames", problems)
    for n in node_names:
        if not _DNS_SUBDOMAIN.fullmatch(n):
            problems.append(Problem(f"{_TGT}.nodeNames", f"{n!r} is not a node name"))
    for key in ("nodeSelector", "podSelector", "namespaceSelector"):
        if tgt.get(key) is not None:
            _check_selector(tgt[key], f"{_TGT}.{key}", problems)
    node_target = bool(node_names) or tgt.get("nodeSelector") is not None
    pod_target = bool(pod_names) or tgt.get("podSelector") is not None
    if node_target and pod_target:
        problems.append(Problem(_TGT, "select nodes (nodeNames/nodeSelector) or pods (podSelector/podNames), "
                                      "not both"))
    elif not node_target and not pod_target:
        problems.append(Problem(_TGT, "selects nothing; give nodeNames, nodeSelector, podSelector "
                                      "or podNames"))
    if tgt.get("namespaceSelector") is not None and tgt.get("podSelector") is None:
        problems.append(Problem(f"{_TGT}.namespaceSelector", "needs a podSelector as well"))

    # Outputs.
    host_path = _relative_path(out.get("hostPath"), f"{_OUT}.hostPath", problems)
    pvc = out.get("persistentVolumeClaim")
    if pvc is not None and not _DNS_SUBDOMAIN.fullmatch(str(pvc)):
        problems.append(Problem(f"{_OUT}.persistentVolumeClaim", f"{pvc!r} is not a claim name"))
    blob = out.get("blobUpload")
    if blob is not None and not _DNS_SUBDOMAIN.fullmatch(str(blob)):
        problems.append(Problem(f"{_OUT}.blobUpload", f"{blob!r} is not the name of a Secret "
                                                      "(with key blob-upload-url)"))
    s3 = None
    if out.get("s3Upload") is not None:
        s3_body = out["s3Upload"]
        bucket = str(s3_body.get("bucket") or "")
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
            problems.append(Problem(f"{_OUT}.s3Upload.bucket", f"{bucket!r} is not a bucket name "
                                                               "(3-63 lowercase letters, digits, '.', '-')"))
        secret = str(s3_body.get("secretName") or "")
        if not _DNS_SUBDOMAIN.fullmatch(secret):
            problems.append(Problem(f"{_OUT}.s3Upload.secretName",
                                    "needs the name of a Secret with keys s3-access-key-id and "
                                    "s3-secret-access-key"))
        endpoint = s3_body.get("endpoint")
        if endpoint is not None and not re.match(r"https?://[^/\s]+", str(endpoint)):
            problems.append(Problem(f"{_OUT}.s3Upload.endpoint",
                                    f"{endpoint!r} is not a URL like https://minio.local:9000"))
        path = s3_body.get("path") or DEFAULT_S3_PATH
        if _relative_path(path, f"{_OUT}.s3Upload.path", problems) is None:
            path = DEFAULT_S3_PATH
        s3 = S3Output(bucket, secret, s3_body.get("region") or None, endpoint, str(path))
    unknown_outputs = sorted(set(out) - {"hostPath", "persistentVolumeClaim", "blobUpload", "s3Upload"})
    for key in unknown_outputs:
        problems.append(Problem(f"{_OUT}.{key}", "unknown output; use hostPath, persistentVolumeClaim, "
                                                 "blobUpload or s3Upload"))
    if host_path is None and pvc is None and blob is None and s3 is None:
        problems.append(Problem(_OUT, "no output; give at least one of hostPath, persistentVolumeClaim, "
                                      "blobUpload, s3Upload"))
    if problems:
        raise SpecError(problems)
    return CaptureSpec(
        name=name, namespace=namespace, duration=duration, max_size=max_size, packet_size=packet_size,
        file_count=file_count, interfaces=interfaces, tcpdump_filter=tcpdump_filter,
        include_filter=endpoint_lists["include"], exclude_filter=endpoint_lists["exclude"],
        include_metadata=include_metadata, node_names=node_names, node_selector=tgt.get("nodeSelector"),
        pod_selector=tgt.get("podSelector"), namespace_selector=tgt.get("namespaceSelector"),
        pod_names=pod_names, host_path=host_path, pvc=pvc, blob_secret=blob, s3=s3)


def capture_resource(name: str, namespace: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    """A Capture resource body."""
    return {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": KIND,
            "metadata": {"name": name, "namespace": namespace}, "spec": dict(spec)}
