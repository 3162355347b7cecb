"""How the agent finds the API server: client configuration, node name, API-server address.

``load_api_client(kubeconfig=None)``: an explicit kubeconfig path first; else the in-cluster
service account (``KUBERNETES_SERVICE_HOST`` and the mounted token); else ``$KUBECONFIG``
(colon-separated files are merged) or ``~/.kube/config``. ``node_name()``: an explicit name,
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


class KubeConfigError(Exception):
    """No way to reach the API server was found; the message says what was tried."""


def load_api_client(kubeconfig: str | Path | None = None) -> kubernetes.client.ApiClient:
    """A ``kubernetes`` API client, configured as described in the module doc."""
    if kubeconfig:
        path = Path(kubeconfig).expanduser()
        if not path.is_file():
            raise KubeConfigError(f"kubeconfig {path} does not exist: give an existing file")
        return kubernetes.config.new_client_from_config(config_file=str(path))
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        configuration = kubernetes.client.Configuration()
        try:
            kubernetes.config.load_incluster_config(client_configuration=configuration)
        except kubernetes.config.ConfigException as exc:
            raise KubeConfigError(f"in-cluster configuration failed: {exc}") from None
        return kubernetes.client.ApiClient(configuration)
    candidates = os.environ.get("KUBECONFIG") or str(Path("~/.kube/config").expanduser())
    if not any(Path(p).is_file() for p in candidates.split(os.pathsep) if p):
        raise KubeConfigError("cannot reach the API server: not in a cluster (no KUBERNETES_SERVICE_HOST) "
                              f"and no kubeconfig at {candidates}; set KUBECONFIG or pass a kubeconfig")
    return kubernetes.config.new_client_from_config(config_file=candidates)


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
