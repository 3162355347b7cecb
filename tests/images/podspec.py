"""Run one container of a rendered manifest with Podman, outside any cluster.

The translation of a pod spec into ``podman run`` lives in ``retina_lab.noderunner.podspec``
(the node runner's kubelet uses it for every pod); this wrapper feeds it what a test has
instead of a cluster: ``config_dirs`` (a ConfigMap's name -> a directory the test wrote),
``field_values`` (downward-API values), ``host_paths`` (hostPath -> a temporary directory), and
``pod_network`` for a pod without ``hostNetwork``. emptyDir volumes become tmpfs mounts.
A spec this cannot reproduce (a Secret reference, another volume type) raises ``UnsupportedSpec``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from retina_lab.noderunner.env import container_env
from retina_lab.noderunner.podspec import CONTAINERD_DEFAULT_CAPS, UnsupportedSpec
from retina_lab.noderunner.podspec import podman_run_argv as _runner_argv

__all__ = ["CONTAINERD_DEFAULT_CAPS", "UnsupportedSpec", "cap_names", "podman_run_argv"]


def _pod_with_fields(field_values: Mapping[str, str]) -> dict[str, Any]:
    pod: dict[str, Any] = {"metadata": {"namespace": "default"}, "spec": {}, "status": {}}
    for path, value in field_values.items():
        section, _, key = path.partition(".")
        pod.setdefault(section, {})[key] = value
    return pod


def podman_run_argv(
    pod_spec: Mapping[str, Any],
    container: Mapping[str, Any],
    *,
    name: str,
    image: str | None = None,
    config_dirs: Mapping[str, Path] | None = None,
    host_paths: Mapping[str, Path] | None = None,
    field_values: Mapping[str, str] | None = None,
    pod_network: str | None = None,
    detach: bool = True,
) -> list[str]:
    """``run`` arguments (after podman's global flags) for ``container`` of ``pod_spec``."""
    volume_dirs: dict[str, Path | str] = {}
    for volume in pod_spec.get("volumes") or []:
        if "emptyDir" in volume:
            volume_dirs[volume["name"]] = "tmpfs"
        elif "configMap" in volume and volume["configMap"]["name"] in (config_dirs or {}):
            volume_dirs[volume["name"]] = Path((config_dirs or {})[volume["configMap"]["name"]])

    def no_objects(kind: str, namespace: str, obj: str) -> None:
        raise UnsupportedSpec(
            f"container {container['name']}: {kind} {obj} is not available outside a cluster"
        )

    env = container_env(_pod_with_fields(field_values or {}), dict(container), no_objects, {})
    extra: list[str] = []
    for key, value in env.items():
        extra += ["-e", f"{key}={value}"]  # tests only: no secrets reach this path
    return _runner_argv(
        pod_spec,
        container,
        name=name,
        image=image,
        network="host" if pod_spec.get("hostNetwork") else pod_network,
        volume_dirs=volume_dirs,
        host_paths=host_paths,
        env=env,  # $(VAR) in command/args, as the kubelet expands it
        extra=tuple(extra),
        detach=detach,
    )


def cap_names(mask: int) -> set[str]:
    """Capability names in a /proc/PID/status Cap* bit mask (numbers from linux/capability.h)."""
    names = [
        "CHOWN",
        "DAC_OVERRIDE",
        "DAC_READ_SEARCH",
        "FOWNER",
        "FSETID",
        "KILL",
        "SETGID",
        "SETUID",
        "SETPCAP",
        "LINUX_IMMUTABLE",
        "NET_BIND_SERVICE",
        "NET_BROADCAST",
        "NET_ADMIN",
        "NET_RAW",
        "IPC_LOCK",
        "IPC_OWNER",
        "SYS_MODULE",
        "SYS_RAWIO",
        "SYS_CHROOT",
        "SYS_PTRACE",
        "SYS_PACCT",
        "SYS_ADMIN",
        "SYS_BOOT",
        "SYS_NICE",
        "SYS_RESOURCE",
        "SYS_TIME",
        "SYS_TTY_CONFIG",
        "MKNOD",
        "LEASE",
        "AUDIT_WRITE",
        "AUDIT_CONTROL",
        "SETFCAP",
        "MAC_OVERRIDE",
        "MAC_ADMIN",
        "SYSLOG",
        "WAKE_ALARM",
        "BLOCK_SUSPEND",
        "AUDIT_READ",
        "PERFMON",
        "BPF",
        "CHECKPOINT_RESTORE",
    ]
    return {n for bit, n in enumerate(names) if mask >> bit & 1}
