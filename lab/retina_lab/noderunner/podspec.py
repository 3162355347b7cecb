"""A container of a Kubernetes pod spec as ``podman run`` arguments, the way the kubelet runs it.

================================================  ===============================================
pod spec                                          podman run
================================================  ===============================================
``hostNetwork: true``                             ``--network host`` (else the pod's netns)
``hostname`` (else the pod's name)                ``--hostname`` (not with ``hostNetwork``)
``hostPID: true``                                 ``--pid host``
``privileged: true``                              ``--privileged``
``capabilities.drop`` / ``add``                   ``--cap-drop X`` / ``--cap-add CAP_X``
(no ``drop``)                                     the CRI runtime's default set (containerd's)
``allowPrivilegeEscalation: false``               ``--security-opt no-new-privileges``
``readOnlyRootFilesystem: true``                  ``--read-only --read-only-tmpfs=false``
``runAsUser`` / ``runAsGroup``                    ``--user UID[:GID]``
``runAsNonRoot: true``                            refused (``UnsupportedSpec``) when the uid is 0
``seccompProfile: Unconfined``                    ``--security-opt seccomp=unconfined``
``seccompProfile: RuntimeDefault``                Podman's default profile
``hostPath`` volume (+ ``readOnly``)              ``-v HOST:PATH[:ro]`` (``DirectoryOrCreate``: made)
``mountPropagation: HostToContainer``             ``rslave``; ``Bidirectional``: ``rshared``
``emptyDir``/``configMap``/``secret``/``projected``  ``-v DIR:PATH`` (the caller materialises DIR)
``resources.limits`` memory / cpu                 ``--memory`` (no swap) / ``--cpus``
``command`` / ``args`` / ``workingDir``           ``--entrypoint`` (image CMD dropped) / args / ``-w``
``env`` (values resolved by the caller)           ``--env-file`` (never argv: values may be secret)
================================================  ===============================================

Anything else a pod would silently lose raises ``UnsupportedSpec`` naming the field: the node
runner fails such a pod with that message, as a kubelet would refuse it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from images.podman import ULIMITS

#: containerd's default capabilities (what a container gets when its spec drops nothing).
CONTAINERD_DEFAULT_CAPS = (
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
)
_PROPAGATION = {None: None, "None": None, "HostToContainer": "rslave", "Bidirectional": "rshared"}
_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")
_BYTES = {
    None: 1,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
    "k": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
}
#: hostPath types the runner checks or creates as the kubelet does.
_HOST_PATH_TYPES = {
    "",
    "DirectoryOrCreate",
    "Directory",
    "FileOrCreate",
    "File",
    "Socket",
    "CharDevice",
    "BlockDevice",
}
#: Volume kinds that the caller materialises as a directory (``volume_dirs``).
DIR_VOLUMES = ("emptyDir", "configMap", "secret", "projected", "downwardAPI")
#: Container fields the runner honours or that only matter to other parts of Kubernetes.
_KNOWN_CONTAINER_FIELDS = {
    "name",
    "image",
    "imagePullPolicy",
    "command",
    "args",
    "env",
    "envFrom",
    "workingDir",
    "ports",
    "resources",
    "securityContext",
    "volumeMounts",
    "livenessProbe",
    "readinessProbe",
    "startupProbe",
    "terminationMessagePath",
    "terminationMessagePolicy",
    "stdin",
    "tty",
}


class UnsupportedSpec(ValueError):
    """The spec uses something this translation cannot reproduce; the message names the field."""


def memory_bytes(quantity: str | int, where: str) -> int:
    m = _QUANTITY.match(str(quantity))
    if not m or m[2] == "m":
        raise UnsupportedSpec(f"{where}: memory quantity {quantity!r} not understood")
    return int(float(m[1]) * _BYTES[m[2]])


def cpus(quantity: str | int, where: str) -> str:
    m = _QUANTITY.match(str(quantity))
    if not m or m[2] not in (None, "m"):
        raise UnsupportedSpec(f"{where}: cpu quantity {quantity!r} not understood")
    return f"{float(m[1]) / (1000 if m[2] == 'm' else 1):g}"


def _caps(security: Mapping[str, Any], where: str) -> list[str]:
    caps = security.get("capabilities") or {}
    drop = {c.upper().removeprefix("CAP_") for c in caps.get("drop") or []}
    add = {c.upper().removeprefix("CAP_") for c in caps.get("add") or []}
    keep = set() if "ALL" in drop else set(CONTAINERD_DEFAULT_CAPS) - drop
    argv = ["--cap-drop", "ALL"]
    for cap in sorted(keep | add):
        if not re.fullmatch(r"[A-Z_]+", cap):
            raise UnsupportedSpec(f"{where}.securityContext.capabilities: {cap!r} is no capability")
        argv += ["--cap-add", f"CAP_{cap}"]
    return argv


def effective_user(security: Mapping[str, Any], pod_security: Mapping[str, Any]) -> tuple[Any, Any]:
    return (
        security.get("runAsUser", pod_security.get("runAsUser")),
        security.get("runAsGroup", pod_security.get("runAsGroup")),
    )


def _security(
    security: Mapping[str, Any], pod_security: Mapping[str, Any], where: str, image_user: str
) -> list[str]:
    for key in ("seLinuxOptions", "windowsOptions", "appArmorProfile", "procMount"):
        if security.get(key) or pod_security.get(key):
            raise UnsupportedSpec(f"{where}.securityContext.{key}: not supported by the node runner")
    user, group = effective_user(security, pod_security)
    non_root = security.get("runAsNonRoot", pod_security.get("runAsNonRoot"))
    if non_root:
        uid = user if user is not None else (image_user.split(":")[0] or "0")
        if str(uid) in ("0", "root"):
            raise UnsupportedSpec(
                f"{where}: runAsNonRoot is true but the container would run as root "
                f"(runAsUser {user!r}, image user {image_user!r})"
            )
    argv = ["--privileged"] if security.get("privileged") else _caps(security, where)
    if security.get("allowPrivilegeEscalation") is False:
        argv += ["--security-opt", "no-new-privileges"]
    if security.get("readOnlyRootFilesystem"):
        argv += ["--read-only", "--read-only-tmpfs=false"]
    if user is not None:
        argv += ["--user", f"{user}:{group}" if group is not None else str(user)]
    groups = pod_security.get("supplementalGroups") or []
    for gid in groups:
        argv += ["--group-add", str(gid)]
    if pod_security.get("fsGroup") is not None:
        argv += ["--group-add", str(pod_security["fsGroup"])]
    seccomp = (security.get("seccompProfile") or pod_security.get("seccompProfile") or {}).get("type")
    if seccomp == "Unconfined" and not security.get("privileged"):
        argv += ["--security-opt", "seccomp=unconfined"]
    elif seccomp not in (None, "RuntimeDefault", "Unconfined"):
        raise UnsupportedSpec(
            f"{where}.securityContext.seccompProfile.type {seccomp!r}: only "
            "RuntimeDefault and Unconfined are supported by the node runner"
        )
    return argv


def _volumes(
    pod_spec: Mapping[str, Any],
    container: Mapping[str, Any],
    where: str,
    volume_dirs: Mapping[str, Path | str],
    host_paths: Mapping[str, Path],
) -> list[str]:
    volumes = {v["name"]: v for v in pod_spec.get("volumes") or []}
    argv: list[str] = []
    for mount in container.get("volumeMounts") or []:
        name, path = mount["name"], mount["mountPath"]
        for key in ("subPath", "subPathExpr", "recursiveReadOnly"):
            if mount.get(key):
                raise UnsupportedSpec(f"{where}.volumeMounts[{name}].{key}: not supported by the node runner")
        volume = volumes.get(name)
        if volume is None:
            raise UnsupportedSpec(f"{where}.volumeMounts[{name}]: no volume of that name in the pod")
        options = ["ro"] if mount.get("readOnly") else []
        propagation = _PROPAGATION.get(mount.get("mountPropagation"), "unknown")
        if propagation == "unknown":
            raise UnsupportedSpec(
                f"{where}.volumeMounts[{name}].mountPropagation: {mount['mountPropagation']!r} not understood"
            )
        if propagation:
            options.append(propagation)
        suffix = f":{','.join(options)}" if options else ""
        if "hostPath" in volume:
            argv += ["-v", f"{host_path_source(volume, host_paths)}:{path}{suffix}"]
            continue
        kind = next((k for k in DIR_VOLUMES if k in volume), None)
        if kind is None:
            other = sorted(set(volume) - {"name"})
            raise UnsupportedSpec(
                f"volume {name}: {other} is not supported by the node runner (hostPath, "
                f"{', '.join(DIR_VOLUMES)} are)"
            )
        source = volume_dirs.get(name)
        if source is None:
            raise UnsupportedSpec(f"volume {name}: its {kind} has no directory on the node")
        if source == "tmpfs":
            argv += ["--tmpfs", path]
        else:
            # configMap, secret, projected and downwardAPI volumes are read-only in Kubernetes.
            ro = kind in ("configMap", "secret", "projected", "downwardAPI")
            opts = sorted(set(options) | ({"ro"} if ro else set()))
            argv += ["-v", f"{source}:{path}" + (f":{','.join(opts)}" if opts else "")]
    return argv


def host_path_source(volume: Mapping[str, Any], host_paths: Mapping[str, Path] | None = None) -> Path:
    """The host side of a hostPath volume, checked (and made) by its ``type`` as the kubelet does."""
    spec = volume["hostPath"]
    kind = spec.get("type") or ""
    if kind not in _HOST_PATH_TYPES:
        raise UnsupportedSpec(f"volume {volume['name']}: hostPath.type {kind!r} not understood")
    source = Path((host_paths or {}).get(spec["path"], spec["path"]))
    if kind == "DirectoryOrCreate":
        source.mkdir(parents=True, exist_ok=True)
    elif kind == "FileOrCreate":
        source.parent.mkdir(parents=True, exist_ok=True)
        source.touch(exist_ok=True)
    elif kind == "Directory" and not source.is_dir():
        raise UnsupportedSpec(f"volume {volume['name']}: hostPath {source} is not a directory")
    elif kind == "File" and not source.is_file():
        raise UnsupportedSpec(f"volume {volume['name']}: hostPath {source} is not a file")
    elif kind in ("Socket", "CharDevice", "BlockDevice") and not source.exists():
        raise UnsupportedSpec(f"volume {volume['name']}: hostPath {source} does not exist")
    return source


def resources_argv(container: Mapping[str, Any], where: str) -> list[str]:
    limits = (container.get("resources") or {}).get("limits") or {}
    argv: list[str] = []
    for key in limits:
        if key not in ("memory", "cpu", "ephemeral-storage"):
            raise UnsupportedSpec(f"{where}.resources.limits.{key}: not supported by the node runner")
    if "memory" in limits:
        memory = str(memory_bytes(limits["memory"], f"{where}.resources.limits.memory"))
        argv += ["--memory", memory, "--memory-swap", memory]
    if "cpu" in limits:
        argv += ["--cpus", cpus(limits["cpu"], f"{where}.resources.limits.cpu")]
    if "ephemeral-storage" in limits:
        raise UnsupportedSpec(
            f"{where}.resources.limits.ephemeral-storage: podman on this node cannot limit it"
        )
    return argv


def check_container_fields(container: Mapping[str, Any], where: str) -> None:
    unknown = sorted(set(container) - _KNOWN_CONTAINER_FIELDS)
    if unknown:
        raise UnsupportedSpec(f"{where}: fields {unknown} are not supported by the node runner")
    for key in ("stdin", "tty"):
        if container.get(key):
            raise UnsupportedSpec(f"{where}.{key}: interactive containers are not supported")


def write_env_file(path: Path, env: Mapping[str, str]) -> Path:
    """Environment for ``--env-file`` (mode 0600): secret values never reach an argv."""
    lines = []
    for key, value in env.items():
        if "\n" in value or "\r" in value:
            raise UnsupportedSpec(f"env {key}: values with line breaks cannot be passed to podman")
        lines.append(f"{key}={value}")
    path.touch(mode=0o600, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def podman_run_argv(
    pod_spec: Mapping[str, Any],
    container: Mapping[str, Any],
    *,
    name: str,
    image: str | None = None,
    network: str | None = None,
    pod_name: str | None = None,
    volume_dirs: Mapping[str, Path | str] | None = None,
    host_paths: Mapping[str, Path] | None = None,
    env_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    image_user: str = "",
    extra: tuple[str, ...] = (),
    detach: bool = True,
) -> list[str]:
    """``run`` arguments (after podman's global flags) for ``container`` of ``pod_spec``.

    ``network`` is ``host`` or the pod's network namespace (``ns:/run/netns/NAME``);
    ``pod_name`` is the container's host name (``spec.hostname`` wins), as the kubelet sets it;
    ``volume_dirs`` maps a volume's name to its directory on the node (``"tmpfs"``: a tmpfs);
    ``host_paths`` maps a hostPath to another host directory (a test's temporary one).
    """
    where = f"container {container['name']}"
    check_container_fields(container, where)
    if pod_spec.get("hostNetwork"):
        network = "host"
    if network is None:
        raise UnsupportedSpec(f"{where}: the pod has no hostNetwork and no pod network was given")
    argv = ["run", "--name", name, "--network", network, "--pull=never", *ULIMITS]
    hostname = pod_spec.get("hostname") or pod_name
    if hostname and not pod_spec.get("hostNetwork"):  # a host-network pod keeps the node's name
        argv += ["--hostname", str(hostname)]
    if pod_spec.get("hostPID"):
        argv += ["--pid", "host"]
    if pod_spec.get("hostIPC"):
        argv += ["--ipc", "host"]
    for key, value in sorted((labels or {}).items()):
        argv += ["--label", f"{key}={value}"]
    if detach:
        argv.append("--detach")
    argv += _security(
        container.get("securityContext") or {}, pod_spec.get("securityContext") or {}, where, image_user
    )
    argv += _volumes(pod_spec, container, where, volume_dirs or {}, host_paths or {})
    if env_file is not None:
        argv += ["--env-file", str(env_file)]
    argv += resources_argv(container, where)
    if container.get("workingDir"):
        argv += ["--workdir", container["workingDir"]]
    argv += list(extra)
    command, args = list(container.get("command") or []), list(container.get("args") or [])
    # $(VAR) in command and args is expanded from the container's env, as the kubelet does.
    command = [expand_references(part, env or {}) for part in command]
    args = [expand_references(part, env or {}) for part in args]
    if command:
        # A JSON entrypoint replaces the image's ENTRYPOINT and, as Kubernetes' command, its CMD.
        argv += ["--entrypoint", json.dumps(command)]
    argv.append(image or container["image"])
    argv += args
    return argv


_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand_references(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion of ``command``/``args``: a defined variable is replaced,
    ``$$`` is a literal ``$`` (so ``$$(VAR)`` stays ``$(VAR)``), an undefined one is left as is."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _REFERENCE.sub(replace, text)
