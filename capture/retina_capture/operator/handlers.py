"""The capture operator: kopf handlers for ``retina.sh/v1alpha1`` Captures.

* create: the Capture is read and checked by ``spec.parse_capture`` and turned into Jobs by
  ``jobs.build_jobs`` — the very code ``kubectl retina capture create`` runs — and the Jobs are
  created with an owner reference to the Capture. A Capture that cannot run gets the condition
  ``Accepted=False`` whose message names the field (``spec.outputConfiguration.hostPath: ...``).
* Job events keep the Capture's ``status`` (conditions, active, succeeded, failed, startTime,
  completionTime) in step with its Jobs.
* delete: Jobs and the capture's Secrets (labelled ``capture-name=<name>``) are deleted
  explicitly; owner references let the garbage collector catch anything left.

Run it with ``python -m retina_capture.operator`` (``kopf run -A``). Settings (env):
``RETINA_OPERATOR_CAPTURE_IMAGE`` (worker image) and ``RETINA_OPERATOR_CAPTURE_JOB_NUM_LIMIT``
(Retina's ``captureJobNumLimit``, 0 = none).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from typing import Any

import kopf
import kubernetes
from kubernetes.client.rest import ApiException

from retina_capture import jobs as jobs_mod
from retina_capture import kube, spec

GROUP, VERSION, PLURAL = spec.API_GROUP, spec.API_VERSION, spec.PLURAL
FINALIZER = "retina.sh/capture-cleanup"

_client: kubernetes.client.ApiClient | None = None


def client() -> kubernetes.client.ApiClient:
    global _client
    if _client is None:
        _client = kube.api_client()
    return _client


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(type_: str, ok: bool, reason: str, message: str) -> dict[str, Any]:
    return {"type": type_, "status": "True" if ok else "False", "reason": reason, "message": message,
            "lastTransitionTime": _now()}


def _merge_conditions(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Replace conditions by type; keep lastTransitionTime when the status did not change."""
    by_type = {c["type"]: c for c in old}
    for cond in new:
        previous = by_type.get(cond["type"])
        if previous and previous.get("status") == cond["status"]:
            since = previous.get("lastTransitionTime", cond["lastTransitionTime"])
            cond = {**cond, "lastTransitionTime": since}
        by_type[cond["type"]] = cond
    return [by_type[t] for t in sorted(by_type)]


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    global _client
    _client = None  # a new run may talk to another API server
    settings.persistence.finalizer = FINALIZER
    settings.posting.level = 30  # warnings and errors become Kubernetes events
    settings.watching.server_timeout = 300


@kopf.on.login()
def login(**_: Any) -> kopf.ConnectionInfo:
    """The project's one kubeconfig order (retina_preflight.core.kubeconfig), read at each login:
    $KUBECONFIG, else the pod's service account (its token re-read: it rotates), else ~/.kube/config."""
    return kopf.ConnectionInfo(**kube.connection_settings())


@kopf.on.create(GROUP, VERSION, PLURAL)
def create_capture(body: kopf.Body, name: str, namespace: str, logger: Any, **_: Any) -> None:
    """Turn a new Capture into one Job per selected node."""
    try:
        capture = spec.parse_capture(dict(body))
        targets = kube.resolve_targets(client(), capture)
        kube.check_job_limit(len(targets), int(os.environ.get("RETINA_OPERATOR_CAPTURE_JOB_NUM_LIMIT", "0")))
    except (spec.SpecError, kube.JobLimitExceeded) as exc:
        reason = "InvalidSpec" if isinstance(exc, spec.SpecError) else "ExceedJobNumLimit"
        refused(namespace, name, reason, str(exc), logger)
        return
    image = os.environ.get("RETINA_OPERATOR_CAPTURE_IMAGE", jobs_mod.DEFAULT_IMAGE)
    manifests = jobs_mod.build_jobs(capture, targets, image=image)
    for job in manifests:
        kopf.append_owner_reference(job, owner=body)
    created = kube.create_objects(client(), namespace, name, manifests, exist_ok=True)
    nodes = ", ".join(sorted(targets))
    logger.info(f"capture {namespace}/{name}: {len(created)} job(s) on {nodes}")
    accepted = _condition("Accepted", True, "JobsCreated", f"{len(created)} job(s) on node(s) {nodes}")
    update_status(namespace, name, lambda old: {
        "conditions": _merge_conditions(old.get("conditions") or [], [accepted])})
    refresh_status(namespace, name)


