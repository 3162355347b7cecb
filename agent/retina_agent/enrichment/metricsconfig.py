"""MetricsConfiguration (``retina.sh/v1alpha1``, cluster-scoped): validation and the live watch.

``validate_spec(spec)`` turns the ``spec`` of a MetricsConfiguration into a ``MetricsSpec`` or
raises ``SpecError(field, message)`` naming the field (``spec.namespaces``,
``spec.contextOptions[1].sourceLabels[0]``...) and the fix. The rules are Retina's:
``contextOptions`` is required and non-empty, each ``metricName`` is an advanced metric,
``ttl`` is a Go duration between 1s and 720h, or ``0``/empty: never expire, and ``namespaces`` has
``include`` or ``exclude``, never both, never neither. On top, the labels are checked against
what the agent can produce.

``MetricsConfigurationWatcher(api_client)`` watches every MetricsConfiguration and keeps the
spec in force:

* the one in force is the oldest valid one (by ``creationTimestamp``, then name) and stays in
  force until it is deleted; it gets ``status: {state: Accepted, lastKnownSpec: <spec>}``;
* an invalid one gets ``state: Errored`` with the reason and changes nothing: when the one in
  force is edited into an invalid spec, its previous spec stays in force;
* any other valid one gets ``state: Warning``: Retina allows only one MetricsConfiguration.

Status is written with a JSON patch of ``/status`` on the ``status`` subresource, only when it
differs from what is stored, so the agent's own writes do not loop.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import kubernetes

from retina_agent.enrichment.kubeclient import RawCollection
from retina_agent.enrichment.reflector import Obj, Reflector
from retina_common.durations import bounded_duration

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "retina.sh", "v1alpha1", "metricsconfigurations"

#: metricName values: Retina's own (``utils.IsAdvancedMetric``) and this agent's ``adv_*``
#: names without the prefix, mapped to the name used here (the ``adv_`` metric minus ``adv_``).
METRIC_NAMES: dict[str, str] = {
    "forward_count": "forward_count",
    "forward_bytes": "forward_bytes",
    "drop_count": "drop_count",
    "drop_bytes": "drop_bytes",
    "tcpflags_count": "tcpflags_count",
    "tcp_flag_gauges": "tcpflags_count",
    "tcpretrans_count": "tcpretrans_count",
    "tcp_retransmission_count": "tcpretrans_count",
    "dns_request_count": "dns_request_count",
    "dns_response_count": "dns_response_count",
    "node_apiserver_latency": "node_apiserver_latency",
    "node_apiserver_tcp_handshake_latency": "node_apiserver_tcp_handshake_latency",
    "node_apiserver_handshake_latency": "node_apiserver_tcp_handshake_latency",
    "node_apiserver_no_response": "node_apiserver_no_response",
}
CONTEXT_LABELS = ("ip", "namespace", "podname", "workload", "service", "port", "zone")
ADDITIONAL_LABELS = ("direction", "is_reply")

STATE_INITIALIZED, STATE_ACCEPTED, STATE_ERRORED, STATE_WARNING = (
    "Initialized",
    "Accepted",
    "Errored",
    "Warning",
)


class SpecError(ValueError):
    """A MetricsConfiguration spec that cannot be used; ``field`` is the path of the culprit."""

    def __init__(self, field_path: str, message: str) -> None:
        super().__init__(f"{field_path}: {message}")
        self.field = field_path
        self.message = message


@dataclass(frozen=True)
class ContextOption:
    metric_name: str  # the adv_ metric without its prefix, e.g. forward_count
    source_labels: tuple[str, ...]
    destination_labels: tuple[str, ...]
    additional_labels: tuple[str, ...]
    ttl_seconds: float  # 0 = never expire


@dataclass(frozen=True)
class MetricsSpec:
    context_options: dict[str, ContextOption]
    include_namespaces: frozenset[str] = field(default_factory=frozenset)
    exclude_namespaces: frozenset[str] = field(default_factory=frozenset)

    def namespace_selected(self, namespace: str) -> bool:
        """Include mode: listed namespaces only. Exclude mode: all but the listed ones."""
        if self.include_namespaces:
            return namespace in self.include_namespaces
        return namespace not in self.exclude_namespaces


def _string_list(value: Any, where: str, allowed: tuple[str, ...] | None = None) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise SpecError(where, f"must be a list of strings, not {type(value).__name__}")
    for n, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise SpecError(f"{where}[{n}]", "must be a non-empty string")
        if allowed is not None and item not in allowed:
            raise SpecError(f"{where}[{n}]", f"unknown label {item!r}; use one of {', '.join(allowed)}")
    if len(set(value)) != len(value):
        raise SpecError(where, "lists a value twice; list each once")
    return tuple(value)


#: ttl bounds (seconds) besides 0 = never: under a second series would vanish between scrapes;
#: past 30 days "never" says what is meant.
TTL_BOUNDS = (1.0, 720 * 3600.0)


def _ttl(value: Any, where: str) -> float:
    if value is None or value == "":
        return 0.0
    if not isinstance(value, str):  # the CRD declares a string; YAML's bare 0 is an int
        if type(value) is int and value == 0:
            return 0.0
        raise SpecError(where, f"must be a duration string like 24h or 90m, not {value!r}")
    try:
        low, high = TTL_BOUNDS
        return bounded_duration(value, minimum=low, maximum=high, zero_means="never expire")
    except ValueError as exc:
        raise SpecError(where, str(exc)) from None


def validate_spec(spec: Any) -> MetricsSpec:
    """Check a MetricsConfiguration ``spec`` (a dict from the API); raises ``SpecError``."""
    if not isinstance(spec, dict):
        raise SpecError("spec", "is missing: give contextOptions and namespaces")
    options = spec.get("contextOptions")
    if not isinstance(options, list) or not options:
        raise SpecError(
            "spec.contextOptions",
            "is required and must list at least one metric, "
            "e.g. [{metricName: forward_count, sourceLabels: [ip, podname]}]",
        )
    context: dict[str, ContextOption] = {}
    for n, option in enumerate(options):
        where = f"spec.contextOptions[{n}]"
        if not isinstance(option, dict):
            raise SpecError(where, "must be an object with metricName")
        name = option.get("metricName")
        if not isinstance(name, str) or name not in METRIC_NAMES:
            raise SpecError(
                f"{where}.metricName",
                f"{name!r} is not an advanced metric; use one of {', '.join(sorted(METRIC_NAMES))}",
            )
        canonical = METRIC_NAMES[name]
        if canonical in context:
            raise SpecError(f"{where}.metricName", f"{name!r} is configured twice; keep one entry")
        context[canonical] = ContextOption(
            metric_name=canonical,
            source_labels=_string_list(option.get("sourceLabels"), f"{where}.sourceLabels", CONTEXT_LABELS),
            destination_labels=_string_list(
                option.get("destinationLabels"), f"{where}.destinationLabels", CONTEXT_LABELS
            ),
            additional_labels=_string_list(
                option.get("additionalLabels"), f"{where}.additionalLabels", ADDITIONAL_LABELS
            ),
            ttl_seconds=_ttl(option.get("ttl"), f"{where}.ttl"),
        )
    namespaces = spec.get("namespaces")
    if not isinstance(namespaces, dict):
        raise SpecError("spec.namespaces", "is required: give include: [...] or exclude: [...]")
    has_include, has_exclude = namespaces.get("include") is not None, namespaces.get("exclude") is not None
    if has_include == has_exclude:
        what = "both include and exclude" if has_include else "neither include nor exclude"
        raise SpecError("spec.namespaces", f"has {what}; give exactly one of them")
    include = _string_list(namespaces.get("include"), "spec.namespaces.include")
    exclude = _string_list(namespaces.get("exclude"), "spec.namespaces.exclude")
    if has_include and not include:
        raise SpecError(
            "spec.namespaces.include",
            "is empty and would select nothing; list namespaces, "
            "or use exclude: [] to select every namespace",
        )
    return MetricsSpec(context, frozenset(include), frozenset(exclude))


def _age(obj: Obj) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return meta.get("creationTimestamp") or "", meta.get("name") or ""


class MetricsConfigurationWatcher:
    """Watch MetricsConfigurations, keep the one in force, write their status (module doc)."""

    def __init__(self, api_client: kubernetes.client.ApiClient, *, write_status: bool = True) -> None:
        self._api = RawCollection(api_client, f"/apis/{GROUP}/{VERSION}/{PLURAL}")
        self._write_status = write_status
        self._lock = threading.RLock()
        self._objects: dict[str, Obj] = {}
        self._in_force: str | None = None  # name of the configuration in force
        self._current: MetricsSpec | None = None
        self._subscribers: list[Callable[[MetricsSpec | None], None]] = []
        self._reflector = Reflector("metricsconfigurations", self._api, self)

    # -- public interface -----------------------------------------------------------------------
    def start(self) -> None:
        self._reflector.start()

    def stop(self) -> None:
        self._reflector.stop()

    def wait_synced(self, timeout: float) -> bool:
        """Until the spec in force is known: the list has been read, or the API server said it
        serves no MetricsConfigurations (CRD not installed: the defaults are in force)."""
        return self._reflector.answered.wait(timeout)

    def current(self) -> MetricsSpec | None:
        """The spec in force; None until a MetricsConfiguration has been accepted."""
        return self._current

    @property
    def in_force(self) -> str | None:
        """The name of the MetricsConfiguration in force."""
        return self._in_force

    @property
    def connected(self) -> bool:
        return self._reflector.connected

    def subscribe(self, callback: Callable[[MetricsSpec | None], None]) -> None:
        """Call ``callback(spec)`` (from the watch thread) whenever the spec in force changes."""
        self._subscribers.append(callback)

    # -- Reflector handler ----------------------------------------------------------------------
    def replace(self, objects: Iterator[Obj]) -> None:
        fresh = {(o.get("metadata") or {}).get("name", ""): o for o in objects}
        with self._lock:
            self._objects = fresh
        self._reconcile()

    def apply(self, event_type: str, obj: Obj) -> None:
        name = (obj.get("metadata") or {}).get("name", "")
        with self._lock:
            if event_type == "DELETED":
                self._objects.pop(name, None)
            else:
                self._objects[name] = obj
        self._reconcile()

    # -- the decision ---------------------------------------------------------------------------
    def _reconcile(self) -> None:
        with self._lock:
            objects = dict(self._objects)
            valid: dict[str, MetricsSpec] = {}
            errors: dict[str, SpecError] = {}
            for name, obj in objects.items():
                try:
                    valid[name] = validate_spec(obj.get("spec"))
                except SpecError as exc:
                    errors[name] = exc
            if self._in_force not in objects:
                self._in_force, spec = None, None
                for name in sorted(objects, key=lambda n: _age(objects[n])):
                    spec = valid.get(name) or self._last_known(objects[name])
                    if spec is not None:
                        self._in_force = name
                        break
            else:  # stays in force; an invalid edit keeps the previous spec
                spec = valid.get(self._in_force, self._current)
            changed = spec != self._current
            self._current = spec
            statuses = {name: self._status(name, obj, valid, errors) for name, obj in objects.items()}
        if changed:
            log.info("MetricsConfiguration %s in force: %s", self._in_force or "(none)", spec)
            for callback in list(self._subscribers):
                try:
                    callback(spec)
                except Exception:
                    log.exception("MetricsConfiguration subscriber %r failed", callback)
        for name, status in statuses.items():
            if status is not None:
                log.info("MetricsConfiguration %s: %s %s", name, status["state"], status.get("reason", ""))
                if self._write_status:
                    self._patch_status(name, status)

    @staticmethod
    def _last_known(obj: Obj) -> MetricsSpec | None:
        """The spec a previous run accepted (when the object was edited into an invalid one)."""
        last = (obj.get("status") or {}).get("lastKnownSpec")
        try:
            return validate_spec(last) if last else None
        except SpecError:
            return None

    def _status(
        self, name: str, obj: Obj, valid: dict[str, MetricsSpec], errors: dict[str, SpecError]
    ) -> Obj | None:
        """The status ``name`` should have, or None if it already has it."""
        old = obj.get("status") or {}
        last_known = old.get("lastKnownSpec")
        if name in errors:
            reason = str(errors[name])
            if name == self._in_force:
                reason += "; the previous spec stays in force"
            status = {"state": STATE_ERRORED, "reason": reason}
        elif name == self._in_force:
            status = {"state": STATE_ACCEPTED, "reason": ""}
            last_known = copy.deepcopy(obj.get("spec"))
        else:
            status = {
                "state": STATE_WARNING,
                "reason": f"only one MetricsConfiguration is used per cluster and "
                f"{self._in_force!r} is in force; delete this one or that one",
            }
        if last_known:
            status["lastKnownSpec"] = last_known
        return None if status == old else status

    def _patch_status(self, name: str, status: Obj) -> None:
        try:
            self._api.patch(
                name, "status", [{"op": "add", "path": "/status", "value": status}], timeout=(10, 30)
            )
        except Exception as exc:  # the next event retries; never stop the watch for this
            log.warning("could not write the status of MetricsConfiguration %s: %s", name, exc)
