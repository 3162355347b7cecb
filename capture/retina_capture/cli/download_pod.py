"""Download a capture kept on the nodes (``--host-path``) or in a claim (``--pvc``), as Retina does:
a short-lived pod where the files are, the files streamed back through the API, the pod removed.

For each node that ran a capture Job (host path), or once for the claim (PVC), :func:`fetch`:

1. creates a pod from the capture's own image (the agent image, already on every node that
   captured) that mounts the capture directory **read-only** and sleeps -- pinned to the node by
   the same ``nodeAffinity`` and tolerations as the Job; no service-account token, no
   capabilities, no privilege escalation, a read-only root, ``RuntimeDefault`` seccomp, not root
   (the worker writes its tarballs world-readable, 0644 in a 0755 directory);
2. once it runs, lists the directory (``pods/exec``: ``ls``) and streams each tarball of this
   capture and node (``pods/exec``: ``cat``) over the exec websocket (``kubernetes.stream``,
   binary channel frames) into ``<name>.part``, renamed when the exec ended with status 0;
3. deletes the pod -- also when something failed or the user pressed Ctrl-C. A CLI killed
   outright leaves a pod that exits by itself after ``POD_LIFETIME_SECONDS``.

The API verbs this takes (``rbac-capture.yaml.j2``): pods create/get/delete; pods/exec get (the
websocket is a GET) and create (Kubernetes 1.30+ checks it for websocket exec too).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes
from kubernetes.client.rest import ApiException
from kubernetes.stream import stream, ws_client

from retina_capture import jobs as jobs_mod

LABEL_APP_VALUE = "capture-download"
CONTAINER = "download"
MOUNT_PATH = "/captures"
#: The pod sleeps this long at most: a CLI killed with SIGKILL cannot delete it, so it ends itself.
POD_LIFETIME_SECONDS = 1800
#: How long a pod may take to start (image present: seconds; a pull on a slow link: longer).
START_TIMEOUT_SECONDS = 180.0
#: A transfer that sends nothing for this long is abandoned.
IDLE_TIMEOUT_SECONDS = 60.0
NOBODY = 65534
RESOURCES = {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"cpu": "500m", "memory": "64Mi"}}


class PodDownloadError(RuntimeError):
    pass


@dataclass(frozen=True)
class Source:
    """Where a capture's tarballs are: a directory on ``node``, or a claim (``node`` None)."""

    node: str | None
    volume: dict[str, Any]
    image: str
    affinity: dict[str, Any] | None = None
    tolerations: tuple[dict[str, Any], ...] = ()

    @property
    def where(self) -> str:
        if self.node is not None:
            return f"node {self.node} ({self.volume['hostPath']['path']})"
        return f"PersistentVolumeClaim {self.volume['persistentVolumeClaim']['claimName']}"


def sources(jobs: list[dict[str, Any]], outputs: dict[str, Any]) -> list[Source]:
    """One source per node for a host-path capture; one for a PVC capture (the claim holds all)."""
    found: list[Source] = []
    if "persistentVolumeClaim" in outputs and jobs:
        pod_spec = jobs[0]["spec"]["template"]["spec"]
        found.append(
            Source(
                None,
                {"persistentVolumeClaim": {"claimName": outputs["persistentVolumeClaim"], "readOnly": True}},
                pod_spec["containers"][0]["image"],
            )
        )
    if "hostPath" in outputs:
        relative = str(outputs["hostPath"])
        if relative.startswith("/") or ".." in PurePosixPath(relative).parts:  # spec refuses it too
            raise PodDownloadError(f"host path {relative!r} must be relative and without '..'")
        directory = str(PurePosixPath(jobs_mod.HOST_PATH_BASE) / relative)
        for job in sorted(jobs, key=lambda j: j["metadata"]["name"]):
            node = (job["metadata"].get("annotations") or {}).get(jobs_mod.ANNOTATION_NODE)
            if not node:
                continue
            pod_spec = job["spec"]["template"]["spec"]
            found.append(
                Source(
                    node,
                    {"hostPath": {"path": directory, "type": "Directory"}},
                    pod_spec["containers"][0]["image"],
                    pod_spec.get("affinity"),
                    tuple(pod_spec.get("tolerations") or ()),
                )
            )
    return found


