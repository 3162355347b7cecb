"""The kubelet of the nodes this machine plays: pods bound to them become podman containers.

One *pod worker* thread per pod (as in the kubelet): it prepares the pod (pod network
namespace, volumes, environment), runs the init containers one after the other, starts the
containers, then watches them: restarts by ``restartPolicy``, probes, and the pod's status
(phase, conditions, ``podIP``, ``containerStatuses`` with exit codes and termination
messages) written back through the ``status`` subresource. A pod that disappears from the API
(or gets a ``deletionTimestamp``) is stopped with its grace period and removed.

A spec the runner cannot honour fails the pod (phase ``Failed``, reason ``UnsupportedPodSpec``,
the message naming the field) instead of running something else than declared.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import datetime
import json
import logging
import re
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from images.podman import podman, podman_argv
from retina_lab.noderunner import claims
from retina_lab.noderunner.client import ApiClient, ApiFailure
from retina_lab.noderunner.env import container_env, service_env
from retina_lab.noderunner.podnet import PodNetns, PodNetwork
from retina_lab.noderunner.podspec import UnsupportedSpec, podman_run_argv, write_env_file
from retina_lab.noderunner.probes import ProbeState, check_probe
from retina_lab.noderunner.scheduling import fits
from retina_lab.noderunner.volumes import decode_secret, materialise, with_service_account_volume

log = logging.getLogger(__name__)
Obj = dict[str, Any]
LABEL_RUNNER = "retina-noderunner"
TERMINATION_LOG = "/dev/termination-log"
POLL_SECONDS = 0.5
MAX_MESSAGE = 4096
FALLBACK_LINES, FALLBACK_BYTES = 80, 2048


def rfc3339(ts: float | None = None) -> str:
    when = datetime.datetime.fromtimestamp(ts if ts is not None else time.time(), datetime.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class ContainerRun:
    """One container of a pod and what the kubelet knows about it."""

    spec: Obj
    podman_name: str
    message_file: Path
    init: bool = False
    restarts: int = 0
    last_state: Obj = field(default_factory=dict)
    liveness: ProbeState | None = None
    readiness: ProbeState | None = None
    restart_at: float = 0.0
    finished: Obj | None = None  # state.terminated of a container that will not run again


class PodWorker(threading.Thread):
    def __init__(self, kubelet: Kubelet, pod: Obj) -> None:
        super().__init__(name=f"pod-{pod['metadata']['name']}", daemon=True)
        self.kubelet = kubelet
        self.pod = pod
        self.uid = pod["metadata"]["uid"]
        self.ns, self.name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        self.dir = kubelet.workdir / "pods" / self.uid
        self.netns: PodNetns | None = None
        self.containers: dict[str, ContainerRun] = {}
        self.stop_requested = threading.Event()
        self.status: Obj = {}
        self.host_ip = kubelet.node_ip
        # A pod with its own network namespace has no IP until the namespace exists (never the node's)
        self.pod_ip = kubelet.node_ip if pod["spec"].get("hostNetwork") else ""

    # -- API --------------------------------------------------------------------------------
    @property
    def path(self) -> str:
        return f"/api/v1/namespaces/{self.ns}/pods/{self.name}"

    def _write_status(self, status: Obj) -> None:
        if status == self.status:
            return
        with contextlib.suppress(ApiFailure):
            self.kubelet.api.patch(f"{self.path}/status", {"status": status})
            self.status = copy.deepcopy(status)

    def _base_status(self, phase: str) -> Obj:
        started = self.status.get("startTime") or rfc3339()
        status: Obj = {
            "phase": phase,
            "hostIP": self.host_ip,
            "hostIPs": [{"ip": self.host_ip}],
            "startTime": started,
            "qosClass": "Burstable",
        }
        if self.pod_ip:
            status["podIP"], status["podIPs"] = self.pod_ip, [{"ip": self.pod_ip}]
        return status

    def _fail(self, reason: str, message: str) -> None:
        log.warning("pod %s/%s failed: %s: %s", self.ns, self.name, reason, message)
        status = self._base_status("Failed")
        status.update({"reason": reason, "message": message, "conditions": self._conditions(False, False)})
        self._write_status(status)

    def _conditions(self, initialized: bool, ready: bool) -> list[Obj]:
        stamp = rfc3339()
        old = {c["type"]: c for c in self.status.get("conditions") or []}

        def cond(kind: str, ok: bool) -> Obj:
            value = "True" if ok else "False"
            previous = old.get(kind)
            when = previous["lastTransitionTime"] if previous and previous["status"] == value else stamp
            return {"type": kind, "status": value, "lastProbeTime": None, "lastTransitionTime": when}

        return [
            cond("PodReadyToStartContainers", True),
            cond("Initialized", initialized),
            cond("Ready", ready),
            cond("ContainersReady", ready),
            cond("PodScheduled", True),
        ]

    # -- life -------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            if self._prepare_and_start():
                self._watch()
        except Exception as exc:  # a kubelet bug must still show on the pod
            log.exception("pod worker %s/%s", self.ns, self.name)
            self._fail("NodeRunnerError", f"{type(exc).__name__}: {exc}")
            self.stop_requested.wait()
        finally:
            self._teardown()

    def _prepare_and_start(self) -> bool:
        kubelet = self.kubelet
        pod = self.pod
        spec = pod["spec"]
        sa = kubelet.lookup_object("ServiceAccount", self.ns, spec.get("serviceAccountName", "default"))
        pod = with_service_account_volume(copy.deepcopy(pod), sa)
        self._write_status(self._base_status("Pending") | {"conditions": self._conditions(False, False)})
        try:
            self._check(pod)
            if not spec.get("hostNetwork"):
                self.netns = kubelet.podnet.add(self.uid)
                self.pod_ip = self.netns.ip
            self.dir.mkdir(parents=True, exist_ok=True)
            pod["status"] = self._base_status("Pending")
            pod = claims.as_host_paths(pod, kubelet.api)  # a claim mounts its bound volume's directory
            volume_dirs = materialise(pod, self.dir, kubelet.lookup_raw, kubelet.token_for, kubelet.ca_bytes)
            runs = [(c, True) for c in spec.get("initContainers") or []] + [
                (c, False) for c in spec["containers"]
            ]
            argvs = []
            svc = service_env(kubelet.api_host(self.netns is not None), kubelet.api_port)
            for container, init in [(c, i) for c, i in runs]:
                container = next(
                    c
                    for c in pod["spec"]["initContainers" if init else "containers"]
                    if c["name"] == container["name"]
                )
                argvs.append((container, init, self._argv(pod, container, init, volume_dirs, svc)))
        except UnsupportedSpec as exc:
            self._fail("UnsupportedPodSpec", str(exc))
            self.stop_requested.wait()
            return False
        except ApiFailure as exc:
            self._fail("NodeRunnerError", str(exc))
            self.stop_requested.wait()
            return False
        for container, init, argv in argvs:
            if self.stop_requested.is_set():
                return False
            run = self.containers[container["name"]]
            if init:
                self._write_status(
                    self._base_status("Pending")
                    | {
                        "conditions": self._conditions(False, False),
                        "initContainerStatuses": [self._container_status(r) for r in self._runs(True)],
                    }
                )
            podman(*argv, timeout=120)
            if init:
                code = self._wait_exit(run)
                if code is None:
                    return False
                if code != 0:
                    run.finished = self._terminated(run, self._inspect(run))
                    self._fail(
                        "InitContainerFailed",
                        f"init container {run.spec['name']} exited {code}: {run.finished.get('message', '')}"[
                            :MAX_MESSAGE
                        ],
                    )
                    self.stop_requested.wait()
                    return False
                run.finished = self._terminated(run, self._inspect(run))
        return True

    def _check(self, pod: Obj) -> None:
        spec = pod["spec"]
        for key in (
            "ephemeralContainers",
            "hostUsers",
            "resourceClaims",
            "os",
            "overhead",
            "runtimeClassName",
        ):
            if spec.get(key) not in (None, [], {}, "") and not (
                key == "os" and spec[key].get("name") == "linux"
            ):
                raise UnsupportedSpec(f"spec.{key}: not supported by the node runner")
        if spec.get("hostNetwork") is False and spec.get("hostPID"):
            pass  # allowed: hostPID without hostNetwork
        for container in spec.get("initContainers") or []:
            if container.get("restartPolicy"):
                raise UnsupportedSpec(
                    f"initContainer {container['name']}.restartPolicy (sidecars) is not "
                    "supported by the node runner"
                )
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                if container.get(probe):
                    raise UnsupportedSpec(f"initContainer {container['name']}.{probe}: not allowed")
        for container in spec.get("initContainers", []) + spec["containers"]:
            image = container["image"]
            if not self.kubelet.has_image(image):
                raise UnsupportedSpec(
                    f"container {container['name']}: image {image} is not on this node "
                    "(no registry here: build it with scripts/build_images.sh)"
                )
            if container.get("startupProbe"):
                raise UnsupportedSpec(f"container {container['name']}.startupProbe: not supported")
            for probe in ("livenessProbe", "readinessProbe"):
                if container.get(probe):
                    check_probe(container[probe], container, f"container {container['name']}.{probe}")

    def _argv(
        self, pod: Obj, container: Obj, init: bool, volume_dirs: dict[str, Path | str], svc: dict[str, str]
    ) -> list[str]:
        kubelet = self.kubelet
        cname = container["name"]
        podman_name = f"rn{kubelet.runner_id}_{cname}_{self.name}_{self.ns}_{self.uid[:8]}"
        message_file = self.dir / f"termination-{cname}"
        message_file.touch()
        message_file.chmod(0o666)
        env = container_env(pod, container, kubelet.lookup_text, svc)
        env_file = write_env_file(self.dir / f"env-{cname}", env)
        labels = {
            LABEL_RUNNER: kubelet.runner_id,
            "io.kubernetes.pod.uid": self.uid,
            "io.kubernetes.pod.name": self.name,
            "io.kubernetes.pod.namespace": self.ns,
            "io.kubernetes.container.name": cname,
        }
        path = container.get("terminationMessagePath") or TERMINATION_LOG
        extra = (
            "-v",
            f"{message_file}:{path}",
            "--stop-timeout",
            str(int(pod["spec"].get("terminationGracePeriodSeconds", 30))),
        )
        argv = podman_run_argv(
            pod["spec"],
            container,
            name=podman_name,
            network=self.netns.podman_network if self.netns else None,
            pod_name=self.name,
            volume_dirs=volume_dirs,
            env_file=env_file,
            env=env,
            labels=labels,
            image_user=kubelet.image_user(container["image"]),
            extra=extra,
        )
        run = ContainerRun(container, podman_name, message_file, init=init)
        if container.get("livenessProbe"):
            run.liveness = ProbeState(container["livenessProbe"], container)
        if container.get("readinessProbe"):
            run.readiness = ProbeState(container["readinessProbe"], container)
        self.containers[cname] = run
        return argv

    def _runs(self, init: bool) -> list[ContainerRun]:
        return [r for r in self.containers.values() if r.init == init]

    def _inspect(self, run: ContainerRun) -> Obj:
        proc = podman("inspect", "--type", "container", run.podman_name, check=False, timeout=60)
        if proc.returncode != 0:
            return {}
        return json.loads(proc.stdout)[0]

    def _wait_exit(self, run: ContainerRun) -> int | None:
        while not self.stop_requested.is_set():
            state = self._inspect(run).get("State") or {}
            if state.get("Status") in ("exited", "stopped"):
                return int(state.get("ExitCode", 0))
            time.sleep(POLL_SECONDS)
        return None

    def _terminated(self, run: ContainerRun, info: Obj) -> Obj:
        state = info.get("State") or {}
        code = int(state.get("ExitCode", 0))
        message = (
            run.message_file.read_text(errors="replace")[:MAX_MESSAGE] if run.message_file.exists() else ""
        )
        if not message and code != 0 and run.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            logs = podman("logs", "--tail", str(FALLBACK_LINES), run.podman_name, check=False, timeout=60)
            message = (logs.stdout + logs.stderr)[-FALLBACK_BYTES:]
        terminated = {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": _podman_time(state.get("StartedAt")),
            "finishedAt": _podman_time(state.get("FinishedAt")),
            "containerID": f"podman://{info.get('Id', '')}",
        }
        if state.get("OOMKilled"):
            terminated["reason"] = "OOMKilled"
        if message:
            terminated["message"] = message
        return terminated

    def _container_status(self, run: ContainerRun, info: Obj | None = None, ready: bool = False) -> Obj:
        info = info if info is not None else self._inspect(run)
        state = info.get("State") or {}
        status: Obj = {
            "name": run.spec["name"],
            "image": run.spec["image"],
            "imageID": info.get("Image", ""),
            "containerID": f"podman://{info.get('Id', '')}",
            "restartCount": run.restarts,
            "ready": ready,
            "started": state.get("Status") == "running",
        }
        if run.finished is not None:
            status["state"] = {"terminated": run.finished}
        elif state.get("Status") == "running":
            status["state"] = {"running": {"startedAt": _podman_time(state.get("StartedAt"))}}
        elif state.get("Status") in ("exited", "stopped"):
            status["state"] = {"terminated": self._terminated(run, info)}
        else:
            status["state"] = {"waiting": {"reason": "ContainerCreating"}}
        if run.last_state:
            status["lastState"] = run.last_state
        return status

    def _exec_in(self, run: ContainerRun) -> Callable[[list[str], float], int]:
        def exec_in(command: list[str], timeout: float) -> int:
            try:
                return podman("exec", run.podman_name, *command, check=False, timeout=timeout).returncode
            except subprocess.TimeoutExpired:
                return -1

        return exec_in

    def _watch(self) -> None:
        policy = self.pod["spec"].get("restartPolicy", "Always")
        probe_host = self.pod_ip or self.host_ip
        while not self.stop_requested.wait(POLL_SECONDS):
            statuses, all_ready, running = [], True, 0
            for run in self._runs(False):
                info = self._inspect(run)
                state = (info.get("State") or {}).get("Status")
                if state in ("exited", "stopped") and run.finished is None:
                    terminated = self._terminated(run, info)
                    code = terminated["exitCode"]
                    if policy == "Always" or (policy == "OnFailure" and code != 0):
                        if (
                            run.restart_at == 0.0
                        ):  # back off 1, 2, 4 ... 30 s, as the kubelet does (10 s..5 min)
                            run.restart_at = time.monotonic() + min(30.0, 2.0**run.restarts)
                            run.last_state = {"terminated": terminated}
                        elif time.monotonic() >= run.restart_at:
                            run.restarts += 1
                            run.restart_at = 0.0
                            run.message_file.write_text("")
                            podman("start", run.podman_name, check=False, timeout=120)
                            if run.liveness:
                                run.liveness = ProbeState(run.spec["livenessProbe"], run.spec)
                            if run.readiness:
                                run.readiness = ProbeState(run.spec["readinessProbe"], run.spec)
                    else:
                        run.finished = terminated
                ready = state == "running"
                if ready:
                    running += 1
                    if run.liveness is not None and run.liveness.run(probe_host, self._exec_in(run)) is False:
                        log.info(
                            "liveness probe of %s/%s %s failed: restarting",
                            self.ns,
                            self.name,
                            run.spec["name"],
                        )
                        podman("stop", run.podman_name, check=False, timeout=120)
                        run.liveness = ProbeState(run.spec["livenessProbe"], run.spec)
                    if run.readiness is not None:
                        ready = bool(run.readiness.run(probe_host, self._exec_in(run)))
                all_ready &= ready
                statuses.append(self._container_status(run, info, ready))
            finished = [r.finished for r in self._runs(False)]
            if all(f is not None for f in finished):
                phase = "Succeeded" if all(f["exitCode"] == 0 for f in finished) else "Failed"
            else:
                phase = "Running" if running or any(s["restartCount"] for s in statuses) else "Pending"
            status = self._base_status(phase)
            status["conditions"] = self._conditions(True, all_ready and phase == "Running")
            status["containerStatuses"] = statuses
            if self._runs(True):
                status["initContainerStatuses"] = [
                    {
                        "name": r.spec["name"],
                        "image": r.spec["image"],
                        "ready": True,
                        "restartCount": 0,
                        "started": False,
                        "state": {"terminated": r.finished},
                    }
                    for r in self._runs(True)
                ]
            self._write_status(status)
            if phase in ("Succeeded", "Failed"):
                self.stop_requested.wait()
                return

    def _teardown(self) -> None:
        grace = int(self.pod["spec"].get("terminationGracePeriodSeconds", 30))
        names = [r.podman_name for r in self.containers.values()]
        for name in names:
            podman("stop", "--ignore", "--time", str(grace), name, check=False, timeout=grace + 60)
        if names:
            podman("rm", "-f", "--ignore", *names, check=False, timeout=120)
        if self.netns is not None:
            self.kubelet.podnet.remove(self.uid)
        shutil.rmtree(self.dir, ignore_errors=True)


_PODMAN_TIME = re.compile(r"^(\d{4}-\d\d-\d\d)[T ](\d\d:\d\d:\d\d)(?:\.\d+)?\s*(Z|[+-]\d\d:?\d\d)?")


def _podman_time(value: str | None) -> str | None:
    """podman inspect's RFC 3339 with nanoseconds as the API writes times (seconds, UTC)."""
    m = _PODMAN_TIME.match(value or "")
    if not m or m[1].startswith("0001-"):
        return None
    zone = m[3] or "+00:00"
    zone = "+00:00" if zone == "Z" else zone if ":" in zone else f"{zone[:3]}:{zone[3:]}"
    return rfc3339(datetime.datetime.fromisoformat(f"{m[1]}T{m[2]}{zone}").timestamp())


