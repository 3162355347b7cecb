"""The capture operator: kopf handlers for ``retina.sh/v1alpha1`` Captures.

* create: the Capture is read and checked by ``spec.parse_capture`` and turned into Jobs by
  ``jobs.build_jobs`` — the very code ``kubectl retina capture create`` runs — and the Jobs are
  created with an owner reference to the Capture. A Capture that cannot run gets the condition
  ``Accepted=False`` whose message names the field (``spec.outputConfiguration.hostPath: ...``);
  one the API server refuses (400/403/422) gets ``Accepted=False``, reason ``Rejected``, instead of
  being retried for ever.
* Job events keep the Capture's ``status`` (conditions, active, succeeded, failed, startTime,
  completionTime) in step with its Jobs, read from a kopf index of the capture Jobs
  (``capture_jobs``: kopf's own watch keeps it, so no event re-lists the Jobs).
* The API client, the worker image and the Job limit are made once at startup and reach every
  handler through kopf's ``memo``.
* delete: Jobs and the capture's Secrets (labelled ``capture-name=<name>``) are deleted
  explicitly; owner references let the garbage collector catch anything left.

Run it with ``python -m retina_capture.operator`` (``kopf run -A``). Settings (env):
``RETINA_OPERATOR_CAPTURE_IMAGE`` (worker image) and ``RETINA_OPERATOR_CAPTURE_JOB_NUM_LIMIT``
(Retina's ``captureJobNumLimit``, 0 = none).
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

import kopf
import kubernetes
from kubernetes.client.rest import ApiException

from retina_capture import jobs as jobs_mod
from retina_capture import kube, spec

GROUP, VERSION, PLURAL = spec.API_GROUP, spec.API_VERSION, spec.PLURAL
FINALIZER = "retina.sh/capture-cleanup"
ENV_IMAGE = "RETINA_OPERATOR_CAPTURE_IMAGE"
ENV_JOB_LIMIT = "RETINA_OPERATOR_CAPTURE_JOB_NUM_LIMIT"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(type_: str, ok: bool, reason: str, message: str) -> dict[str, Any]:
    return {
        "type": type_,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message,
        "lastTransitionTime": _now(),
    }


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
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    """Settings, and what every handler shares through ``memo``: the API client, image, Job limit."""
    settings.persistence.finalizer = FINALIZER
    settings.posting.level = logging.WARNING  # warnings and errors become Kubernetes events
    settings.watching.server_timeout = 300
    limit = os.environ.get(ENV_JOB_LIMIT, "0").strip() or "0"
    if not limit.isdigit():
        raise kopf.PermanentError(f"{ENV_JOB_LIMIT}={limit!r}: give a whole number of Jobs (0 = no limit)")
    memo.job_limit = int(limit)
    memo.image = os.environ.get(ENV_IMAGE) or jobs_mod.DEFAULT_IMAGE
    memo.api = kube.api_client()  # the same kubeconfig / in-cluster rules as kubectl-retina
    logger.info(f"capture operator: worker image {memo.image}, job limit {memo.job_limit or 'none'}")


@kopf.on.cleanup()
def close_client(memo: kopf.Memo, **_: Any) -> None:
    api = getattr(memo, "api", None)
    if api is not None:
        api.close()


@kopf.on.login()
def login(**_: Any) -> kopf.ConnectionInfo:
    """The project's one kubeconfig order (retina_preflight.core.kubeconfig), read at each login:
    $KUBECONFIG, else the pod's service account (its token re-read: it rotates), else ~/.kube/config."""
    return kopf.ConnectionInfo(**kube.connection_settings())


@kopf.index("batch", "v1", "jobs", labels={jobs_mod.LABEL_APP: jobs_mod.LABEL_APP_VALUE})
def capture_jobs(
    namespace: str,
    name: str,
    labels: kopf.Labels,
    status: kopf.Status,
    **_: Any,
) -> dict[tuple[str, str], dict[str, Any]]:
    """Capture Jobs by (namespace, capture name): each Job's name and status, kept by kopf's watch."""
    capture = labels.get(jobs_mod.LABEL_CAPTURE)
    if not capture:
        return {}
    return {(namespace, capture): {"metadata": {"name": name}, "status": dict(status)}}


