"""kopf handlers for CaptureTriggers: the trigger registry, the webhook receiver, Capture expiry.

* Every CaptureTrigger is read by ``triggers.model.parse_trigger`` when it appears or changes;
  its status gets ``Accepted`` (True, or False with the field that is wrong) and the operator's
  registry (``memo.triggers``, shared by every handler) holds the parsed trigger or its error.
* The receiver (``triggers.receiver``) serves Alertmanager's webhook in the operator's own event
  loop, on ``RETINA_OPERATOR_WEBHOOK_ADDRESS`` (default ``0.0.0.0``) port
  ``RETINA_OPERATOR_WEBHOOK_PORT`` (default 9095), with the bearer token read from the file
  ``RETINA_OPERATOR_WEBHOOK_TOKEN_FILE`` (a mounted Secret). Without a token it is not started
  (logged): an unauthenticated endpoint that creates captures is never served.
* Captures carrying ``retina.sh/expires-at`` are deleted once that time has passed.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any

import kopf
import kubernetes
from kubernetes.client.rest import ApiException

from retina_capture import kube
from retina_capture.spec import SpecError
from retina_capture.triggers.decide import TriggerEngine
from retina_capture.triggers.model import ANNOTATION_EXPIRES, API_GROUP, API_VERSION, PLURAL, parse_trigger
from retina_capture.triggers.receiver import Receiver, serve

DEFAULT_PORT = 9095


def _token() -> str:
    path = os.environ.get("RETINA_OPERATOR_WEBHOOK_TOKEN_FILE", "")
    if not path:
        return ""
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise kopf.PermanentError(
            f"RETINA_OPERATOR_WEBHOOK_TOKEN_FILE={path}: cannot read it ({exc.strerror})"
        ) from None


@kopf.on.startup()
async def start_receiver(memo: kopf.Memo, logger: Any, **_: Any) -> None:
    memo.triggers = {}
    memo.trigger_client = kube.api_client()
    memo.webhook = None
    token = _token()
    if not token:
        logger.warning(
            "alert-triggered capture is off: set RETINA_OPERATOR_WEBHOOK_TOKEN_FILE to a file "
            "holding the bearer token Alertmanager sends"
        )
        return
    host = os.environ.get("RETINA_OPERATOR_WEBHOOK_ADDRESS", "0.0.0.0")
    try:
        port = int(os.environ.get("RETINA_OPERATOR_WEBHOOK_PORT", DEFAULT_PORT))
    except ValueError:
        raise kopf.PermanentError("RETINA_OPERATOR_WEBHOOK_PORT must be a port number") from None
    receiver = Receiver(TriggerEngine(memo.trigger_client), lambda: memo.triggers, token)
    memo.webhook = await serve(receiver, host, port)
    logger.info(f"Alertmanager webhook receiver on {host}:{port} (POST /v1/triggers/<namespace>/<name>)")


@kopf.on.cleanup()
async def stop_receiver(memo: kopf.Memo, **_: Any) -> None:
    if getattr(memo, "webhook", None) is not None:
        await memo.webhook.cleanup()
    if getattr(memo, "trigger_client", None) is not None:
        memo.trigger_client.close()


def _accepted(ok: bool, reason: str, message: str) -> dict[str, Any]:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "type": "Accepted",
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message,
        "lastTransitionTime": now,
    }


@kopf.on.resume(API_GROUP, API_VERSION, PLURAL)
@kopf.on.create(API_GROUP, API_VERSION, PLURAL)
@kopf.on.update(API_GROUP, API_VERSION, PLURAL, field="spec")
def read_trigger(
    body: kopf.Body, namespace: str, name: str, memo: kopf.Memo, patch: kopf.Patch, logger: Any, **_: Any
) -> None:
    """Check the trigger, put it into the registry and say in its status whether it is usable."""
    try:
        memo.triggers[(namespace, name)] = parse_trigger(dict(body))
    except SpecError as exc:
        memo.triggers[(namespace, name)] = exc
        logger.warning(f"CaptureTrigger {namespace}/{name} refused: {exc}")
        patch.status["conditions"] = [_accepted(False, "InvalidSpec", str(exc))]
        return
    patch.status["conditions"] = [_accepted(True, "Ready", "answering alerts")]


@kopf.on.event(API_GROUP, API_VERSION, PLURAL)
def forget_trigger(type: str, namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    """A deleted trigger answers no more alerts (no finalizer: deleting it needs no clean-up)."""
    if type == "DELETED":
        memo.triggers.pop((namespace, name), None)


@kopf.timer(
    API_GROUP, API_VERSION, "captures", annotations={ANNOTATION_EXPIRES: kopf.PRESENT}, interval=15, idle=0
)
def expire_capture(
    body: kopf.Body, namespace: str, name: str, memo: kopf.Memo, logger: Any, **_: Any
) -> None:
    """Delete a trigger's Capture once its expiry time has passed (its Jobs and files go with it)."""
    text = (body.get("metadata", {}).get("annotations") or {}).get(ANNOTATION_EXPIRES, "")
    try:
        expires = datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    except ValueError:
        logger.warning(
            f"capture {namespace}/{name}: {ANNOTATION_EXPIRES}={text!r} is not a time; not expiring it"
        )
        return
    if datetime.datetime.now(datetime.UTC) < expires:
        return
    try:
        kubernetes.client.CustomObjectsApi(memo.trigger_client).delete_namespaced_custom_object(
            API_GROUP, API_VERSION, namespace, "captures", name
        )
        logger.info(f"capture {namespace}/{name} expired at {text}: deleted")
    except ApiException as exc:
        if exc.status != 404:
            raise