def refused(namespace: str, name: str, reason: str, message: str, logger: Any) -> None:
    """Record why a Capture cannot run: ``Accepted=False`` with the field in the message."""
    logger.warning(f"capture {namespace}/{name} refused: {message}")
    condition = _condition("Accepted", False, reason, message)
    update_status(namespace, name, lambda old: {
        "conditions": _merge_conditions(old.get("conditions") or [], [condition])})


def update_status(namespace: str, name: str, change: Callable[[dict[str, Any]], dict[str, Any]],
                  attempts: int = 10) -> dict[str, Any] | None:
    """Read the Capture, compute a status change from its current status, and patch it.

    The patch carries the resourceVersion it was computed from, so two writers (the create
    handler and Job events run concurrently) never overwrite each other's conditions: on a
    conflict it reads again and recomputes. Returns the new status (None: no such Capture).
    """
    custom = kubernetes.client.CustomObjectsApi(client())
    for _ in range(attempts):
        try:
            current = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return None  # a CLI capture, or the Capture is gone
            raise
        if current.get("metadata", {}).get("deletionTimestamp"):
            return None
        status = change(current.get("status") or {})
        if not status:
            return None
        body = {"metadata": {"resourceVersion": current["metadata"]["resourceVersion"]}, "status": status}
        try:
            custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name, body)
            return status
        except ApiException as exc:
            if exc.status != 409:
                raise
    raise kopf.TemporaryError(f"status of capture {namespace}/{name} kept changing; will retry", delay=1)


@kopf.on.event("batch", "v1", "jobs", labels={jobs_mod.LABEL_APP: jobs_mod.LABEL_APP_VALUE})
def job_changed(body: kopf.Body, namespace: str, **_: Any) -> None:
    """A capture Job changed: recompute its Capture's status."""
    capture = (body.get("metadata", {}).get("labels") or {}).get(jobs_mod.LABEL_CAPTURE)
    if capture:
        refresh_status(namespace, capture)


def refresh_status(namespace: str, name: str) -> dict[str, Any] | None:
    """Set the Capture's status from its Jobs; returns the new status (None: nothing to do)."""
    summary = jobs_mod.summarize_jobs(kube.list_jobs(client(), namespace, name))
    if summary["total"] == 0:
        return None
    phase = summary["phase"]
    conditions = [
        _condition("Running", phase == "Running", "JobsRunning" if phase == "Running" else "JobsFinished",
                   f"{summary['active']} of {summary['total']} job(s) running"),
        _condition("Complete", phase == "Succeeded", phase,
                   f"{summary['succeeded']} of {summary['total']} job(s) succeeded"),
        _condition("Failed", phase == "Failed", phase,
                   f"{summary['failed']} of {summary['total']} job(s) failed"),
    ]

    def change(old: dict[str, Any]) -> dict[str, Any]:
        status = {"active": summary["active"], "succeeded": summary["succeeded"], "failed": summary["failed"],
                  "conditions": _merge_conditions(list(old.get("conditions") or []), conditions)}
        if summary["startTime"]:
            status["startTime"] = summary["startTime"]
        if summary["completionTime"]:
            status["completionTime"] = old.get("completionTime") or summary["completionTime"]
        return status

    return update_status(namespace, name, change)


@kopf.on.delete(GROUP, VERSION, PLURAL)
def delete_capture(name: str, namespace: str, logger: Any, **_: Any) -> None:
    """Delete the capture's Jobs (and their pods) and its labelled Secrets."""
    jobs, secrets = kube.delete_capture(client(), namespace, name)
    logger.info(f"capture {namespace}/{name} deleted: {jobs} job(s), {secrets} secret(s)")
