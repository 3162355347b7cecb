"""What a CaptureTrigger says: which alerts it answers, what to capture, and its limits.

A ``retina.sh/v1alpha1`` CaptureTrigger (namespaced) reads::

    spec:
      alertMatchers:                 # every matcher must hold (Alertmanager's matcher rules)
        - {name: alertname, value: RetinaDropsRising}             # matchType "=" by default
        - {name: namespace, value: "shop|web", matchType: "=~"}   # =, !=, =~, !~ (anchored)
      targetLabels:                  # where the target is in the alert's labels (these defaults)
        namespace: namespace
        pod: pod
        node: node
        pairs:                       # a pod pair: both pods are captured by one Capture
          - {namespace: source_namespace, pod: source_podname}
          - {namespace: destination_namespace, pod: destination_podname}
      captureTemplate:               # a Capture spec; its captureTarget is filled from the alert
        captureConfiguration: {captureOption: {duration: 30s}}
        outputConfiguration: {hostPath: alerts}
      cooldown: 10m                  # per target: the same target is not captured again sooner
      maxConcurrentCaptures: 2       # this trigger's Captures still running
      captureExpiry: 24h             # the Captures it creates are deleted this long after creation

How an alert becomes a target (the first rule that finds labels wins): a pod pair (both pods
of ``pairs``, or the one of them the alert names); a pod (``namespace`` + ``pod``); every pod
of a namespace (``namespace`` alone, at most :data:`MAX_NAMESPACE_PODS`); a node (``node``).

Problems are reported like a Capture's: ``Problem(field, message)`` with the field's path.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from retina_capture.spec import Problem, SpecError
from retina_common.durations import DurationError, bounded_duration

API_GROUP = "retina.sh"
API_VERSION = "v1alpha1"
KIND = "CaptureTrigger"
PLURAL = "capturetriggers"

#: Labels and annotations on the Captures a trigger creates.
LABEL_TRIGGER = "retina.sh/trigger"
LABEL_TARGET = "retina.sh/trigger-target"
LABEL_FINGERPRINT = "retina.sh/alert-fingerprint"
ANNOTATION_ALERT = "retina.sh/alert"
ANNOTATION_TARGET = "retina.sh/trigger-target"
ANNOTATION_EXPIRES = "retina.sh/expires-at"

MATCH_TYPES = ("=", "!=", "=~", "!~")
#: A namespace-wide alert captures at most this many pods (their IPs go into the pcap filter).
MAX_NAMESPACE_PODS = 32
DEFAULT_COOLDOWN = 600.0
DEFAULT_EXPIRY = 86400.0
DEFAULT_MAX_CONCURRENT = 3
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")  # Prometheus label names


@dataclass(frozen=True)
class Matcher:
    """One Alertmanager matcher; regular expressions are anchored as Alertmanager anchors them."""

    name: str
    value: str
    match_type: str = "="

    def matches(self, labels: Mapping[str, str]) -> bool:
        actual = labels.get(self.name, "")
        if self.match_type == "=":
            return actual == self.value
        if self.match_type == "!=":
            return actual != self.value
        found = re.fullmatch(self.value, actual) is not None
        return found if self.match_type == "=~" else not found


@dataclass(frozen=True)
class PodLabels:
    namespace: str
    pod: str


@dataclass(frozen=True)
class TargetLabels:
    namespace: str = "namespace"
    pod: str = "pod"
    node: str = "node"
    pairs: tuple[PodLabels, ...] = (
        PodLabels("source_namespace", "source_podname"),
        PodLabels("destination_namespace", "destination_podname"),
    )


@dataclass(frozen=True)
class Target:
    """What to capture for one alert: pods (namespace, name), a whole namespace, or a node."""

    kind: str  # "pods" | "namespace" | "node"
    pods: tuple[tuple[str, str], ...] = ()
    namespace: str = ""
    node: str = ""

    @property
    def key(self) -> str:
        """A stable text naming the target (cooldown is kept per key)."""
        if self.kind == "pods":
            return "pods:" + ",".join(f"{ns}/{name}" for ns, name in self.pods)
        if self.kind == "namespace":
            return f"namespace:{self.namespace}"
        return f"node:{self.node}"

    @property
    def key_hash(self) -> str:
        """The key as a label value (63 characters at most, letters and digits)."""
        return hashlib.sha256(self.key.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class TriggerSpec:
    namespace: str
    name: str
    matchers: tuple[Matcher, ...]
    template: Mapping[str, Any]
    target_labels: TargetLabels = field(default_factory=TargetLabels)
    cooldown: float = DEFAULT_COOLDOWN
    max_concurrent: int = DEFAULT_MAX_CONCURRENT
    expiry: float = DEFAULT_EXPIRY

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(m.matches(labels) for m in self.matchers)

    def target(self, labels: Mapping[str, str]) -> Target | None:
        """The alert's target, or None when its labels name none."""
        t = self.target_labels
        pods = [
            (labels[p.namespace], labels[p.pod])
            for p in t.pairs
            if labels.get(p.namespace) and labels.get(p.pod)
        ]
        if pods:
            return Target("pods", pods=tuple(dict.fromkeys(pods)))
        if labels.get(t.namespace) and labels.get(t.pod):
            return Target("pods", pods=((labels[t.namespace], labels[t.pod]),))
        if labels.get(t.namespace):
            return Target("namespace", namespace=labels[t.namespace])
        if labels.get(t.node):
            return Target("node", node=labels[t.node])
        return None


