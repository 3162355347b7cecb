"""The Capture resource: read its ``spec`` into a checked :class:`CaptureSpec`, for CLI and operator.

The one code path is::

    kubectl retina capture create --flags   ->  capture_from_flags()  -> Capture body (dict)
    kubectl apply -f capture.yaml (operator) ->                           Capture body (dict)
    Capture body -> parse_capture() -> CaptureSpec -> kube.resolve_targets() -> jobs.build_jobs()

so both paths make the same Jobs. The values themselves are checked by the model the worker uses
too (:mod:`retina_capture.model`); this module knows where each field sits in the resource
(:data:`RESOURCE_PATHS`) and what only a resource has: targets and Secret names. Problems are
reported as :class:`SpecError`, one ``Problem(field, message)`` per bad field; ``field`` is the
path in the Capture resource (``spec.outputConfiguration.hostPath``) and the CLI shows the
matching flag instead (:data:`FIELD_TO_FLAG`).

The resource follows Retina's ``retina.sh/v1alpha1`` Capture (see RETINA-METRICS.md, Capture);
``captureTarget.nodeNames`` is our addition (Retina's CLI turns ``--node-names`` into a hostname
selector; naming nodes directly also works where the hostname label differs from the name).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BeforeValidator

from retina_capture.model import (
    DEFAULT_S3_PATH,
    CaptureOptions,
    DnsLabel,
    DnsSubdomain,
    ModelProblems,
    NodeNames,
    PodNames,
    Problem,
    check,
)

__all__ = ["DEFAULT_S3_PATH", "CaptureSpec", "Problem", "SpecError", "parse_capture"]

API_GROUP = "retina.sh"
API_VERSION = "v1alpha1"
KIND = "Capture"
PLURAL = "captures"

DEFAULT_MAX_SIZE = CaptureOptions.model_fields["max_size"].default
DEFAULT_NODE_SELECTOR = "kubernetes.io/os=linux"

_OPT = "spec.captureConfiguration.captureOption"
_CFG = "spec.captureConfiguration"
_TGT = "spec.captureConfiguration.captureTarget"
_OUT = "spec.outputConfiguration"

#: Model field -> where it sits in the Capture resource. ``targets`` and ``outputs`` name the
#: objects that checks across several of their fields report on.
RESOURCE_PATHS: dict[str, str] = {
    "name": "metadata.name",
    "namespace": "metadata.namespace",
    "duration": f"{_OPT}.duration",
    "max_size": f"{_OPT}.maxCaptureSize",
    "packet_size": f"{_OPT}.packetSize",
    "file_count": f"{_OPT}.fileCount",
    "interfaces": f"{_OPT}.interfaces",
    "pcap_filter": f"{_OPT}.pcapFilter",
    "tcpdump_filter": f"{_CFG}.tcpdumpFilter",
    "include_filter": f"{_CFG}.filters.include",
    "exclude_filter": f"{_CFG}.filters.exclude",
    "include_metadata": f"{_CFG}.includeMetadata",
    "node_names": f"{_TGT}.nodeNames",
    "node_selector": f"{_TGT}.nodeSelector",
    "pod_selector": f"{_TGT}.podSelector",
    "namespace_selector": f"{_TGT}.namespaceSelector",
    "pod_names": f"{_TGT}.podNames",
    "host_path": f"{_OUT}.hostPath",
    "pvc": f"{_OUT}.persistentVolumeClaim",
    "blob_secret": f"{_OUT}.blobUpload",
    "s3_bucket": f"{_OUT}.s3Upload.bucket",
    "s3_region": f"{_OUT}.s3Upload.region",
    "s3_endpoint": f"{_OUT}.s3Upload.endpoint",
    "s3_path": f"{_OUT}.s3Upload.path",
    "s3_secret_name": f"{_OUT}.s3Upload.secretName",
}
_GROUPS = {"targets": _TGT, "outputs": _OUT}

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


def for_cli(problem: Problem) -> str:
    """The problem with its field shown as the kubectl-retina flag."""
    return f"{FIELD_TO_FLAG.get(problem.field, problem.field)}: {problem.message}"


class SpecError(ValueError):
    """A Capture that cannot be run; ``problems`` names every bad field."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(str(p) for p in self.problems))

    def for_cli(self) -> str:
        return "\n".join(for_cli(p) for p in self.problems)


# -- label selectors, checked as the API server checks them -----------------------------------

_LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_LABEL_KEY = re.compile(rf"([a-z0-9]([-a-z0-9.]{{0,251}}[a-z0-9])?/)?{_LABEL_NAME}")
_LABEL_VALUE = re.compile(rf"({_LABEL_NAME})?")
_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


def _label_key(key: Any, where: str) -> str:
    if (
        not isinstance(key, str)
        or not _LABEL_KEY.fullmatch(key)
        or len(key.partition("/")[0]) > 253
        or ("/" in key and len(key.rsplit("/", 1)[1]) > 63)
    ):
        raise ValueError(
            f"{where}: {key!r} is not a label key (an optional DNS prefix and '/', then up "
            "to 63 letters, digits, '-', '_', '.', starting and ending with a letter or digit)"
        )
    return key


def _label_value(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _LABEL_VALUE.fullmatch(value):
        raise ValueError(
            f"{where}: {value!r} is not a label value (up to 63 letters, digits, '-', '_', "
            "'.', starting and ending with a letter or digit)"
        )
    return value


def _label_selector(value: Any) -> dict[str, Any]:
    """A LabelSelector (``matchLabels`` and ``matchExpressions``), every key and value checked."""
    if not isinstance(value, Mapping):
        raise ValueError("must be a label selector (matchLabels / matchExpressions)")
    unknown = sorted(set(value) - {"matchLabels", "matchExpressions"})
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown; a label selector has matchLabels and matchExpressions")
    labels = value.get("matchLabels") or {}
    expressions = value.get("matchExpressions") or []
    if not isinstance(labels, Mapping):
        raise ValueError("matchLabels must map label keys to values")
    if not isinstance(expressions, list):
        raise ValueError("matchExpressions must be a list of {key, operator, values}")
    for key, label in labels.items():
        _label_key(key, "matchLabels")
        _label_value(label, f"matchLabels.{key}")
    for i, expr in enumerate(expressions):
        where = f"matchExpressions[{i}]"
        if not isinstance(expr, Mapping) or set(expr) - {"key", "operator", "values"}:
            raise ValueError(f"{where}: must have key, operator and (for In, NotIn) values")
        _label_key(expr.get("key"), f"{where}.key")
        operator, values = expr.get("operator"), expr.get("values") or []
        if operator not in _OPERATORS:
            raise ValueError(f"{where}.operator: {operator!r} is not one of {', '.join(_OPERATORS)}")
        if not isinstance(values, list):
            raise ValueError(f"{where}.values: must be a list of label values")
        if operator in ("In", "NotIn") and not values:
            raise ValueError(f"{where}.values: {operator} needs at least one value")
        if operator in ("Exists", "DoesNotExist") and values:
            raise ValueError(f"{where}.values: {operator} takes no values")
        for value_ in values:
            _label_value(value_, f"{where}.values")
    if not labels and not expressions:
        raise ValueError("is empty; it would select everything, give labels")
    return {k: v for k, v in (("matchLabels", dict(labels)), ("matchExpressions", list(expressions))) if v}


Selector = Annotated[dict[str, Any], BeforeValidator(_label_selector)]


@dataclass(frozen=True)
class S3Output:
    bucket: str
    secret_name: str
    region: str | None = None
    endpoint: str | None = None
    path: str = DEFAULT_S3_PATH


def presence_problems(given: set[str]) -> list[tuple[str, str]]:
    """Rules on which fields a Capture gives (targets, outputs), as (field, message).

    Kept apart from the value checks so that a Capture with bad values still hears about a
    missing target or output in the same answer.
    """
    problems = []
    node_target = bool(given & {"node_names", "node_selector"})
    pod_target = bool(given & {"pod_names", "pod_selector"})
    if node_target and pod_target:
        problems.append(
            ("targets", "select nodes (nodeNames/nodeSelector) or pods (podSelector/podNames), not both")
        )
    if not node_target and not pod_target:
        problems.append(("targets", "selects nothing; give nodeNames, nodeSelector, podSelector or podNames"))
    if "namespace_selector" in given and "pod_selector" not in given:
        problems.append(("namespace_selector", "needs a podSelector as well"))
    if "s3_bucket" in given and "s3_secret_name" not in given:
        problems.append(
            (
                "s3_secret_name",
                "needs the name of a Secret with keys s3-access-key-id and s3-secret-access-key",
            )
        )
    if not given & {"host_path", "pvc", "blob_secret", "s3_bucket"}:
        problems.append(
            (
                "outputs",
                "no output; give at least one of hostPath, persistentVolumeClaim, blobUpload, s3Upload",
            )
        )
    return problems


class CaptureSpec(CaptureOptions):
    """A checked Capture: what to capture (the shared options), on which nodes or pods, and which
    Secrets hold the upload credentials."""

    namespace: DnsLabel = "default"
    node_names: NodeNames = ()
    node_selector: Selector | None = None
    pod_selector: Selector | None = None
    namespace_selector: Selector | None = None
    pod_names: PodNames = ()
    pvc: DnsSubdomain | None = None
    blob_secret: DnsSubdomain | None = None
    s3_secret_name: DnsSubdomain | None = None

    @classmethod
    def presence_problems(cls, given: set[str]) -> list[tuple[str, str]]:
        return super().presence_problems(given) + presence_problems(given)

    @property
    def targets_pods(self) -> bool:
        return self.pod_selector is not None or bool(self.pod_names)

    @property
    def s3(self) -> S3Output | None:
        if self.s3_bucket is None:
            return None
        return S3Output(
            self.s3_bucket, self.s3_secret_name or "", self.s3_region, self.s3_endpoint, self.s3_path
        )


# -- label selectors as strings ----------------------------------------------------------------


def parse_selector_flag(text: str, field_name: str) -> dict[str, Any]:
    """``a=b,c=d`` (the CLI's form, as Retina's) -> a LabelSelector ``{"matchLabels": {...}}``."""
    labels: dict[str, str] = {}
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SpecError(
                [Problem(field_name, f"{item!r} is not key=value; write e.g. app=web,tier=front")]
            )
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


# -- reading the resource ----------------------------------------------------------------------


def _known_children() -> dict[str, set[str]]:
    """Object path -> the keys it may hold, from RESOURCE_PATHS."""
    children: dict[str, set[str]] = {}
    for path in RESOURCE_PATHS.values():
        parts = path.split(".")
        for i in range(1, len(parts)):
            children.setdefault(".".join(parts[:i]), set()).add(parts[i])
    return children


_CHILDREN = _known_children()
_IGNORED = {"metadata", ""}  # metadata carries much more than a name; the top carries apiVersion, status


def _read_resource(body: Mapping[str, Any], problems: list[Problem]) -> dict[str, Any]:
    """The model's values from a Capture body; shape problems (not an object, unknown key) noted."""
    objects: dict[str, Mapping[str, Any] | None] = {"": body}
    for path in sorted(_CHILDREN, key=lambda p: p.count(".")):
        parent, _, key = path.rpartition(".")
        holder = objects.get(parent)
        value = holder.get(key) if holder is not None else None
        if value is not None and not isinstance(value, Mapping):
            problems.append(Problem(path, "must be an object"))
            value = None
        objects[path] = value
        if value is not None and path not in _IGNORED:
            for unknown in sorted(set(value) - _CHILDREN[path], key=str):
                problems.append(
                    Problem(
                        f"{path}.{unknown}",
                        "unknown field; known ones are " + ", ".join(sorted(_CHILDREN[path])),
                    )
                )
    values: dict[str, Any] = {}
    for field, path in RESOURCE_PATHS.items():
        parent, _, key = path.rpartition(".")
        holder = objects.get(parent)
        if holder is not None and holder.get(key) is not None:
            values[field] = holder[key]
    s3 = objects.get(f"{_OUT}.s3Upload")
    if s3 is not None:
        values.setdefault("s3_bucket", "")  # an s3Upload without a bucket is refused by name
    return values


def parse_capture(body: Mapping[str, Any]) -> CaptureSpec:
    """Read and check a Capture resource (a dict as the API returns it). Raises ``SpecError``."""
    problems: list[Problem] = []
    if not isinstance(body, Mapping):
        raise SpecError([Problem("", "a Capture must be an object")])
    values = _read_resource(body, problems)
    values.setdefault("name", "")
    try:
        capture = check(CaptureSpec, values, lambda f: _GROUPS.get(f) or RESOURCE_PATHS.get(f, f))
    except ModelProblems as exc:
        raise SpecError(problems + exc.problems) from None
    if problems:
        raise SpecError(problems)
    return capture


def capture_resource(name: str, namespace: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    """A Capture resource body."""
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": dict(spec),
    }