class Kubelet:
    """The kubelet of ``node_names``: registers the Nodes, binds and runs their pods."""

    def __init__(
        self,
        api: ApiClient,
        *,
        runner_id: str,
        node_names: list[str],
        node_ip: str,
        workdir: Path,
        podnet: PodNetwork,
        api_port: int,
        ca_bytes: bytes,
        node_labels: dict[str, str] | None = None,
        node_taints: list[Obj] | None = None,
    ) -> None:
        self.api = api
        self.runner_id = runner_id
        self.node_names = node_names
        self.node_ip = node_ip
        self.workdir = workdir
        self.podnet = podnet
        self.api_port = api_port
        self.ca_bytes = ca_bytes
        self.node_labels = node_labels or {}
        self.node_taints = node_taints or []
        self.workers: dict[str, PodWorker] = {}
        self._images: dict[str, str | None] = {}

    def api_host(self, pod_network: bool) -> str:
        """Where in-cluster clients find the API server: the node's loopback for hostNetwork
        pods, the pod network's gateway for the others (the front listens on both)."""
        return self.podnet.gateway if pod_network else "127.0.0.1"

    # -- lookups ------------------------------------------------------------------------------
    def lookup_object(self, kind: str, namespace: str, name: str) -> Obj | None:
        plural = {"ConfigMap": "configmaps", "Secret": "secrets", "ServiceAccount": "serviceaccounts"}[kind]
        return self.api.get(f"/api/v1/namespaces/{namespace}/{plural}/{name}")

    def lookup_raw(self, kind: str, namespace: str, name: str) -> dict[str, bytes] | None:
        obj = self.lookup_object(kind, namespace, name)
        if obj is None:
            return None
        if kind == "Secret":
            return decode_secret(obj)
        data = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
        data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        return data

    def lookup_text(self, kind: str, namespace: str, name: str) -> dict[str, str] | None:
        raw = self.lookup_raw(kind, namespace, name)
        return None if raw is None else {k: v.decode(errors="replace") for k, v in raw.items()}

    def token_for(self, pod: Obj, audience: str | None, expiration: int) -> str:
        """A token of the pod's service account, bound to the pod (TokenRequest API)."""
        meta = pod["metadata"]
        sa = pod["spec"].get("serviceAccountName", "default")
        body: Obj = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": expiration,
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
            },
        }
        if audience:
            body["spec"]["audiences"] = [audience]
        try:
            result = self.api.create(
                f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{sa}/token", body
            )
        except ApiFailure as exc:
            raise UnsupportedSpec(
                f"spec.serviceAccountName {sa!r}: no token from the TokenRequest API: {exc}"
            ) from exc
        return result["status"]["token"]

    def has_image(self, ref: str) -> bool:
        return self.image_user(ref) is not None

    def image_user(self, ref: str) -> str | None:  # type: ignore[return]
        if ref not in self._images:
            proc = podman("image", "inspect", "--format", "{{.Config.User}}", ref, check=False, timeout=60)
            self._images[ref] = proc.stdout.strip() if proc.returncode == 0 else None
        return self._images[ref]

    # -- the loop -----------------------------------------------------------------------------
    def register_nodes(self) -> None:
        kernel = Path("/proc/sys/kernel/osrelease").read_text().strip()
        for name in self.node_names:
            node = {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "labels": {
                        "kubernetes.io/hostname": name,
                        "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "amd64",
                        LABEL_RUNNER: self.runner_id,
                        **self.node_labels,
                    },
                },
                "spec": {"taints": self.node_taints} if self.node_taints else {},
            }
            with contextlib.suppress(ApiFailure):
                self.api.create("/api/v1/nodes", node)
            self.api.patch(
                f"/api/v1/nodes/{name}/status",
                {
                    "status": {
                        "addresses": [
                            {"type": "InternalIP", "address": self.node_ip},
                            {"type": "Hostname", "address": name},
                        ],
                        "conditions": [
                            {
                                "type": "Ready",
                                "status": "True",
                                "reason": "KubeletReady",
                                "message": "retina node runner is posting ready status",
                                "lastHeartbeatTime": rfc3339(),
                                "lastTransitionTime": rfc3339(),
                            }
                        ],
                        # Every field a kubelet reports: clients that parse Nodes strictly (the
                        # kubernetes client's models) refuse a nodeInfo without them.
                        "nodeInfo": {
                            "machineID": _host_id("/etc/machine-id"),
                            "systemUUID": str(uuid.uuid5(uuid.NAMESPACE_DNS, name)),
                            "bootID": _host_id("/proc/sys/kernel/random/boot_id"),
                            "kubeProxyVersion": "",  # deprecated; a kubelet reports it empty
                            "kernelVersion": kernel,
                            "osImage": "Debian GNU/Linux 12 (bookworm)",
                            "containerRuntimeVersion": "podman",
                            "kubeletVersion": "v1.31.0-noderunner",
                            "operatingSystem": "linux",
                            "architecture": "amd64",
                        },
                    }
                },
            )

    def sync(self) -> None:
        pods = self.api.list("/api/v1/pods")
        nodes = [n for n in self.api.list("/api/v1/nodes") if n["metadata"]["name"] in self.node_names]
        alive: set[str] = set()
        for pod in pods:
            meta, spec = pod["metadata"], pod["spec"]
            if not spec.get("nodeName") and not meta.get("deletionTimestamp"):
                self._schedule(pod, nodes)
                continue
            if spec.get("nodeName") not in self.node_names:
                continue
            if meta.get("deletionTimestamp"):
                continue
            alive.add(meta["uid"])
            if meta["uid"] not in self.workers:
                worker = PodWorker(self, pod)
                self.workers[meta["uid"]] = worker
                worker.start()
        for uid, worker in list(self.workers.items()):
            if uid not in alive:
                worker.stop_requested.set()
                if not worker.is_alive():
                    del self.workers[uid]

    def _schedule(self, pod: Obj, nodes: list[Obj]) -> None:
        path = f"/api/v1/namespaces/{pod['metadata']['namespace']}/pods/{pod['metadata']['name']}"
        reasons = []
        try:
            for node in nodes:
                why = fits(pod["spec"], node) or claims.unschedulable(pod, node, self.api)
                if why is None:
                    self.api.patch(path, {"spec": {"nodeName": node["metadata"]["name"]}})
                    return
                reasons.append(why)
        except UnsupportedSpec as exc:
            self.api.patch(
                f"{path}/status",
                {"status": {"phase": "Failed", "reason": "UnsupportedPodSpec", "message": str(exc)}},
            )
            return
        message = f"0/{len(nodes)} nodes are available: " + ", ".join(sorted(set(reasons)))
        conditions = [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}
        ]
        if (pod.get("status") or {}).get("conditions") != conditions:
            self.api.patch(f"{path}/status", {"status": {"phase": "Pending", "conditions": conditions}})

    def worker_for(self, namespace: str, name: str) -> PodWorker | None:
        return next((w for w in self.workers.values() if (w.ns, w.name) == (namespace, name)), None)

    def shutdown(self) -> None:
        for worker in self.workers.values():
            worker.stop_requested.set()
        for worker in self.workers.values():
            worker.join(120)
        self.workers.clear()


def leftover_containers(runner_id: str) -> list[str]:
    """Names of containers this runner started that still exist."""
    proc = subprocess.run(
        podman_argv("ps", "-a", "--filter", f"label={LABEL_RUNNER}={runner_id}", "--format", "{{.Names}}"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return [n for n in proc.stdout.split() if n]


def _host_id(path: str) -> str:
    """This machine's id from ``path`` (as the kubelet reads it), or '' where there is none."""
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""