@kopf.on.create(GROUP, VERSION, PLURAL)
def create_capture(
    body: kopf.Body, name: str, namespace: str, memo: kopf.Memo, logger: Any, **_: Any
) -> None:
    """Turn a new Capture into one Job per selected node."""
    try:
        capture = spec.parse_capture(dict(body))
        targets = kube.resolve_targets(memo.api, capture)
        kube.check_job_limit(len(targets), memo.job_limit)
        manifests = jobs_mod.build_jobs(capture, targets, image=memo.image)
        for job in manifests:
            kopf.append_owner_reference(job, owner=body)
        created = kube.create_objects(memo.api, namespace, name, manifests, exist_ok=True)
    except spec.SpecError as exc:
        refused(memo.api, namespace, name, "InvalidSpec", str(exc), logger)
        return
    except kube.JobLimitExceeded as exc:
        refused(memo.api, namespace, name, "ExceedJobNumLimit", str(exc), logger)
        return
    except ApiException as exc:
        if exc.status not in (400, 403, 422):
            raise  # the API server or the network: kopf retries
        # The API refused a request this Capture made (it will refuse it again): say so, stop.
        refused(
            memo.api,
            namespace,
            name,
            "Rejected",
            f"the API server refused it ({exc.status} {exc.reason}): {_api_message(exc)}",
            logger,
        )
        return
    nodes = ", ".join(sorted(targets))
    logger.info(f"capture {namespace}/{name}: {len(created)} job(s) on {nodes}")
    accepted = _condition("Accepted", True, "JobsCreated", f"{len(created)} job(s) on node(s) {nodes}")
    update_status(
        memo.api,
        namespace,
        name,
        lambda old: {"conditions": _merge_conditions(old.get("conditions") or [], [accepted])},
    )


def _api_message(exc: ApiException) -> str:
    import json

    try:
        return str(json.loads(exc.body).get("message") or exc.body)
    except (TypeError, ValueError, AttributeError):
        return str(exc.body or exc.reason)


def refused(
    api: kubernetes.client.ApiClient, namespace: str, name: str, reason: str, message: str, logger: Any
) -> None:
    """Record why a Capture cannot run: ``Accepted=False`` with the field in the message."""
    logger.warning(f"capture {namespace}/{name} refused: {message}")
    condition = _condition("Accepted", False, reason, message)
    update_status(
        api,
        namespace,
        name,
        lambda old: {"conditions": _merge_conditions(old.get("conditions") or [], [condition])},
    )


def update_status(
    api: kubernetes.client.ApiClient,
    namespace: str,
    name: str,
    change: Callable[[dict[str, Any]], dict[str, Any]],
    attempts: int = 10,
) -> dict[str, Any] | None:
    """Read the Capture, compute a status change from its current status, and patch it.

    The patch carries the resourceVersion it was computed from, so two writers (the create
    handler and Job events run concurrently) never overwrite each other's conditions: on a
    conflict it reads again and recomputes. Returns the new status (None: no such Capture).
    """
    custom = kubernetes.client.CustomObjectsApi(api)
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
def job_changed(
    namespace: str, labels: kopf.Labels, capture_jobs: kopf.Index, memo: kopf.Memo, **_: Any
) -> None:
    """A capture Job changed: recompute its Capture's status from the index (no re-list)."""
    capture = labels.get(jobs_mod.LABEL_CAPTURE)
    if capture:
        refresh_status(memo.api, namespace, capture, lambda: capture_jobs.get((namespace, capture), []))


def refresh_status(
    api: kubernetes.client.ApiClient,
    namespace: str,
    name: str,
    jobs: Callable[[], Iterable[dict[str, Any]]],
) -> dict[str, Any] | None:
    """Set the Capture's status from its Jobs; returns the new status (None: nothing to do).

    ``jobs`` is read when the status is written, not before: Job events are handled
    concurrently, and a summary taken earlier could overwrite a newer one. Every write reads
    the index again (also after a 409), so the last write reflects every Job event before it.
    """

    def change(old: dict[str, Any]) -> dict[str, Any]:
        summary = jobs_mod.summarize_jobs(list(jobs()))
        if summary["total"] == 0:
            return {}
        phase = summary["phase"]
        conditions = [
            _condition(
                "Running",
                phase == "Running",
                "JobsRunning" if phase == "Running" else "JobsFinished",
                f"{summary['active']} of {summary['total']} job(s) running",
            ),
            _condition(
                "Complete",
                phase == "Succeeded",
                phase,
                f"{summary['succeeded']} of {summary['total']} job(s) succeeded",
            ),
            _condition(
                "Failed", phase == "Failed", phase, f"{summary['failed']} of {summary['total']} job(s) failed"
            ),
        ]
        status = {
            "active": summary["active"],
            "succeeded": summary["succeeded"],
            "failed": summary["failed"],
            "conditions": _merge_conditions(list(old.get("conditions") or []), conditions),
        }
        if summary["startTime"]:
            status["startTime"] = summary["startTime"]
        if summary["completionTime"]:
            status["completionTime"] = old.get("completionTime") or summary["completionTime"]
        return status

    return update_status(api, namespace, name, change)


@kopf.on.delete(GROUP, VERSION, PLURAL)
def delete_capture(name: str, namespace: str, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    """Delete the capture's Jobs (and their pods) and its labelled Secrets."""
    jobs, secrets = kube.delete_capture(memo.api, namespace, name)
    logger.info(f"capture {namespace}/{name} deleted: {jobs} job(s), {secrets} secret(s)")
