"""How the agent finds the API server: client configuration, node name, API-server address.

``load_api_client(kubeconfig=None)``: the project's one kubeconfig loader
(``retina_preflight.core.kubeconfig``, shared with kubectl-retina, the operator and the preflight
checks): an explicit kubeconfig path, else ``$KUBECONFIG`` (colon-separated files are merged),
else the in-cluster service account, else ``~/.kube/config``. ``node_name()``: an explicit name,
else ``$NODE_NAME`` (the downward API's ``spec.nodeName``), else the host name.
``apiserver_endpoint(api_client)``: the API server's ``(ip, port)`` for the latency probes.
``RawCollection(api_client, path)``: list/watch and JSON-patch calls on one collection that hand
back the raw HTTP response (see its doc for why the generated API classes are not used).
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes
from kubernetes.client.exceptions import ApiException

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


#: Keyword arguments of a list/watch call -> query parameter (``_continue``: ``continue`` is a
#: Python keyword). The names are those of the generated API methods and ``watch.Watch``.
QUERY_PARAMETERS = {
    "allow_watch_bookmarks": "allowWatchBookmarks",
    "_continue": "continue",
    "field_selector": "fieldSelector",
    "label_selector": "labelSelector",
    "limit": "limit",
    "resource_version": "resourceVersion",
    "timeout_seconds": "timeoutSeconds",
    "watch": "watch",
}


class RawCollection:
    """List, watch and patch one collection of the API server, answering raw HTTP responses.

    ``RawCollection(api, "/api/v1/pods")`` is called like the generated
    ``CoreV1Api(api).list_pod_for_all_namespaces`` with ``_preload_content=False`` (the same
    keyword arguments, so ``watch.Watch().stream`` takes it), through the same ``ApiClient``
    (configuration, TLS, token refresh, connection pool). The generated API classes are not
    used because the agent never wants their models: importing ``CoreV1Api``, ``AppsV1Api`` and
    ``BatchV1Api`` alone costs the agent about 28 MiB (one pydantic-validated signature per
    method of every API in those modules, and the model classes they import), more than the
    endpoint cache for 10,000 pods.
    """

    def __init__(self, api_client: kubernetes.client.ApiClient, path: str) -> None:
        self.api_client = api_client
        self.path = path

    def __call__(self, **kwargs: Any) -> Any:
        timeout = kwargs.pop("_request_timeout", None)
        kwargs.pop("_preload_content", None)  # always raw: the caller parses the stream
        unknown = set(kwargs) - set(QUERY_PARAMETERS)
        if unknown:
            raise TypeError(f"{self.path}: unknown list parameters {sorted(unknown)}")
        query = [(QUERY_PARAMETERS[k], v) for k, v in kwargs.items() if v is not None]
        return self._request("GET", self.path, query, None, "application/json", timeout)

    def get(self, name: str, *, timeout: Any = None) -> dict:
        """One object of the collection, as the API server's JSON (a dict)."""
        response = self._request("GET", f"{self.path}/{name}", [], None, "application/json", timeout)
        try:
            return json.loads(response.data)
        finally:
            response.release_conn()

    def patch(self, name: str, subresource: str, patch: list[dict], *, timeout: Any = None) -> Any:
        """A JSON patch (RFC 6902) on ``<path>/<name>[/<subresource>]``; the raw response."""
        path = f"{self.path}/{name}" + (f"/{subresource}" if subresource else "")
        response = self._request("PATCH", path, [], patch, "application/json-patch+json", timeout)
        response.release_conn()
        return response

    def _request(
        self, method: str, path: str, query: list, body: Any, content_type: str, timeout: Any
    ) -> Any:
        """One call; a status outside 2xx raises ``ApiException`` (as the generated API does)."""
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        request = self.api_client.param_serialize(
            method=method,
            resource_path=path,
            query_params=query,
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self.api_client.call_api(*request, _request_timeout=timeout)
        if not 200 <= response.status <= 299:
            response.read()
            raise ApiException.from_response(http_resp=response, body=None, data=None)
        return response.response
