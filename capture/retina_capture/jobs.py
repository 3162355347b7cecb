"""Turn a checked capture (``spec.CaptureSpec``) and its nodes into Kubernetes manifests.

One Job per node, as Retina makes them: labels ``retina.sh/app=capture`` and
``capture-name=<name>``, host network, and least privilege: every capability dropped but
NET_RAW (tcpdump's packet socket), NET_ADMIN (promiscuous mode, iptables-save/nft for the
metadata) and SETUID/SETGID (tcpdump always switches user, ``-Z root`` included, and refuses to
capture when it cannot: measured with the agent image), no SYS_ADMIN, no privilege
escalation, the runtime's default seccomp profile, a read-only root, no service-account token
(the worker never calls the API), CPU and memory limits;
``backoffLimit: 0``, pinned to its node by node affinity on ``metadata.name``. The container runs
the node worker ``retina-capture``, which builds the tarball in ``NODE_KEEP_DIR`` (a hostPath:
a capture whose upload failed stays on the node, and the pod's termination message says
where); every setting reaches it as ``RETINA_CAPTURE_<FLAG>``
(``retina_capture.worker.settings.settings_to_env``), the node name through the downward API,
and secrets (blob SAS URL, S3 keys) through ``secretKeyRef`` only — never in the Job itself.

Nothing here talks to the API server: the CLI and the operator both call :func:`build_jobs`
and create what it returns, so both paths produce the same Jobs.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from retina_capture.credentials import SECRET_ENV, SECRET_KEY_BLOB, SECRET_KEY_S3_ID, SECRET_KEY_S3_SECRET
from retina_capture.images import default_image
from retina_capture.model import DEFAULT_HOST_PATH_BASE, CaptureSettings
from retina_capture.outputs.local import NODE_KEEP_DIR
from retina_capture.spec import CaptureSpec
from retina_capture.worker.settings import settings_to_env

LABEL_APP = "retina.sh/app"
LABEL_APP_VALUE = "capture"
LABEL_CAPTURE = "capture-name"
ANNOTATION_NODE = "retina.sh/capture-node"
ANNOTATION_OUTPUTS = "retina.sh/capture-outputs"
PVC_MOUNT_PATH = "/mnt/retina/pvc"
HOST_PATH_BASE = DEFAULT_HOST_PATH_BASE  # /var/lib/retina/captures, mounted at the same path
DEFAULT_IMAGE = default_image("agent")  # the agent image carries retina-capture and tcpdump
CONTAINER_NAME = "capture"
#: Extra time a Job gets beyond the capture duration (metadata, packing, uploads with retries).
DEADLINE_MARGIN_SECONDS = 900
#: tcpdump: NET_RAW (packet socket), NET_ADMIN (promiscuous mode); SETUID/SETGID for its
#: user switch (-Z root), without which it exits "Couldn't change to 'root'".
CAPABILITIES = ["NET_ADMIN", "NET_RAW", "SETGID", "SETUID"]
#: Seconds a capture pod gets after SIGTERM (a deleted Capture, an uninstall): the worker stops
#: tcpdump, then still collects the metadata, packs and writes every output (uploads retried). The
#: kubelet's default of 30 s cut that off on a loaded node (metadata alone took 12 s, then SIGKILL:
#: nothing written); the pod ends as soon as the worker does, so a longer grace costs nothing else.
STOP_GRACE_SECONDS = 180
#: What a capture pod may use: tcpdump's ring (8 MiB per interface), gzip, the upload clients.
WORKER_RESOURCES = {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}}


def capture_labels(name: str) -> dict[str, str]:
    return {LABEL_APP: LABEL_APP_VALUE, LABEL_CAPTURE: name}


def capture_selector(name: str | None = None) -> str:
    """The label selector of a capture's Jobs and Secrets (all captures if ``name`` is None)."""
    return f"{LABEL_APP}={LABEL_APP_VALUE}" + (f",{LABEL_CAPTURE}={name}" if name else "")


