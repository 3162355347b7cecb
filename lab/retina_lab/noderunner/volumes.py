"""Volumes the kubelet makes on the node: ``emptyDir``, ``configMap``, ``secret``,
``downwardAPI`` and ``projected`` (incl. the service-account token), each a directory under
the pod's directory that ``podspec`` mounts into the containers.

The service-account token comes from the TokenRequest API (``POST .../serviceaccounts/NAME/token``,
bound to the pod), as the kubelet gets it. A pod that does not opt out
(``automountServiceAccountToken``) gets the ``kube-api-access`` volume that Kubernetes'
ServiceAccount admission adds: token, ``ca.crt`` and ``namespace`` at
``/var/run/secrets/kubernetes.io/serviceaccount``.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from retina_lab.noderunner.env import field_value
from retina_lab.noderunner.podspec import UnsupportedSpec

Obj = dict[str, Any]
SA_MOUNT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
SA_VOLUME = "kube-api-access-runner"
#: ``raw_lookup(kind, namespace, name)`` -> ``{key: bytes}`` or ``None``.
RawLookup = Callable[[str, str, str], "Mapping[str, bytes] | None"]
#: ``token_for(pod, audience, expiration_seconds)`` -> a bearer token for the pod's service account.
TokenSource = Callable[[Obj, "str | None", int], str]


def automounts_token(pod: Obj, service_account: Obj | None) -> bool:
    spec = pod["spec"]
    if spec.get("automountServiceAccountToken") is not None:
        return bool(spec["automountServiceAccountToken"])
    if service_account and service_account.get("automountServiceAccountToken") is not None:
        return bool(service_account["automountServiceAccountToken"])
    return True


def with_service_account_volume(pod: Obj, service_account: Obj | None) -> Obj:
    """The pod as ServiceAccount admission would have stored it: kube-api-access mounted in
    every container that does not mount that path itself."""
    if not automounts_token(pod, service_account):
        return pod
    spec = pod["spec"]
    spec.setdefault("volumes", []).append(
        {
            "name": SA_VOLUME,
            "projected": {
                "defaultMode": 0o644,
                "sources": [
                    {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                    {
                        "configMap": {
                            "name": "kube-root-ca.crt",
                            "items": [{"key": "ca.crt", "path": "ca.crt"}],
                        }
                    },
                    {
                        "downwardAPI": {
                            "items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]
                        }
                    },
                ],
            },
        }
    )
    for container in spec.get("initContainers", []) + spec.get("containers", []):
        mounts = container.setdefault("volumeMounts", [])
        if not any(m["mountPath"] == SA_MOUNT_PATH for m in mounts):
            mounts.append({"name": SA_VOLUME, "mountPath": SA_MOUNT_PATH, "readOnly": True})
    return pod


def _write(directory: Path, relative: str, data: bytes, mode: int) -> None:
    if relative.startswith("/") or ".." in Path(relative).parts:
        raise UnsupportedSpec(f"volume item path {relative!r} must be relative without '..'")
    path = directory / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)


def _key_items(
    source: Mapping[str, Any],
    data: Mapping[str, bytes] | None,
    kind: str,
    directory: Path,
    default_mode: int,
    where: str,
) -> None:
    if data is None:
        if source.get("optional"):
            return
        raise UnsupportedSpec(f"{where}: {kind} {source.get('name') or source.get('secretName')!r} not found")
    items = source.get("items")
    if items is None:
        for key, value in data.items():
            _write(directory, key, value, default_mode)
        return
    for item in items:
        if item["key"] not in data:
            if source.get("optional"):
                continue
            raise UnsupportedSpec(f"{where}: {kind} has no key {item['key']!r}")
        _write(directory, item["path"], data[item["key"]], item.get("mode", default_mode))


def materialise(
    pod: Obj, pod_dir: Path, lookup: RawLookup, token_for: TokenSource, ca_cert: bytes
) -> dict[str, Path | str]:
    """Directories for the pod's non-hostPath volumes: ``{volume name: directory}``."""
    namespace = pod["metadata"]["namespace"]
    dirs: dict[str, Path | str] = {}
    for volume in pod["spec"].get("volumes") or []:
        name = volume["name"]
        where = f"volume {name}"
        directory = pod_dir / "volumes" / name
        if "hostPath" in volume:
            continue
        directory.mkdir(parents=True, exist_ok=True)
        dirs[name] = directory
        if "emptyDir" in volume:
            if (volume["emptyDir"] or {}).get("medium") not in (None, "", "Memory"):
                raise UnsupportedSpec(f"{where}: emptyDir.medium {volume['emptyDir']['medium']!r}")
            os.chmod(directory, 0o777)  # as the kubelet makes it: any container user may write
        elif "configMap" in volume:
            source = volume["configMap"]
            _key_items(
                source,
                lookup("ConfigMap", namespace, source["name"]),
                "ConfigMap",
                directory,
                source.get("defaultMode", 0o644),
                where,
            )
        elif "secret" in volume:
            source = volume["secret"]
            _key_items(
                source,
                lookup("Secret", namespace, source["secretName"]),
                "Secret",
                directory,
                source.get("defaultMode", 0o644),
                where,
            )
        elif "downwardAPI" in volume:
            _downward(
                pod,
                volume["downwardAPI"].get("items") or [],
                directory,
                volume["downwardAPI"].get("defaultMode", 0o644),
                where,
            )
        elif "projected" in volume:
            mode = volume["projected"].get("defaultMode", 0o644)
            for source in volume["projected"].get("sources") or []:
                if "serviceAccountToken" in source:
                    tok = source["serviceAccountToken"]
                    token = token_for(pod, tok.get("audience"), int(tok.get("expirationSeconds", 3607)))
                    _write(directory, tok["path"], token.encode(), mode)
                elif "configMap" in source:
                    cm = source["configMap"]
                    data = lookup("ConfigMap", namespace, cm["name"])
                    if data is None and cm["name"] == "kube-root-ca.crt":
                        data = {"ca.crt": ca_cert}  # what kube-controller-manager publishes
                    _key_items(cm, data, "ConfigMap", directory, mode, where)
                elif "secret" in source:
                    sec = source["secret"]
                    _key_items(
                        sec, lookup("Secret", namespace, sec["name"]), "Secret", directory, mode, where
                    )
                elif "downwardAPI" in source:
                    _downward(pod, source["downwardAPI"].get("items") or [], directory, mode, where)
                else:
                    raise UnsupportedSpec(f"{where}: projected source {sorted(source)} is not supported")
        else:
            raise UnsupportedSpec(
                f"{where}: {sorted(set(volume) - {'name'})} is not supported by the node "
                "runner (hostPath, emptyDir, configMap, secret, downwardAPI, projected are)"
            )
    return dirs


def _downward(pod: Obj, items: list[Obj], directory: Path, mode: int, where: str) -> None:
    for item in items:
        if "fieldRef" not in item:
            raise UnsupportedSpec(
                f"{where}: downwardAPI item {item.get('path')!r}: only fieldRef is supported"
            )
        _write(
            directory,
            item["path"],
            field_value(pod, item["fieldRef"]["fieldPath"]).encode(),
            item.get("mode", mode),
        )


def decode_secret(secret: Obj) -> dict[str, bytes]:
    data = {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
    data.update({k: v.encode() for k, v in (secret.get("stringData") or {}).items()})
    return data