def pod_name(capture: str, source: Source) -> str:
    tag = hashlib.sha256((source.node or "pvc").encode()).hexdigest()[:8]
    return f"{capture}-download-{tag}-{secrets.token_hex(2)}"


def build_pod(capture: str, namespace: str, source: Source) -> dict[str, Any]:
    """The download pod: least privilege, the capture directory read-only, bounded lifetime."""
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 0,  # sleep holds nothing; deletion need not wait
        "activeDeadlineSeconds": POD_LIFETIME_SECONDS + 60,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": NOBODY,
            "runAsGroup": NOBODY,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": CONTAINER,
                "image": source.image,
                "imagePullPolicy": "IfNotPresent",
                "command": ["sleep", str(POD_LIFETIME_SECONDS)],
                "securityContext": {
                    "privileged": False,
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]},
                },
                "resources": RESOURCES,
                "volumeMounts": [{"name": "captures", "mountPath": MOUNT_PATH, "readOnly": True}],
            }
        ],
        "volumes": [{"name": "captures", **source.volume}],
    }
    if source.affinity:
        spec["affinity"] = source.affinity
    if source.tolerations:
        spec["tolerations"] = list(source.tolerations)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(capture, source),
            "namespace": namespace,
            "labels": {jobs_mod.LABEL_APP: LABEL_APP_VALUE, jobs_mod.LABEL_CAPTURE: capture},
        },
        "spec": spec,
    }


def tarball_pattern(capture: str, node: str | None) -> re.Pattern[str]:
    """This capture's tarballs from ``node`` (any node for a claim): one file name, never a path."""
    who = re.escape(node) if node is not None else r"[^/\\\0\n]+"
    return re.compile(rf"{re.escape(capture)}-{who}-\d{{14}}UTC\.tar\.gz")


@dataclass
class PodResult:
    files: list[Path]
    problems: dict[str, str]  # where -> what went wrong


def fetch(
    client: kubernetes.client.ApiClient,
    namespace: str,
    capture: str,
    found: list[Source],
    out_dir: Path,
    *,
    start_timeout: float = START_TIMEOUT_SECONDS,
    say: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
) -> PodResult:
    """Start a pod per source, stream the tarballs into ``out_dir``, delete the pods whatever happens."""
    core = kubernetes.client.CoreV1Api(client)
    result = PodResult([], {})
    pods: dict[str, Source] = {}
    try:
        for source in found:
            body = build_pod(capture, namespace, source)
            core.create_namespaced_pod(namespace, body)
            pods[body["metadata"]["name"]] = source
        say(f"capture {capture}: started {len(pods)} download pod(s) in namespace {namespace}")
        for name, source in pods.items():
            why = _wait_running(core, namespace, name, start_timeout)
            if why:
                result.problems[source.where] = why
                continue
            try:
                result.files += _copy_out(client, namespace, name, capture, source, out_dir)
            except PodDownloadError as exc:
                result.problems[source.where] = str(exc)
    finally:
        for name in pods:
            try:
                core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
            except ApiException as exc:
                if exc.status != 404:
                    say(
                        f"warning: could not delete download pod {namespace}/{name}: "
                        f"{exc.status} {exc.reason}"
                    )
    result.files.sort()
    return result


def _wait_running(core: kubernetes.client.CoreV1Api, namespace: str, name: str, timeout: float) -> str:
    """'' once the pod runs; else why it does not (its phase, the container's waiting reason)."""
    deadline = time.monotonic() + timeout
    why = "not scheduled yet"
    while time.monotonic() < deadline:
        pod = core.read_namespaced_pod(name, namespace)
        status = pod.status
        phase = status.phase if status else None
        waiting = [
            f"{c.state.waiting.reason}: {c.state.waiting.message or ''}".rstrip(": ")
            for c in (status.container_statuses or [] if status else [])
            if c.state and c.state.waiting and c.state.waiting.reason
        ]
        if phase == "Running":
            return ""
        if phase in ("Failed", "Succeeded"):
            return f"the download pod ended ({phase}): {(status.message or status.reason or '').strip()}"
        conditions = [c.message for c in (status.conditions or [] if status else []) if c.message]
        why = "; ".join(waiting or conditions) or f"pod {phase or 'Pending'}"
        time.sleep(0.5)
    return f"the download pod did not start within {int(timeout)}s ({why})"