def _matchers(raw: Any, problems: list[Problem]) -> tuple[Matcher, ...]:
    where = "spec.alertMatchers"
    if not isinstance(raw, list) or not raw:
        problems.append(
            Problem(where, "give at least one matcher, e.g. {name: alertname, value: RetinaDropsRising}")
        )
        return ()
    out = []
    for i, item in enumerate(raw):
        at = f"{where}[{i}]"
        if not isinstance(item, Mapping):
            problems.append(Problem(at, "must be a mapping with name, value and matchType"))
            continue
        name, value, match_type = item.get("name"), item.get("value", ""), item.get("matchType", "=")
        if not isinstance(name, str) or not _LABEL_NAME.match(name):
            problems.append(Problem(f"{at}.name", f"{name!r} is not a label name ([a-zA-Z_][a-zA-Z0-9_]*)"))
            continue
        if not isinstance(value, str):
            problems.append(Problem(f"{at}.value", "must be a string"))
            continue
        if match_type not in MATCH_TYPES:
            problems.append(
                Problem(f"{at}.matchType", f"{match_type!r} is not one of {', '.join(MATCH_TYPES)}")
            )
            continue
        if match_type in ("=~", "!~"):
            try:
                re.compile(value)
            except re.error as exc:
                problems.append(Problem(f"{at}.value", f"not a regular expression: {exc}"))
                continue
        out.append(Matcher(name, value, match_type))
    return tuple(out)


def _label_name(raw: Any, at: str, default: str, problems: list[Problem]) -> str:
    if raw is None:
        return default
    if not isinstance(raw, str) or not _LABEL_NAME.match(raw):
        problems.append(Problem(at, f"{raw!r} is not a label name"))
        return default
    return raw


def _target_labels(raw: Any, problems: list[Problem]) -> TargetLabels:
    where = "spec.targetLabels"
    if raw is None:
        return TargetLabels()
    if not isinstance(raw, Mapping):
        problems.append(Problem(where, "must be a mapping (namespace, pod, node, pairs)"))
        return TargetLabels()
    default = TargetLabels()
    pairs = default.pairs
    if raw.get("pairs") is not None:
        if not isinstance(raw["pairs"], list):
            problems.append(Problem(f"{where}.pairs", "must be a list of {namespace, pod} label names"))
        else:
            pairs = tuple(
                PodLabels(
                    _label_name(
                        (p or {}).get("namespace"), f"{where}.pairs[{i}].namespace", "namespace", problems
                    ),
                    _label_name((p or {}).get("pod"), f"{where}.pairs[{i}].pod", "pod", problems),
                )
                for i, p in enumerate(raw["pairs"])
            )
    return TargetLabels(
        namespace=_label_name(raw.get("namespace"), f"{where}.namespace", default.namespace, problems),
        pod=_label_name(raw.get("pod"), f"{where}.pod", default.pod, problems),
        node=_label_name(raw.get("node"), f"{where}.node", default.node, problems),
        pairs=pairs,
    )


def _duration(
    raw: Any, at: str, default: float, minimum: float, maximum: float, problems: list[Problem]
) -> float:
    if raw is None:
        return default
    try:
        return bounded_duration(raw, minimum=minimum, maximum=maximum)
    except DurationError as exc:
        problems.append(Problem(at, str(exc)))
        return default


