"""From a firing alert to a Capture, or to the reason there is none.

:meth:`TriggerEngine.handle` is called once per (trigger, alert) by the webhook receiver, with
the trigger's lock held, so two notifications of one alert cannot both pass the cooldown check.
Every decision except "the alert does not match" is written into the trigger's status:
``status.lastAction`` (what, why, when, which alert and target, which Capture),
``status.targets`` (per target: when it was last captured, so the cooldown survives an operator
restart) and ``status.counts`` (per result).

Results: ``Created``; ``Cooldown`` (the target was captured less than ``cooldown`` ago);
``Capped`` (``maxConcurrentCaptures`` of this trigger's Captures are still running);
``NoTarget`` (the alert's labels name no pod, namespace or node); ``TargetNotFound`` (they
name one that does not exist or has no node/IP yet); ``Ignored`` (a resolved alert: it stops
nothing already running); ``Failed`` (the API refused the Capture; the message says why).
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import kubernetes
from kubernetes.client.rest import ApiException

from retina_capture.triggers.model import (
    API_GROUP,
    API_VERSION,
    LABEL_TRIGGER,
    MAX_NAMESPACE_PODS,
    PLURAL,
    Target,
    TriggerSpec,
    capture_body,
    capture_name,
)


@dataclass(frozen=True)
class Decision:
    trigger: str
    result: str
    reason: str
    alert: str = ""
    fingerprint: str = ""
    target: str = ""
    capture: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def _rfc3339(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text: str) -> float | None:
    try:
        return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC).timestamp()
    except (TypeError, ValueError):
        return None


def _finished(capture: Mapping[str, Any]) -> bool:
    if (capture.get("metadata") or {}).get("deletionTimestamp"):
        return True
    conditions = (capture.get("status") or {}).get("conditions") or []
    return any(
        c.get("type") in ("Complete", "Failed") and c.get("status") == "True" for c in conditions
    ) or any(c.get("type") == "Accepted" and c.get("status") == "False" for c in conditions)


class TriggerEngine:
    """Decides and acts for one operator; talks to the API with ``client``."""

    def __init__(self, client: kubernetes.client.ApiClient, clock: Any = time.time) -> None:
        self.client = client
        self.custom = kubernetes.client.CustomObjectsApi(client)
        self.core = kubernetes.client.CoreV1Api(client)
        self.clock = clock

    # -- the decision ----------------------------------------------------------------------
    def handle(self, trigger: TriggerSpec, alert: Mapping[str, Any]) -> Decision | None:
        """Act on one alert for one trigger; None when the alert does not match the trigger."""
        labels = {str(k): str(v) for k, v in (alert.get("labels") or {}).items()}
        if not trigger.matches(labels):
            return None
        base = {
            "trigger": f"{trigger.namespace}/{trigger.name}",
            "alert": labels.get("alertname", ""),
            "fingerprint": str(alert.get("fingerprint") or ""),
        }
        if alert.get("status") != "firing":
            return self._record(
                trigger,
                Decision(**base, result="Ignored", reason="the alert resolved; running captures go on"),
            )
        target = trigger.target(labels)
        if target is None:
            t = trigger.target_labels
            return self._record(
                trigger,
                Decision(
                    **base,
                    result="NoTarget",
                    reason=f"the alert has none of the labels {t.pod}+{t.namespace}, {t.namespace}, {t.node} "
                    "or a source/destination pod pair",
                ),
            )
        base["target"] = target.key
        now = self.clock()
        status = self._trigger_status(trigger)
        last = _parse_time(((status.get("targets") or {}).get(target.key_hash) or {}).get("lastCapture", ""))
        if last is not None and now - last < trigger.cooldown:
            return self._record(
                trigger,
                Decision(
                    **base,
                    result="Cooldown",
                    reason=f"captured {int(now - last)}s ago; cooldown is {int(trigger.cooldown)}s",
                ),
            )
        running = self._running_captures(trigger)
        if len(running) >= trigger.max_concurrent:
            return self._record(
                trigger,
                Decision(
                    **base,
                    result="Capped",
                    reason=f"{len(running)} capture(s) of this trigger still running "
                    f"(maxConcurrentCaptures {trigger.max_concurrent}): {', '.join(sorted(running))}",
                ),
            )
        try:
            nodes, ips = self._resolve(target)
        except LookupError as exc:
            return self._record(trigger, Decision(**base, result="TargetNotFound", reason=str(exc)))
        name = capture_name(labels.get("alertname", "alert"), target, now)
        body = capture_body(
            trigger,
            name,
            nodes=nodes,
            ips=ips,
            alert=alert,
            target=target,
            expires_at=_rfc3339(now + trigger.expiry),
        )
        try:
            self.custom.create_namespaced_custom_object(
                API_GROUP, API_VERSION, trigger.namespace, "captures", body
            )
        except ApiException as exc:
            return self._record(
                trigger,
                Decision(
                    **base, result="Failed", reason=f"the API refused the Capture: {exc.status} {exc.reason}"
                ),
            )
        decision = Decision(
            **base,
            result="Created",
            capture=name,
            reason=f"capturing on node(s) {', '.join(sorted(nodes))}"
            + (f" for {', '.join(ips)}" if ips else ""),
        )
        return self._record(trigger, decision, target=target, now=now)

    # -- what the API says ------------------------------------------------------------------
    def _trigger_status(self, trigger: TriggerSpec) -> dict[str, Any]:
        try:
            body = self.custom.get_namespaced_custom_object(
                API_GROUP, API_VERSION, trigger.namespace, PLURAL, trigger.name
            )
        except ApiException as exc:
            if exc.status == 404:
                return {}
            raise
        return body.get("status") or {}

    def _running_captures(self, trigger: TriggerSpec) -> list[str]:
        result = self.custom.list_namespaced_custom_object(
            API_GROUP,
            API_VERSION,
            trigger.namespace,
            "captures",
            label_selector=f"{LABEL_TRIGGER}={trigger.name}",
        )
        return [c["metadata"]["name"] for c in result.get("items") or [] if not _finished(c)]

    def _resolve(self, target: Target) -> tuple[list[str], list[str]]:
        """Nodes to capture on and the pod IPs to keep (none: the whole node)."""
        if target.kind == "node":
            try:
                self.core.read_node(target.node)
            except ApiException as exc:
                if exc.status == 404:
                    raise LookupError(f"no node {target.node!r}") from None
                raise
            return [target.node], []
        if target.kind == "namespace":
            pods = self.core.list_namespaced_pod(
                target.namespace, field_selector="status.phase=Running"
            ).items
            pods = [p for p in pods if p.spec.node_name and p.status.pod_ip]
            # A host-network pod's IP is its node's: as an include filter it would capture every
            # packet of the node. Its traffic cannot be told from the node's, so it is left out.
            own_ip = [p for p in pods if not p.spec.host_network][:MAX_NAMESPACE_PODS]
            if not own_ip:
                raise LookupError(
                    f"no running pod in namespace {target.namespace!r}"
                    + (" with an address of its own (only host-network pods)" if pods else "")
                )
            pods = own_ip
        else:
            pods = []
            for ns, name in target.pods:
                try:
                    pod = self.core.read_namespaced_pod(name, ns)
                except ApiException as exc:
                    if exc.status == 404:
                        continue  # the other pod of a pair may still be there
                    raise
                if pod.spec.node_name and pod.status.pod_ip:
                    pods.append(pod)
            if not pods:
                named = ", ".join(f"{ns}/{name}" for ns, name in target.pods)
                raise LookupError(f"pod(s) {named} not found or not running on a node yet")
        nodes = sorted({p.spec.node_name for p in pods})
        ips = list(dict.fromkeys(p.status.pod_ip for p in pods))
        return nodes, ips

    # -- the trigger's status ---------------------------------------------------------------
    def _record(
        self, trigger: TriggerSpec, decision: Decision, target: Target | None = None, now: float | None = None
    ) -> Decision:
        when = _rfc3339(self.clock() if now is None else now)
        current = self._trigger_status(trigger)
        counts = dict(current.get("counts") or {})
        counts[decision.result] = int(counts.get(decision.result, 0)) + 1
        status: dict[str, Any] = {"lastAction": {**decision.as_dict(), "time": when}, "counts": counts}
        if target is not None and decision.result == "Created":
            status["targets"] = {
                target.key_hash: {"target": target.key, "lastCapture": when, "capture": decision.capture}
            }
        try:
            self.custom.patch_namespaced_custom_object_status(
                API_GROUP, API_VERSION, trigger.namespace, PLURAL, trigger.name, {"status": status}
            )
        except ApiException as exc:
            if exc.status != 404:  # the trigger was deleted meanwhile: nothing to record on
                raise
        return decision