def _exec(client: kubernetes.client.ApiClient, namespace: str, pod: str, command: list[str]) -> Any:
    try:
        ws = stream(
            kubernetes.client.CoreV1Api(client).connect_get_namespaced_pod_exec,
            pod,
            namespace,
            container=CONTAINER,
            command=command,
            stdin=False,
            stdout=True,
            stderr=True,
            tty=False,
            binary=True,
            _preload_content=False,
        )
    except ApiException as exc:  # the websocket handshake failed: 403 without pods/exec, ...
        raise PodDownloadError(f"exec into the download pod failed: {_handshake_reason(exc)}") from None
    # The client also copies every frame into one buffer for read_all(), which we never call: a
    # 100 MB tarball would sit in memory twice. Its own "capture nothing" sink stops that
    # (``stream`` does not pass ``capture_all`` on to the client in every version).
    if hasattr(ws, "_all") and hasattr(ws_client, "_IgnoredIO"):
        ws._all = ws_client._IgnoredIO()
    return ws


def _handshake_reason(exc: ApiException) -> str:
    """The API server's Status message out of the client's 'Handshake status 403 ... -+-+- {json}'."""
    text = str(exc.reason or exc.status)
    try:
        return str(json.loads(text.rsplit("-+-+-", 1)[-1])["message"])
    except (ValueError, KeyError, TypeError):
        return text


def _run(
    client: kubernetes.client.ApiClient, namespace: str, pod: str, command: list[str], sink: Any
) -> tuple[int, str]:
    """Run ``command`` in the pod, stdout into ``sink.write``; returns (exit code, stderr)."""
    ws = _exec(client, namespace, pod, command)
    err = b""
    last = time.monotonic()
    try:
        while ws.is_open():
            ws.update(timeout=1)
            got = False
            for channel in (1, 2):
                data = ws.read_channel(channel)
                if data:
                    got = True
                    if channel == 1:
                        sink.write(data)
                    else:
                        err = (err + data)[-4096:]
            if got:
                last = time.monotonic()
            elif time.monotonic() - last > IDLE_TIMEOUT_SECONDS:
                raise PodDownloadError(f"{command[0]}: nothing received for {int(IDLE_TIMEOUT_SECONDS)}s")
        tail = ws.read_channel(1)  # frames that came with the close
        if tail:
            sink.write(tail)
        err += ws.read_channel(2)
        code = ws.returncode
    finally:
        ws.close()
    return (code if code is not None else -1), err.decode("utf-8", "replace").strip()


class _Buffer:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, chunk: bytes) -> None:
        if len(self.data) + len(chunk) > 1_000_000:
            raise PodDownloadError("the directory listing is larger than 1 MB")
        self.data += chunk


def _copy_out(
    client: kubernetes.client.ApiClient, namespace: str, pod: str, capture: str, source: Source, out_dir: Path
) -> list[Path]:
    listing = _Buffer()
    code, err = _run(client, namespace, pod, ["ls", "-1A", "--", MOUNT_PATH], listing)
    if code != 0:
        raise PodDownloadError(f"cannot list the capture directory: {err or f'exit status {code}'}")
    pattern = tarball_pattern(capture, source.node)
    names = sorted(n for n in listing.data.decode("utf-8", "replace").split("\n") if pattern.fullmatch(n))
    if not names:
        raise PodDownloadError(f"no {capture} tarball there (did the capture finish on that node?)")
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name in names:
        target = out_dir / name
        partial = out_dir / f".{name}.part"
        try:
            with partial.open("wb") as fh:
                code, err = _run(client, namespace, pod, ["cat", "--", f"{MOUNT_PATH}/{name}"], fh)
            if code != 0:
                raise PodDownloadError(f"cannot read {name}: {err or f'exit status {code}'}")
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)
        written.append(target)
    return written
