"""How the agent finds the API server: client configuration, node name, API-server address.

``load_api_client(kubeconfig=None)``: the project's one kubeconfig loader
(``retina_preflight.core.kubeconfig``, shared with kubectl-retina, the operator and the preflight
checks): an explicit kubeconfig path, else ``$KUBECONFIG`` (colon-separated files are merged),
else the in-cluster service account, else ``~/.kube/config``. ``node_name()``: an explicit name,
else ``$NODE_NAME`` (the downward API's ``spec.nodeName``), else the host name.
``apiserver_endpoint(api_client)``: the API server's ``(ip, port)`` for the latency probes.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

import kubernetes

from retina_preflight.core import kubeconfig as _kubeconfig

#: No way to reach the API server was found; the message says what was tried.
KubeConfigError = _kubeconfig.KubeconfigError


def load_api_client(kubeconfig: str | Path | None = None) -> kubernetes.client.ApiClient:
    """A ``kubernetes`` API client, configured as described in the module doc."""
    return _kubeconfig.load_api_client(str(kubeconfig) if kubeconfig else None)


def node_name(explicit: str | None = None) -> str:
    """This node's name: ``explicit``, else ``$NODE_NAME``, else the host name."""
    return explicit or os.environ.get("NODE_NAME") or socket.gethostname()


def apiserver_endpoint(api_client: kubernetes.client.ApiClient) -> tuple[str, int]:
    """The API server's address (a host name resolved to an IP, IPv4 first) and port."""
    url = urlsplit(api_client.configuration.host)
    if not url.hostname:
        raise KubeConfigError(f"the API server URL {api_client.configuration.host!r} has no host")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        return str(ipaddress.ip_address(url.hostname)), port
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(url.hostname, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise KubeConfigError(f"cannot resolve the API server host {url.hostname!r}: {exc}") from None
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    return infos[0][4][0], port