def job_name(capture: str, node: str) -> str:
    """``<capture>-<8 hex of the node name>``: stable, so re-running never makes a second Job."""
    return f"{capture}-{hashlib.sha256(node.encode()).hexdigest()[:8]}"


def secret_name(capture: str) -> str:
    return f"{capture}-capture-credentials"


def worker_settings(spec: CaptureSpec, node: str, pod_ips: Iterable[str]) -> CaptureSettings:
    """The worker's settings for one node.

    Built without validation: every shared value was checked by the same model when ``spec``
    was made, and the secrets this run needs are not here (they come from the Secret), so the
    worker's "needs S3 keys" check cannot pass yet; the worker checks everything again. The
    tarball is built in ``NODE_KEEP_DIR`` (a hostPath), so a failed upload leaves it on the node.
    """
    shared = spec.model_dump(include=set(CaptureSettings.model_fields))
    return CaptureSettings.model_construct(
        **{**shared, "tcpdump_filter": spec.filter_text, "pcap_filter": ""},
        node_name=node,
        pod_ips=tuple(pod_ips),
        pvc_mount_path=PVC_MOUNT_PATH if spec.pvc else None,
        output_dir_tmp=NODE_KEEP_DIR,
    )


def outputs_annotation(spec: CaptureSpec) -> str:
    """Where the tarballs go (no secrets: Secret names only), for ``download``."""
    outputs: dict[str, Any] = {}
    if spec.host_path is not None:
        outputs["hostPath"] = spec.host_path
    if spec.pvc is not None:
        outputs["persistentVolumeClaim"] = spec.pvc
    if spec.blob_secret is not None:
        outputs["blobUpload"] = spec.blob_secret
    if spec.s3 is not None:
        outputs["s3Upload"] = {
            k: v
            for k, v in {
                "bucket": spec.s3.bucket,
                "region": spec.s3.region,
                "endpoint": spec.s3.endpoint,
                "path": spec.s3.path,
                "secretName": spec.s3.secret_name,
            }.items()
            if v is not None
        }
    return json.dumps(outputs, sort_keys=True)


def _env(spec: CaptureSpec, node: str, pod_ips: Iterable[str]) -> list[dict[str, Any]]:
    plain = settings_to_env(worker_settings(spec, node, pod_ips))
    plain.pop("RETINA_CAPTURE_NODE_NAME", None)  # from the downward API below
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in sorted(plain.items())]
    env.append({"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}})
    by_key = {key: env_name for env_name, key in SECRET_ENV.items()}
    if spec.blob_secret:
        env.append(
            {
                "name": by_key[SECRET_KEY_BLOB],
                "valueFrom": {"secretKeyRef": {"name": spec.blob_secret, "key": SECRET_KEY_BLOB}},
            }
        )
    if spec.s3:
        for key in (SECRET_KEY_S3_ID, SECRET_KEY_S3_SECRET):
            env.append(
                {
                    "name": by_key[key],
                    "valueFrom": {"secretKeyRef": {"name": spec.s3.secret_name, "key": key}},
                }
            )
    return env


def build_job(
    spec: CaptureSpec, node: str, pod_ips: Iterable[str] = (), *, image: str = DEFAULT_IMAGE
) -> dict[str, Any]:
    """The Job that captures on ``node`` (restricted to ``pod_ips`` when pods were targeted)."""
    labels = capture_labels(spec.name)
    mounts: list[dict[str, Any]] = [
        {"name": "keep", "mountPath": NODE_KEEP_DIR},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "keep", "hostPath": {"path": NODE_KEEP_DIR, "type": "DirectoryOrCreate"}},
        {"name": "tmp", "emptyDir": {}},
    ]
    if spec.host_path is not None:
        mounts.append({"name": "host-path", "mountPath": HOST_PATH_BASE})
        volumes.append(
            {"name": "host-path", "hostPath": {"path": HOST_PATH_BASE, "type": "DirectoryOrCreate"}}
        )
    if spec.pvc is not None:
        mounts.append({"name": "pvc", "mountPath": PVC_MOUNT_PATH})
        volumes.append({"name": "pvc", "persistentVolumeClaim": {"claimName": spec.pvc}})
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["retina-capture"],
        "env": _env(spec, node, pod_ips),
        "securityContext": {
            "privileged": False,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsUser": 0,
            "seccompProfile": {"type": "RuntimeDefault"},
            "capabilities": {"drop": ["ALL"], "add": CAPABILITIES},
        },
        "resources": WORKER_RESOURCES,
        # The worker writes its last error (where the capture was kept) to /dev/termination-log.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": mounts,
    }
    pod_spec: dict[str, Any] = {
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}
                    ]
                }
            }
        },
        "hostNetwork": True,
        "dnsPolicy": "ClusterFirstWithHostNet",
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": STOP_GRACE_SECONDS,
        "automountServiceAccountToken": False,
        "tolerations": [{"operator": "Exists"}],  # capture on tainted nodes too, as Retina does
        "containers": [container],
    }
    pod_spec["volumes"] = volumes
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(spec.name, node),
            "namespace": spec.namespace,
            "labels": dict(labels),
            "annotations": {ANNOTATION_NODE: node, ANNOTATION_OUTPUTS: outputs_annotation(spec)},
        },
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": math.ceil(spec.duration) + DEADLINE_MARGIN_SECONDS,
            "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec},
        },
    }