def parse_trigger(body: Mapping[str, Any]) -> TriggerSpec:
    """Read and check a CaptureTrigger; raises :class:`SpecError` naming every bad field.

    The template is checked as the Capture it would make (``spec.parse_capture``), with a
    placeholder target, so a trigger that could never create a valid Capture is refused now and
    not when an alert fires at three in the morning.
    """
    from retina_capture import spec as capture_spec  # the Capture model, one set of rules

    problems: list[Problem] = []
    meta = body.get("metadata") or {}
    raw = body.get("spec") or {}
    if not isinstance(raw, Mapping):
        raise SpecError([Problem("spec", "must be a mapping")])
    matchers = _matchers(raw.get("alertMatchers"), problems)
    targets = _target_labels(raw.get("targetLabels"), problems)
    cooldown = _duration(raw.get("cooldown"), "spec.cooldown", DEFAULT_COOLDOWN, 0, 7 * 86400, problems)
    expiry = _duration(
        raw.get("captureExpiry"), "spec.captureExpiry", DEFAULT_EXPIRY, 60, 90 * 86400, problems
    )
    max_concurrent = raw.get("maxConcurrentCaptures", DEFAULT_MAX_CONCURRENT)
    if (
        isinstance(max_concurrent, bool)
        or not isinstance(max_concurrent, int)
        or not 1 <= max_concurrent <= 100
    ):
        problems.append(
            Problem("spec.maxConcurrentCaptures", f"{max_concurrent!r} must be a whole number 1-100")
        )
        max_concurrent = DEFAULT_MAX_CONCURRENT
    template = raw.get("captureTemplate")
    if not isinstance(template, Mapping):
        problems.append(
            Problem("spec.captureTemplate", "give a Capture spec (captureConfiguration, outputConfiguration)")
        )
        template = {}
    else:
        probe = capture_body(
            TriggerSpec(meta.get("namespace", "default"), meta.get("name", "t"), matchers, template),
            "probe",
            nodes=["node"],
            ips=[],
            alert={},
            target=Target("node", node="node"),
        )
        try:
            capture_spec.parse_capture(probe)
        except SpecError as exc:
            problems += [
                Problem(p.field.replace("spec.", "spec.captureTemplate.", 1), p.message)
                for p in exc.problems
                if p.field != "metadata.name"
            ]
    if problems:
        raise SpecError(problems)
    return TriggerSpec(
        namespace=meta.get("namespace", "default"),
        name=meta.get("name", ""),
        matchers=matchers,
        template=template,
        target_labels=targets,
        cooldown=cooldown,
        max_concurrent=max_concurrent,
        expiry=expiry,
    )


def capture_name(alertname: str, target: Target, now: float) -> str:
    """``<alert>-<target hash>-<time>``: a DNS label of at most 40 characters (the Capture limit)."""
    slug = re.sub(r"[^a-z0-9]+", "-", alertname.lower()).strip("-")[:18].strip("-") or "alert"
    stamp = format(int(now), "x")[-8:]
    return f"{slug}-{target.key_hash[:8]}-{stamp}"


def capture_body(
    trigger: TriggerSpec,
    name: str,
    *,
    nodes: Sequence[str],
    ips: Sequence[str],
    alert: Mapping[str, Any],
    target: Target,
    expires_at: str | None = None,
) -> dict[str, Any]:
    """The Capture a trigger creates: its template, with the nodes and pod IPs of the target."""
    template = dict(trigger.template)
    config = dict(template.get("captureConfiguration") or {})
    config["captureTarget"] = {"nodeNames": sorted(nodes)}
    if ips:
        filters = dict(config.get("filters") or {})
        filters["include"] = list(dict.fromkeys([*(filters.get("include") or []), *ips]))
        config["filters"] = filters
    template["captureConfiguration"] = config
    labels = alert.get("labels") or {}
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": trigger.namespace,
        "labels": {LABEL_TRIGGER: trigger.name, LABEL_TARGET: target.key_hash},
        "annotations": {ANNOTATION_ALERT: str(labels.get("alertname", "")), ANNOTATION_TARGET: target.key},
    }
    if alert.get("fingerprint"):
        metadata["labels"][LABEL_FINGERPRINT] = re.sub(r"[^A-Za-z0-9]", "", str(alert["fingerprint"]))[:63]
    if expires_at:
        metadata["annotations"][ANNOTATION_EXPIRES] = expires_at
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": "Capture",
        "metadata": metadata,
        "spec": template,
    }
