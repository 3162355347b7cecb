"""Run a container of a Kubernetes pod spec with Podman, the way the kubelet would run it.

``podman_run_argv(pod_spec, container, ...)`` turns the rendered manifest (DaemonSet template,
Job template) into ``podman run`` arguments, so a test runs exactly what the manifest declares:

================================================  ===============================================
pod spec                                          podman run
================================================  ===============================================
``hostNetwork: true``                             ``--network host`` (else ``pod_network``)
``privileged: true``                              ``--privileged``
``capabilities.drop [ALL]`` / ``add [X]``         ``--cap-drop ALL`` / ``--cap-add CAP_X``
(no ``drop``)                                     the CRI runtime's default set (containerd's)
``allowPrivilegeEscalation: false``               ``--security-opt no-new-privileges``
``readOnlyRootFilesystem: true``                  ``--read-only --read-only-tmpfs=false``
``runAsUser`` / ``runAsGroup``                    ``--user UID[:GID]``
``seccompProfile: Unconfined``                    ``--security-opt seccomp=unconfined``
``seccompProfile: RuntimeDefault``                Podman's default profile (see the report)
``hostPath`` volume (+ ``readOnly``)              ``-v HOST:PATH[:ro]`` (``DirectoryOrCreate``: made)
``mountPropagation: HostToContainer``             ``rslave``; ``Bidirectional``: ``rshared``
``emptyDir``                                      ``--tmpfs PATH``
``configMap``                                     ``-v DIR:PATH:ro`` (caller writes DIR)
``resources.limits`` memory / cpu                 ``--memory`` (no swap) / ``--cpus``
``command`` / ``args``                            ``--entrypoint`` (image CMD dropped) / arguments
``env`` value / downward API fieldRef              ``-e NAME=VALUE``
================================================  ===============================================

Anything else a test would silently lose (another volume type, a seccomp profile file, secret
env) raises ``UnsupportedSpec`` naming the field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from images.podman import ULIMITS

#: containerd's default capabilities (what a container gets when its spec drops nothing).
CONTAINERD_DEFAULT_CAPS = ("CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID",
                           "SETUID", "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL",
                           "AUDIT_WRITE")
_PROPAGATION = {None: None, "None": None, "HostToContainer": "rslave", "Bidirectional": "rshared"}
_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(m|Ki|Mi|Gi|k|M|G)?$")
_BYTES = {None: 1, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "k": 1000, "M": 1000**2, "G": 1000**3}


class UnsupportedSpec(ValueError):
    """The spec uses something this translation cannot reproduce; the message names the field."""


def _bytes(quantity: str, where: str) -> int:
    m = _QUANTITY.match(str(quantity))
    if not m or m[2] == "m":
        raise UnsupportedSpec(f"{where}: memory quantity {quantity!r} not understood")
    return int(float(m[1]) * _BYTES[m[2]])


def _cpus(quantity: str, where: str) -> str:
    m = _QUANTITY.match(str(quantity))
    if not m or m[2] not in (None, "m"):
        raise UnsupportedSpec(f"{where}: cpu quantity {quantity!r} not understood")
    return f"{float(m[1]) / (1000 if m[2] == 'm' else 1):g}"


def _caps(security: Mapping[str, Any], where: str) -> list[str]:
    caps = security.get("capabilities") or {}
    drop = [c.upper() for c in caps.get("drop") or []]
    add = [c.upper() for c in caps.get("add") or []]
    if drop and drop != ["ALL"]:
        raise UnsupportedSpec(f"{where}.capabilities.drop: only [ALL] is translated, got {drop}")
    base = [] if drop else list(CONTAINERD_DEFAULT_CAPS)
    argv = ["--cap-drop", "ALL"]
    for cap in sorted(set(base) | set(add)):
        argv += ["--cap-add", f"CAP_{cap}"]
    return argv


def _security(security: Mapping[str, Any], pod_security: Mapping[str, Any], where: str) -> list[str]:
    argv: list[str] = []
    if security.get("privileged"):
        return ["--privileged"]
    argv += _caps(security, where)
    if security.get("allowPrivilegeEscalation") is False:
        argv += ["--security-opt", "no-new-privileges"]
    if security.get("readOnlyRootFilesystem"):
        argv += ["--read-only", "--read-only-tmpfs=false"]
    user = security.get("runAsUser", pod_security.get("runAsUser"))
    group = security.get("runAsGroup", pod_security.get("runAsGroup"))
    if user is not None:
        argv += ["--user", f"{user}:{group}" if group is not None else str(user)]
    seccomp = (security.get("seccompProfile") or pod_security.get("seccompProfile") or {}).get("type")
    if seccomp == "Unconfined":
        argv += ["--security-opt", "seccomp=unconfined"]
    elif seccomp not in (None, "RuntimeDefault"):
        raise UnsupportedSpec(f"{where}.seccompProfile.type {seccomp!r}: not translated")
    return argv


def _volumes(pod_spec: Mapping[str, Any], container: Mapping[str, Any], where: str,
             config_dirs: Mapping[str, Path], host_paths: Mapping[str, Path]) -> list[str]:
    volumes = {v["name"]: v for v in pod_spec.get("volumes") or []}
    argv: list[str] = []
    for mount in container.get("volumeMounts") or []:
        name, path = mount["name"], mount["mountPath"]
        volume = volumes.get(name)
        if volume is None:
            raise UnsupportedSpec(f"{where}.volumeMounts[{name}]: no volume of that name in the pod")
        options = ["ro"] if mount.get("readOnly") else []
        propagation = _PROPAGATION.get(mount.get("mountPropagation"), "unknown")
        if propagation == "unknown":
            raise UnsupportedSpec(f"{where}.volumeMounts[{name}].mountPropagation: "
                                  f"{mount['mountPropagation']!r} not translated")
        if propagation:
            options.append(propagation)
        if "hostPath" in volume:
            source = Path(host_paths.get(volume["hostPath"]["path"], volume["hostPath"]["path"]))
            if volume["hostPath"].get("type") == "DirectoryOrCreate":
                source.mkdir(parents=True, exist_ok=True)
            argv += ["-v", f"{source}:{path}" + (f":{','.join(options)}" if options else "")]
        elif "emptyDir" in volume:
            argv += ["--tmpfs", path]
        elif "configMap" in volume:
            cm = volume["configMap"]["name"]
            if cm not in config_dirs:
                raise UnsupportedSpec(f"volume {name}: configMap {cm!r} has no directory (config_dirs)")
            argv += ["-v", f"{config_dirs[cm]}:{path}:ro"]
        else:
            raise UnsupportedSpec(f"volume {name}: only hostPath, emptyDir and configMap are translated")
    return argv


def _env(container: Mapping[str, Any], where: str, field_values: Mapping[str, str]) -> list[str]:
    argv: list[str] = []
    for item in container.get("env") or []:
        if "value" in item:
            value = str(item["value"])
        elif "fieldRef" in (item.get("valueFrom") or {}):
            path = item["valueFrom"]["fieldRef"]["fieldPath"]
            if path not in field_values:
                raise UnsupportedSpec(f"{where}.env[{item['name']}]: downward API {path!r} has no value")
            value = field_values[path]
        else:
            raise UnsupportedSpec(f"{where}.env[{item['name']}]: only value and fieldRef are translated")
        argv += ["-e", f"{item['name']}={value}"]
    return argv


def _resources(container: Mapping[str, Any], where: str) -> list[str]:
    limits = (container.get("resources") or {}).get("limits") or {}
    argv: list[str] = []
    if "memory" in limits:
        memory = str(_bytes(limits["memory"], f"{where}.resources.limits.memory"))
        argv += ["--memory", memory, "--memory-swap", memory]
    if "cpu" in limits:
        argv += ["--cpus", _cpus(limits["cpu"], f"{where}.resources.limits.cpu")]
    return argv


def podman_run_argv(pod_spec: Mapping[str, Any], container: Mapping[str, Any], *, name: str,
                    image: str | None = None, config_dirs: Mapping[str, Path] | None = None,
                    host_paths: Mapping[str, Path] | None = None,
                    field_values: Mapping[str, str] | None = None,
                    pod_network: str | None = None, detach: bool = True) -> list[str]:
    """``run`` arguments (after podman's global flags) for ``container`` of ``pod_spec``.

    ``image`` replaces the container's image; ``host_paths`` maps a hostPath to another host
    directory (a test's temporary one); ``field_values`` gives downward-API values;
    ``pod_network`` is the podman network standing in for the pod network of a pod without
    ``hostNetwork`` (there is no CNI here: a test passes ``host`` and says so).
    """
    where = f"container {container['name']}"
    network = "host" if pod_spec.get("hostNetwork") else pod_network
    if network is None:
        raise UnsupportedSpec(f"{where}: the pod has no hostNetwork; pass pod_network")
    argv = ["run", "--name", name, "--network", network, "--pull=never", *ULIMITS]
    if detach:
        argv.append("--detach")
    argv += _security(container.get("securityContext") or {}, pod_spec.get("securityContext") or {}, where)
    argv += _volumes(pod_spec, container, where, config_dirs or {}, host_paths or {})
    argv += _env(container, where, field_values or {})
    argv += _resources(container, where)
    command, args = list(container.get("command") or []), list(container.get("args") or [])
    if command:
        # A JSON entrypoint replaces the image's ENTRYPOINT and, as Kubernetes' command, its CMD.
        argv += ["--entrypoint", json.dumps(command)]
    argv.append(image or container["image"])
    argv += args
    return argv


def cap_names(mask: int) -> set[str]:
    """Capability names in a /proc/PID/status Cap* bit mask (numbers from linux/capability.h)."""
    names = ["CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
             "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
             "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
             "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
             "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
             "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE"]
    return {n for bit, n in enumerate(names) if mask >> bit & 1}