def build_jobs(
    spec: CaptureSpec, targets: Mapping[str, Iterable[str]], *, image: str = DEFAULT_IMAGE
) -> list[dict[str, Any]]:
    """One Job per node of ``targets`` (node -> pod IPs, empty for the whole node), by node name."""
    return [build_job(spec, node, targets[node], image=image) for node in sorted(targets)]


def build_secret(
    capture: str,
    namespace: str,
    *,
    blob_upload_url: str | None = None,
    s3_access_key_id: str | None = None,
    s3_secret_access_key: str | None = None,
) -> dict[str, Any]:
    """The Secret holding a capture's upload credentials (keys as the Jobs reference them)."""
    data = {
        SECRET_KEY_BLOB: blob_upload_url,
        SECRET_KEY_S3_ID: s3_access_key_id,
        SECRET_KEY_S3_SECRET: s3_secret_access_key,
    }
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": secret_name(capture), "namespace": namespace, "labels": capture_labels(capture)},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items() if v is not None},
    }


def summarize_jobs(jobs: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Capture status from its Jobs: counts, start/completion time and a phase.

    ``phase`` is ``Running`` while any Job runs or waits, ``Failed`` when all ended and one
    failed, ``Succeeded`` when all succeeded.
    """
    jobs = list(jobs)
    active = succeeded = failed = 0
    starts: list[str] = []
    ends: list[str] = []
    for job in jobs:
        status = job.get("status") or {}
        conditions = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
        if "Complete" in conditions or (status.get("succeeded") or 0) > 0:
            succeeded += 1
            ends.append(
                _rfc3339(
                    status.get("completionTime") or conditions.get("Complete", {}).get("lastTransitionTime")
                )
            )
        elif "Failed" in conditions or (status.get("failed") or 0) > 0:
            failed += 1
            ends.append(_rfc3339(conditions.get("Failed", {}).get("lastTransitionTime")))
        else:
            active += 1
        if status.get("startTime"):
            starts.append(_rfc3339(status["startTime"]))
    done = bool(jobs) and active == 0
    return {
        "total": len(jobs),
        "active": active,
        "succeeded": succeeded,
        "failed": failed,
        "startTime": min(starts) if starts else None,
        "completionTime": (max(e for e in ends if e) if any(ends) else _now()) if done else None,
        "phase": "Running" if not done else "Failed" if failed else "Succeeded",
    }


def _rfc3339(value: Any) -> str:
    """A timestamp as the API writes it (``2026-01-02T03:04:05Z``), from a string or datetime."""
    if not value:
        return ""
    if isinstance(value, str):
        value = datetime.datetime.fromisoformat(value)
    return value.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
