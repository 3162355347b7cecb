"""A small JSON client for the API server, as the kubelet and the controllers use it.

Objects stay plain dicts (what the API sends), so status written back is exactly what a
``kubectl get -o yaml`` shows."""

from __future__ import annotations

from typing import Any

import requests

Obj = dict[str, Any]


class ApiClient:
    def __init__(self, server: str, token: str, *, verify: str | bool = True) -> None:
        self.server = server.rstrip("/")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.verify = verify  # per request: REQUESTS_CA_BUNDLE would override a session's verify

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return self.session.request(method, self.server + path, timeout=30, verify=self.verify, **kwargs)

    @staticmethod
    def _raise(resp: requests.Response, method: str, path: str) -> None:
        if resp.status_code >= 400:
            raise ApiFailure(resp.status_code, f"{method} {path}: {resp.status_code} {resp.text[:500]}")

    def get(self, path: str) -> Obj | None:
        resp = self._request("GET", path)
        if resp.status_code == 404:
            return None
        self._raise(resp, "GET", path)
        return resp.json()

    def list(self, path: str, **params: str) -> list[Obj]:
        resp = self._request("GET", path, params=params)
        self._raise(resp, "GET", path)
        return resp.json().get("items") or []

    def create(self, path: str, body: Obj) -> Obj:
        resp = self._request("POST", path, json=body)
        self._raise(resp, "POST", path)
        return resp.json()

    def patch(self, path: str, body: Obj) -> Obj | None:
        resp = self._request(
            "PATCH", path, json=body, headers={"Content-Type": "application/merge-patch+json"}
        )
        if resp.status_code == 404:
            return None
        self._raise(resp, "PATCH", path)
        return resp.json()

    def delete(self, path: str) -> None:
        resp = self._request("DELETE", path)
        if resp.status_code != 404:
            self._raise(resp, "DELETE", path)


class ApiFailure(RuntimeError):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def object_path(obj: Obj) -> str:
    """``/api/v1/namespaces/ns/pods/name`` of an object."""
    api_version, kind = obj["apiVersion"], obj["kind"]
    plural = {
        "Pod": "pods",
        "Job": "jobs",
        "DaemonSet": "daemonsets",
        "Deployment": "deployments",
        "ReplicaSet": "replicasets",
        "Node": "nodes",
    }[kind]
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    ns = obj["metadata"].get("namespace")
    return (
        f"{base}/namespaces/{ns}/{plural}/{obj['metadata']['name']}"
        if ns
        else f"{base}/{plural}/{obj['metadata']['name']}"
    )
