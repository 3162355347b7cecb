"""A small, honest Kubernetes API emulator for tests: real HTTP, in-memory objects.

Why not kmock's ``KubernetesEmulator`` alone?  kmock 0.8 keeps objects in memory and serves
discovery, but it has no ``resourceVersion``, no label or field selectors, treats ``PUT`` like a
merge, recognises only ``watch=true`` (the ``kubernetes`` client sends ``watch=True``) and cannot
resume a watch or answer ``410 Gone``.  Those are exactly what clients and operators rely on, so
this module implements the API semantics itself on aiohttp (kmock's own server library), in the
shape of the real API server:

* discovery: ``/version``, ``/api``, ``/api/v1``, ``/apis``, ``/apis/<group>``, ``/apis/<group>/<version>``;
* built-in resources of core/v1, apps/v1, batch/v1, rbac/v1, apiextensions/v1 (+ events, leases),
  and custom resources of every CRD that is created (removed again when the CRD is deleted);
* create (``generateName``, ``dryRun``), get, list and watch with label selectors and field
  selectors (``metadata.name``, ``metadata.namespace``, ``spec.nodeName``, ``status.phase``, any
  dotted path), replace with optimistic concurrency, patch (JSON merge, strategic merge for
  built-ins, JSON patch, server-side apply treated as a merge), delete (finalizers,
  ``deletionTimestamp``, owner-reference garbage collection, namespace contents), delete collection;
* ``status`` subresources: the main resource ignores status changes, ``/status`` changes only status;
* watch streams that start from a ``resourceVersion``, send ``ADDED``/``DELETED`` when an object
  starts or stops matching a selector, and an ``ERROR`` event with code 410 (Expired) when the
  version is older than the retained history, as the real API server does;
* custom resources are validated against the CRD's ``openAPIV3Schema`` (422 naming the field);
  deleting a CRD leaves it ``Terminating`` (finalizer ``customresourcecleanup.apiextensions.k8s.io``)
  until every instance is gone: instances are deleted, those with finalizers wait for them;
* authentication and RBAC as kube-apiserver does them (:mod:`retina_lab.kube_auth`): bearer tokens
  (static users, ServiceAccount tokens from the TokenRequest API
  ``POST .../serviceaccounts/NAME/token``), Roles/ClusterRoles/bindings, 401 and 403 with the
  Kubernetes ``Status`` body, ``SelfSubjectAccessReview``/``SubjectAccessReview``/
  ``SelfSubjectReview`` (``kubectl auth can-i``/``whoami``).

Use::

    with KubeEmulator() as kube:
        kubernetes.config.load_kube_config(config_file=str(kube.kubeconfig_path))  # the admin
        ...
        kube.stop(); kube.start()    # same port, same state; clients reconnect

The default kubeconfig is the admin (group ``system:masters``).  Other identities:
``kube.kubeconfig_for_user("alice", groups=["dev"])`` and
``kube.kubeconfig_for_service_account("retina-system", "retina-agent")`` write kubeconfigs whose
requests RBAC judges; ``kube.apply(objects)`` creates or replaces objects (e.g. rendered RBAC).

Objects can be preloaded with :meth:`KubeEmulator.seed` and inspected with
:meth:`KubeEmulator.objects`.  There is no scheduler, kubelet or controller: tests play those
parts by patching status through the API.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import copy
import datetime
import json
import re
import secrets
import socket
import tempfile
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp.web
import jsonpatch
import yaml

from retina_agent.demo.agent_process import wait_for
from retina_lab import kube_auth, kube_tls

Obj = dict[str, Any]

#: Kubernetes version that ``/version`` reports (the newest one we claim to support).
SERVER_VERSION = {
    "major": "1",
    "minor": "31",
    "gitVersion": "v1.31.0-retina-emulator",
    "gitCommit": "0" * 40,
    "gitTreeState": "clean",
    "buildDate": "2024-08-13T00:00:00Z",
    "goVersion": "go1.22.5",
    "compiler": "gc",
    "platform": "linux/amd64",
}

_ALL_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


@dataclass(frozen=True)
class ResourceType:
    """One API resource, e.g. ``batch/v1 jobs``."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    short_names: tuple[str, ...] = ()
    status: bool = False  # has a status subresource
    builtin: bool = True  # strategic merge patch works only for built-ins
    schema: Mapping[str, Any] | None = field(default=None, compare=False, hash=False)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def singular(self) -> str:
        return self.kind.lower()


def _builtin_types() -> list[ResourceType]:
    def rt(
        gv: str,
        plural: str,
        kind: str,
        namespaced: bool = True,
        short: Iterable[str] = (),
        status: bool = False,
    ) -> ResourceType:
        group, _, version = gv.rpartition("/")
        return ResourceType(group, version, plural, kind, namespaced, tuple(short), status)

    return [
        rt("v1", "pods", "Pod", short=["po"], status=True),
        rt("v1", "nodes", "Node", namespaced=False, short=["no"], status=True),
        rt("v1", "namespaces", "Namespace", namespaced=False, short=["ns"], status=True),
        rt("v1", "services", "Service", short=["svc"], status=True),
        rt("v1", "endpoints", "Endpoints", short=["ep"]),
        rt("v1", "secrets", "Secret"),
        rt("v1", "configmaps", "ConfigMap", short=["cm"]),
        rt("v1", "serviceaccounts", "ServiceAccount", short=["sa"]),
        rt("v1", "persistentvolumeclaims", "PersistentVolumeClaim", short=["pvc"], status=True),
        rt("v1", "persistentvolumes", "PersistentVolume", namespaced=False, short=["pv"], status=True),
        rt("v1", "events", "Event", short=["ev"]),
        rt("apps/v1", "deployments", "Deployment", short=["deploy"], status=True),
        rt("apps/v1", "replicasets", "ReplicaSet", short=["rs"], status=True),
        rt("apps/v1", "daemonsets", "DaemonSet", short=["ds"], status=True),
        rt("apps/v1", "statefulsets", "StatefulSet", short=["sts"], status=True),
        rt("batch/v1", "jobs", "Job", status=True),
        rt("batch/v1", "cronjobs", "CronJob", short=["cj"], status=True),
        rt("rbac.authorization.k8s.io/v1", "roles", "Role"),
        rt("rbac.authorization.k8s.io/v1", "rolebindings", "RoleBinding"),
        rt("rbac.authorization.k8s.io/v1", "clusterroles", "ClusterRole", namespaced=False),
        rt("rbac.authorization.k8s.io/v1", "clusterrolebindings", "ClusterRoleBinding", namespaced=False),
        rt(
            "apiextensions.k8s.io/v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            namespaced=False,
            short=["crd", "crds"],
            status=True,
        ),
        rt("coordination.k8s.io/v1", "leases", "Lease"),
        rt("events.k8s.io/v1", "events", "Event", short=["ev"]),
    ]


#: Create-only review resources: answered from the request, never stored (kind by plural).
_REVIEWS = {
    ("authorization.k8s.io", "selfsubjectaccessreviews"): "SelfSubjectAccessReview",
    ("authorization.k8s.io", "subjectaccessreviews"): "SubjectAccessReview",
    ("authentication.k8s.io", "selfsubjectreviews"): "SelfSubjectReview",
}
_CRD_FINALIZER = "customresourcecleanup.apiextensions.k8s.io"
#: The admin identity of the default kubeconfig.
ADMIN = kube_auth.UserInfo("kubernetes-admin", (kube_auth.MASTERS,))


class ApiError(Exception):
    """An error answered as a Kubernetes ``Status`` object."""

    def __init__(self, code: int, reason: str, message: str, details: Obj | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details or {}

    def status(self) -> Obj:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": self.details,
            "code": self.code,
        }


def _not_found(rt: ResourceType, name: str) -> ApiError:
    return ApiError(
        404,
        "NotFound",
        f'{rt.plural}{"." + rt.group if rt.group else ""} "{name}" not found',
        {"name": name, "group": rt.group, "kind": rt.plural},
    )


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------------------------
# Selectors
# ---------------------------------------------------------------------------------------------

_SET_RE = re.compile(r"^\s*(!?)([A-Za-z0-9_./-]+)\s*(?:(in|notin)\s*\(([^)]*)\)|(==|=|!=)\s*([^,\s]*))?\s*$")


def _split_selector(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p for p in (p.strip() for p in parts) if p]


def label_selector_matches(selector: str | None, labels: Mapping[str, str] | None) -> bool:
    """Does a label selector string (``a=b,c!=d,e in (x,y),f,!g``) match these labels?"""
    labels = labels or {}
    for term in _split_selector(selector or ""):
        m = _SET_RE.match(term)
        if not m:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {term!r}")
        neg, key, setop, values, op, value = m.groups()
        if setop:
            choices = {v.strip() for v in values.split(",") if v.strip()}
            ok = labels.get(key) in choices if setop == "in" else labels.get(key) not in choices
        elif op:
            ok = labels.get(key) == value if op in ("=", "==") else labels.get(key) != value
        else:
            ok = (key in labels) != bool(neg)
        if not ok:
            return False
    return True


def _dotted(obj: Obj, path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    return "" if cur is None else str(cur).lower() if isinstance(cur, bool) else str(cur)


def field_selector_matches(selector: str | None, obj: Obj) -> bool:
    """Does a field selector (``spec.nodeName=n1,metadata.name!=x``) match this object?"""
    for term in _split_selector(selector or ""):
        m = re.match(r"^([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*)$", term)
        if not m:
            raise ApiError(400, "BadRequest", f"invalid field selector: {term!r}")
        key, op, value = m.groups()
        actual = _dotted(obj, key)
        if (actual == value) != (op in ("=", "==")):
            return False
    return True


# ---------------------------------------------------------------------------------------------
# Patches
# ---------------------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


_MERGE_KEYS = ("name", "type", "containerPort", "mountPath", "ip", "devicePath", "port")


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Good-enough strategic merge: like a merge patch, but lists of objects are merged by key.

    The merge key of a list is the first of ``name``, ``type``, ``containerPort``, ``mountPath``...
    that every element of both lists has (containers, env, volumes, conditions, ports).
    ``{"$patch": "delete", <key>: ...}`` removes an element; ``$patch: replace`` on a dict replaces.
    """
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and isinstance(result.get(key), list):
            result[key] = _merge_list(result[key], value)
        else:
            result[key] = strategic_merge_patch(result.get(key), value)
    return result


def _merge_list(old: list[Any], new: list[Any]) -> list[Any]:
    items = old + new
    if not items or not all(isinstance(i, dict) for i in items):
        return [i for i in copy.deepcopy(new) if not (isinstance(i, dict) and i.get("$patch"))]
    key = next((k for k in _MERGE_KEYS if all(k in i for i in items)), None)
    if key is None:
        return copy.deepcopy(new)
    merged = copy.deepcopy(old)
    for item in new:
        index = next((n for n, o in enumerate(merged) if o[key] == item[key]), None)
        if item.get("$patch") == "delete":
            if index is not None:
                merged.pop(index)
        elif index is None:
            merged.append(copy.deepcopy(item))
        else:
            merged[index] = strategic_merge_patch(merged[index], item)
    return merged


# ---------------------------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------------------------

Key = tuple[str, str, str, str]  # group, plural, namespace ("" if cluster-scoped), name
SubresourceHandler = Callable[
    [aiohttp.web.Request, str, str, kube_auth.UserInfo], Awaitable[aiohttp.web.StreamResponse]
]


@dataclass
class _Event:
    rv: int
    type: str
    rt_key: tuple[str, str]  # group, plural
    obj: Obj
    old: Obj | None  # the object before a modification (for selector transitions)


class HeldRequests:
    """Requests :meth:`KubeEmulator.held` keeps waiting (see there)."""

    def __init__(self, path_prefix: str, kube: KubeEmulator) -> None:
        self.path_prefix = path_prefix
        self._kube = kube
        self._released = threading.Event()
        self._waiters: list[asyncio.Future] = []
        self.count = 0  # requests that arrived while held

    async def wait(self) -> None:
        if self._released.is_set():
            return
        self.count += 1
        future = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        if self._released.is_set():  # released between the check and the append
            return
        await future

    def wait_requests(self, n: int = 1, timeout: float = 30) -> None:
        """Block until ``n`` requests are being held; TimeoutError naming the path otherwise."""
        wait_for(lambda: self.count >= n, timeout, 0.02, f"{n} held requests to {self.path_prefix}")

    def release(self) -> None:
        """Let the held requests (and every later one) through."""
        self._released.set()
        loop = self._kube._loop
        if loop is None or loop.is_closed():
            return
        for future in list(self._waiters):
            loop.call_soon_threadsafe(lambda f=future: f.done() or f.set_result(None))


class KubeEmulator:
    """An in-memory Kubernetes API server on ``127.0.0.1`` served from a background thread."""

    def __init__(
        self,
        *,
        port: int = 0,
        history_limit: int = 2000,
        namespaces: Iterable[str] = ("default", "kube-system", "kube-public"),
        workdir: str | Path | None = None,
        anonymous_auth: bool = True,
        tls: bool = True,
    ) -> None:
        self._types: dict[tuple[str, str, str], ResourceType] = {}
        for t in _builtin_types():
            self._register(t)
        self._objects: dict[Key, Obj] = {}
        self._history: collections.deque[_Event] = collections.deque(maxlen=history_limit)
        self._rv = 1
        self._lock = threading.RLock()
        self._port = port
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: aiohttp.web.AppRunner | None = None
        self._changed: asyncio.Event | None = None
        self._stopping = False
        self._kubeconfigs: list[tuple[Path, str, str]] = []
        self._own_dir = None if workdir else tempfile.TemporaryDirectory(prefix="kube-emulator-")
        self._dir = Path(workdir or self._own_dir.name)  # type: ignore[union-attr]
        self._certs = kube_tls.make_serving_certs(self._dir / "pki") if tls else None
        self._subresources: dict[tuple[str, str, str], SubresourceHandler] = {}
        #: Every request RBAC refused (user, method, path, message): tests assert a component
        #: running with its production identity met none.
        self.refusals: list[dict[str, str]] = []
        self._holds: list[HeldRequests] = []
        self.auth = kube_auth.Authenticator(self._lookup, anonymous=anonymous_auth)
        #: The admin's bearer token (group ``system:masters``), used by :attr:`kubeconfig_path`.
        self.token = self.auth.add_static_token(ADMIN)
        self.seed([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}} for ns in namespaces])
        self.seed(kube_auth.bootstrap_rbac())
        for ns in namespaces:  # the ServiceAccount controller's "default" in every namespace
            self.seed(
                [
                    {
                        "apiVersion": "v1",
                        "kind": "ServiceAccount",
                        "metadata": {"name": "default", "namespace": ns},
                    }
                ]
            )

    # -- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> KubeEmulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._own_dir is not None:
            self._own_dir.cleanup()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"{'https' if self._certs else 'http'}://127.0.0.1:{self._port}"

    @property
    def ca_path(self) -> Path | None:
        """The PEM file of the CA that signed the serving certificate (``ca.crt`` for pods;
        ``requests.get(kube.url + ..., verify=kube.ca_path)``); None when serving plain HTTP."""
        return self._certs.ca_cert if self._certs else None

    @property
    def running(self) -> bool:
        return self._thread is not None

    @property
    def kubeconfig_path(self) -> Path:
        return self._dir / "kubeconfig"

    def start(self, timeout: float = 10) -> None:
        """Serve (again) on the same port; the state is kept across stop/start."""
        if self._thread is not None:
            return
        ready = threading.Event()
        errors: list[BaseException] = []
        self._stopping = False

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._serve_start())
            except BaseException as exc:  # reported to the caller of start()
                errors.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._serve_stop())
            loop.close()

        self._thread = threading.Thread(target=serve, name="kube-emulator", daemon=True)
        self._thread.start()
        if not ready.wait(timeout) or errors:
            self._thread.join(1)
            self._thread = None
            raise RuntimeError(f"kube emulator did not start on port {self._port}: {errors}")
        self._write_kubeconfig()

    def stop(self, timeout: float = 10) -> None:
        """Stop serving; open watch streams end, connections are closed. The state stays."""
        if self._thread is None or self._loop is None:
            return
        self._stopping = True
        self._loop.call_soon_threadsafe(self._wake)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        self._thread = None
        self._loop = None

    async def _serve_start(self) -> None:
        self._changed = asyncio.Event()
        app = aiohttp.web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = aiohttp.web.AppRunner(app, shutdown_timeout=1, handle_signals=False, access_log=None)
        await self._runner.setup()
        ssl_context = self._certs.server_context() if self._certs else None
        site = aiohttp.web.TCPSite(
            self._runner, "127.0.0.1", self._port, reuse_address=True, ssl_context=ssl_context
        )
        await site.start()
        sock: socket.socket = site._server.sockets[0]  # type: ignore[union-attr]
        self._port = sock.getsockname()[1]

    async def _serve_stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _write_kubeconfig(self) -> None:
        self.write_kubeconfig(self.kubeconfig_path, self.token)
        for path, token, namespace in self._kubeconfigs:  # the port may have changed
            self.write_kubeconfig(path, token, namespace=namespace)

    def write_kubeconfig(
        self, path: str | Path, token: str, *, namespace: str = "default", user: str = "emulator"
    ) -> Path:
        """Write a kubeconfig for this server that logs in with ``token``; returns its path."""
        path = Path(path)
        cluster: Obj = {"server": self.url}
        if self._certs:  # embedded, so that a copied kubeconfig still works
            ca = self._certs.ca_cert.read_bytes()
            cluster["certificate-authority-data"] = base64.b64encode(ca).decode()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "preferences": {},
            "clusters": [{"name": "emulator", "cluster": cluster}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [
                {"name": "emulator", "context": {"cluster": "emulator", "user": user, "namespace": namespace}}
            ],
            "current-context": "emulator",
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    # -- identities --------------------------------------------------------------------------------

    def user_token(self, name: str, groups: Iterable[str] = ()) -> str:
        """A static bearer token for user ``name`` in ``groups`` (plus ``system:authenticated``)."""
        return self.auth.add_static_token(kube_auth.UserInfo(name, tuple(groups)))

    def service_account_token(
        self,
        namespace: str,
        name: str,
        *,
        expiration_seconds: int = 3600,
        audiences: Iterable[str] = (),
        bound_pod: str | None = None,
    ) -> str:
        """A token for ServiceAccount ``namespace/name`` as the TokenRequest API issues it (the
        ServiceAccount must exist; the token dies with it, or with the pod it is bound to)."""
        with self._lock:
            sa = copy.deepcopy(self._get(self._types[("", "v1", "serviceaccounts")], namespace, name))
            bound = None
            if bound_pod is not None:
                pod = self._get(self._types[("", "v1", "pods")], namespace, bound_pod)
                bound = {"kind": "Pod", "name": bound_pod, "uid": pod["metadata"]["uid"]}
        token, _ = self.auth.issue_service_account_token(
            sa, audiences=audiences, expiration_seconds=expiration_seconds, bound_object=bound
        )
        return token

    def kubeconfig_for_user(
        self,
        name: str,
        groups: Iterable[str] = (),
        *,
        namespace: str = "default",
        path: str | Path | None = None,
    ) -> Path:
        """A kubeconfig (kept up to date across restarts) that logs in as user ``name``."""
        path = Path(path or self._dir / f"kubeconfig-user-{_file_safe(name)}-{secrets.token_hex(3)}")
        return self._remember_kubeconfig(path, self.user_token(name, groups), namespace)

    def kubeconfig_for_service_account(
        self, namespace: str, name: str, *, path: str | Path | None = None, expiration_seconds: int = 86400
    ) -> Path:
        """A kubeconfig that logs in with a TokenRequest token of ServiceAccount ``namespace/name``
        (its context's namespace is the ServiceAccount's, as in a pod)."""
        path = Path(path) if path else self._dir / f"kubeconfig-sa-{namespace}-{name}-{secrets.token_hex(3)}"
        token = self.service_account_token(namespace, name, expiration_seconds=expiration_seconds)
        return self._remember_kubeconfig(path, token, namespace)

    def _remember_kubeconfig(self, path: Path, token: str, namespace: str) -> Path:
        self._kubeconfigs.append((path, token, namespace))
        return self.write_kubeconfig(path, token, namespace=namespace)

    def can(
        self,
        user: kube_auth.UserInfo,
        verb: str,
        resource: str,
        *,
        group: str = "",
        namespace: str = "",
        name: str = "",
        subresource: str = "",
    ) -> bool:
        """Would RBAC allow this (a SubjectAccessReview without HTTP)?"""
        info = kube_auth.RequestInfo(verb, "", True, group, "", resource, subresource, namespace, name)
        with self._lock:
            return kube_auth.authorize(user, info, self._rbac_state())

    def add_subresource(self, group: str, plural: str, subresource: str, handler: SubresourceHandler) -> None:
        """Serve ``.../{plural}/{name}/{subresource}`` (e.g. ``pods/log``) with ``handler(request,
        namespace, name, user)`` after authentication and RBAC (verb from the method, as for any
        request); the handler returns an ``aiohttp.web.StreamResponse`` or raises :class:`ApiError`."""
        self._subresources[(group, plural, subresource)] = handler

    # -- helpers for tests -----------------------------------------------------------------------
    @contextlib.contextmanager
    def held(self, path_prefix: str) -> Iterator[HeldRequests]:
        """Hold every request whose path starts with ``path_prefix`` (e.g. a resource's list)
        until the block ends or ``release()``: a slow API server, as a component starting
        against a loaded control plane meets it. Other requests are served meanwhile."""
        hold = HeldRequests(path_prefix, self)
        self._holds.append(hold)
        try:
            yield hold
        finally:
            hold.release()
            self._holds.remove(hold)

    def seed(self, objects: Iterable[Obj]) -> list[Obj]:
        """Store objects as they are (status included), as if they had always been there."""
        stored = []
        for obj in objects:
            rt = self.resource_for(obj.get("apiVersion", ""), obj.get("kind", ""))
            ns = obj.get("metadata", {}).get("namespace", "default") if rt.namespaced else ""
            stored.append(self._create(rt, ns, copy.deepcopy(obj), keep_status=True))
        return stored

    def apply(self, objects: Iterable[Obj]) -> list[Obj]:
        """Create each object, or replace it (status kept) when it exists: ``kubectl apply`` as the
        admin, without HTTP.  Use it to load rendered manifests (RBAC, ServiceAccounts, CRDs)."""
        stored = []
        for obj in objects:
            rt = self.resource_for(obj.get("apiVersion", ""), obj.get("kind", ""))
            ns = obj.get("metadata", {}).get("namespace", "default") if rt.namespaced else ""
            name = obj.get("metadata", {}).get("name", "")
            with self._lock:
                exists = (rt.group, rt.plural, ns, name) in self._objects
                if exists:
                    new = copy.deepcopy(obj)
                    new.setdefault("metadata", {}).pop("resourceVersion", None)
                    stored.append(self._update(rt, ns, name, new, None, check_rv=False))
                else:
                    stored.append(self._create(rt, ns, copy.deepcopy(obj), keep_status=True))
        return stored

    def objects(self, kind: str, namespace: str | None = None) -> list[Obj]:
        """Copies of the stored objects of a kind (``"Job"``, ``"jobs"`` or ``"batch/v1/jobs"``)."""
        types = [
            t
            for t in self._types.values()
            if kind in (t.kind, t.plural, f"{t.api_version}/{t.plural}", f"{t.api_version}/{t.kind}")
        ]
        if not types:
            raise KeyError(f"unknown kind {kind!r}")
        keys = {(t.group, t.plural) for t in types}
        with self._lock:
            found = [
                copy.deepcopy(o)
                for (g, p, ns, _), o in sorted(self._objects.items())
                if (g, p) in keys and (namespace is None or ns == namespace)
            ]
        return found

    def resource_for(self, api_version: str, kind: str) -> ResourceType:
        group, _, version = api_version.rpartition("/")
        for t in self._types.values():
            if t.group == group and t.version == version and t.kind == kind:
                return t
        raise KeyError(f"no resource for apiVersion={api_version!r} kind={kind!r}")

    def set_status(self, kind: str, namespace: str | None, name: str, status: Obj) -> Obj:
        """Merge ``status`` into an object, as a controller would (emits a watch event)."""
        t = next(t for t in self._types.values() if kind in (t.kind, t.plural))
        with self._lock:
            key = (t.group, t.plural, namespace or "", name)
            if key not in self._objects:
                raise _not_found(t, name)
            new = copy.deepcopy(self._objects[key])
            new["status"] = merge_patch(new.get("status") or {}, status)
            return self._store(t, new, "MODIFIED")

    def compact(self) -> None:
        """Forget the watch history, as etcd compaction does: older versions now get 410."""
        with self._lock:
            self._history.clear()

    def _lookup(self, plural: str, namespace: str, name: str) -> Obj | None:
        """A core/v1 object (for the token authenticator: does the ServiceAccount/pod still exist?)."""
        with self._lock:
            return self._objects.get(("", plural, namespace, name))

    def _rbac_state(self) -> kube_auth.RBACState:
        """The RBAC objects now (called under the lock; objects are not copied: read only)."""
        group = "rbac.authorization.k8s.io"
        roles, cluster_roles, bindings, cluster_bindings = {}, {}, [], []
        for (g, plural, ns, name), obj in self._objects.items():
            if g != group:
                continue
            if plural == "roles":
                roles[(ns, name)] = obj
            elif plural == "clusterroles":
                cluster_roles[name] = obj
            elif plural == "rolebindings":
                bindings.append(obj)
            elif plural == "clusterrolebindings":
                cluster_bindings.append(obj)
        return kube_auth.RBACState(roles, cluster_roles, bindings, cluster_bindings)

    # -- resource types ------------------------------------------------------------------------

    def _register(self, t: ResourceType) -> None:
        self._types[(t.group, t.version, t.plural)] = t

    def _crd_changed(self, crd: Obj, deleted: bool) -> None:
        spec = crd.get("spec", {})
        group, names = spec.get("group", ""), spec.get("names", {})
        for ver in spec.get("versions", []):
            key = (group, ver.get("name", ""), names.get("plural", ""))
            if deleted:
                self._types.pop(key, None)
                continue
            if not ver.get("served", True):
                continue
            self._register(
                ResourceType(
                    group,
                    ver["name"],
                    names["plural"],
                    names["kind"],
                    namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                    short_names=tuple(names.get("shortNames", [])),
                    status="status" in (ver.get("subresources") or {}),
                    builtin=False,
                    schema=(ver.get("schema") or {}).get("openAPIV3Schema"),
                )
            )
        if deleted:
            plural = names.get("plural", "")
            for key in [k for k in self._objects if k[0] == group and k[1] == plural]:
                del self._objects[key]

    # -- core operations (synchronous, under the lock) -------------------------------------------

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _store(self, t: ResourceType, obj: Obj, event: str, old: Obj | None = None) -> Obj:
        meta = obj["metadata"]
        key = (t.group, t.plural, meta.get("namespace", ""), meta["name"])
        previous = self._objects.get(key)
        meta["resourceVersion"] = self._next_rv()
        if event == "DELETED":
            self._objects.pop(key, None)
        else:
            self._objects[key] = obj
        self._history.append(
            _Event(
                int(meta["resourceVersion"]),
                event,
                (t.group, t.plural),
                copy.deepcopy(obj),
                copy.deepcopy(old or previous),
            )
        )
        if t.plural == "customresourcedefinitions" and t.group == "apiextensions.k8s.io":
            self._crd_changed(obj, deleted=event == "DELETED")
        self._notify()
        return copy.deepcopy(obj)

    def _notify(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        if self._changed is not None:
            old, self._changed = self._changed, asyncio.Event()
            old.set()

    def _check_namespace(self, t: ResourceType, ns: str) -> None:
        if t.namespaced and ("", "namespaces", "", ns) not in self._objects:
            raise ApiError(
                404, "NotFound", f'namespaces "{ns}" not found', {"name": ns, "kind": "namespaces"}
            )

    def _validate(self, t: ResourceType, obj: Obj) -> None:
        name = obj.get("metadata", {}).get("name", "")
        if t.group == "rbac.authorization.k8s.io":  # RBAC names are path segments ("system:discovery")
            valid = bool(name) and name not in (".", "..") and not re.search(r"[/%]", name)
        else:
            valid = bool(re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", name or ""))
        if not valid:
            raise ApiError(
                422,
                "Invalid",
                f'{t.kind} "{name}" is invalid: metadata.name: Invalid value: '
                f'"{name}": a lowercase RFC 1123 subdomain must consist of lower case '
                "alphanumeric characters, '-' or '.'",
                {"name": name, "kind": t.kind, "causes": [{"field": "metadata.name"}]},
            )
        if t.schema:
            from retina_lab.manifests import schema_errors  # local import: optional dependency

            errors = schema_errors(obj, t.schema)
            if errors:
                message = f'{t.kind}.{t.group} "{name}" is invalid: ' + "; ".join(errors)
                raise ApiError(
                    422,
                    "Invalid",
                    message,
                    {
                        "name": name,
                        "group": t.group,
                        "kind": t.kind,
                        "causes": [{"message": e} for e in errors],
                    },
                )

    def _create(
        self, t: ResourceType, ns: str, obj: Obj, *, keep_status: bool = False, dry_run: bool = False
    ) -> Obj:
        with self._lock:
            meta = obj.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
            if t.namespaced:
                if meta.get("namespace") and meta["namespace"] != ns:
                    raise ApiError(
                        400,
                        "BadRequest",
                        "the namespace of the provided object does not "
                        "match the namespace sent on the request",
                    )
                meta["namespace"] = ns
                self._check_namespace(t, ns)
            else:
                meta.pop("namespace", None)
            obj["apiVersion"], obj["kind"] = t.api_version, t.kind
            if not t.builtin and self._terminating_crd(t):
                raise ApiError(
                    405,
                    "MethodNotAllowed",
                    "create not allowed while custom resource definition is terminating",
                )
            if t.status and not keep_status:
                obj.pop("status", None)
            self._validate(t, obj)
            key = (t.group, t.plural, ns if t.namespaced else "", meta["name"])
            if key in self._objects:
                raise ApiError(
                    409,
                    "AlreadyExists",
                    f'{t.plural} "{meta["name"]}" already exists',
                    {"name": meta["name"], "group": t.group, "kind": t.plural},
                )
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", _now())
            meta["generation"] = 1
            if dry_run:
                return copy.deepcopy(obj)
            return self._store(t, obj, "ADDED")

    def _get(self, t: ResourceType, ns: str, name: str) -> Obj:
        obj = self._objects.get((t.group, t.plural, ns if t.namespaced else "", name))
        if obj is None:
            raise _not_found(t, name)
        return obj

    def _update(
        self,
        t: ResourceType,
        ns: str,
        name: str,
        new: Obj,
        sub: str | None,
        check_rv: bool = True,
        dry_run: bool = False,
    ) -> Obj:
        with self._lock:
            old = self._get(t, ns, name)
            rv = new.get("metadata", {}).get("resourceVersion")
            if check_rv and rv and rv != old["metadata"]["resourceVersion"]:
                raise ApiError(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {t.plural} "{name}": '
                    "the object has been modified; please apply your changes to the latest "
                    "version and try again",
                    {"name": name, "kind": t.plural},
                )
            if sub == "status":
                result = copy.deepcopy(old)
                if "status" in new:
                    result["status"] = new["status"]
                else:
                    result.pop("status", None)
            else:
                result = copy.deepcopy(new)
                if t.status:
                    if "status" in old:
                        result["status"] = copy.deepcopy(old["status"])
                    else:
                        result.pop("status", None)
                meta = result.setdefault("metadata", {})
                for k in ("uid", "creationTimestamp", "namespace", "name", "deletionTimestamp", "generation"):
                    if k in old["metadata"]:
                        meta[k] = old["metadata"][k]
                    else:
                        meta.pop(k, None)
            result["apiVersion"], result["kind"] = t.api_version, t.kind
            self._validate(t, result)
            if _spec_part(result) != _spec_part(old):
                result["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
            result["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
            if result == old or dry_run:
                return copy.deepcopy(result)
            meta = result["metadata"]
            if meta.get("deletionTimestamp") and not meta.get("finalizers"):
                return self._delete_now(t, result)
            return self._store(t, result, "MODIFIED", old=old)

    def _delete(
        self, t: ResourceType, ns: str, name: str, orphan: bool = False, dry_run: bool = False
    ) -> Obj:
        with self._lock:
            obj = copy.deepcopy(self._get(t, ns, name))
            if dry_run:
                return obj
            if (t.group, t.plural) == ("apiextensions.k8s.io", "customresourcedefinitions"):
                return self._delete_crd(t, obj)
            if obj["metadata"].get("finalizers"):
                if not obj["metadata"].get("deletionTimestamp"):
                    obj["metadata"]["deletionTimestamp"] = _now()
                    return self._store(t, obj, "MODIFIED")
                return obj
            return self._delete_now(t, obj, orphan)

    def _delete_crd(self, crd_type: ResourceType, crd: Obj) -> Obj:
        """Delete a CRD as apiextensions-apiserver does: it turns Terminating (finalizer
        ``customresourcecleanup...``, condition ``Terminating``), its instances are deleted, and
        it goes only once none is left -- instances with finalizers keep it Terminating."""
        meta = crd["metadata"]
        if not meta.get("deletionTimestamp"):
            meta["deletionTimestamp"] = _now()
            if _CRD_FINALIZER not in meta.setdefault("finalizers", []):
                meta["finalizers"].append(_CRD_FINALIZER)
            status = crd.setdefault("status", {})
            conditions = [c for c in status.get("conditions") or [] if c.get("type") != "Terminating"]
            status["conditions"] = [
                *conditions,
                {
                    "type": "Terminating",
                    "status": "True",
                    "lastTransitionTime": _now(),
                    "reason": "InstanceDeletionInProgress",
                    "message": "CustomResource deletion is in progress",
                },
            ]
            crd = self._store(crd_type, crd, "MODIFIED")
            spec = crd.get("spec", {})
            group, plural = spec.get("group", ""), spec.get("names", {}).get("plural", "")
            instance_type = next(
                (x for x in self._types.values() if (x.group, x.plural) == (group, plural)), None
            )
            if instance_type is not None:
                for key in [k for k in self._objects if k[:2] == (group, plural)]:
                    with contextlib.suppress(ApiError):
                        self._delete(instance_type, key[2], key[3])
        return self._finish_crd(crd["metadata"]["name"]) or crd

    def _finish_crd(self, crd_name: str) -> Obj | None:
        """Remove a Terminating CRD's cleanup finalizer once it has no instances left."""
        crd_type = self._types[("apiextensions.k8s.io", "v1", "customresourcedefinitions")]
        crd = self._objects.get(("apiextensions.k8s.io", "customresourcedefinitions", "", crd_name))
        if crd is None or not crd["metadata"].get("deletionTimestamp"):
            return None
        spec = crd.get("spec", {})
        instances = (spec.get("group", ""), spec.get("names", {}).get("plural", ""))
        if any(k[:2] == instances for k in self._objects):
            return None
        crd = copy.deepcopy(crd)
        meta = crd["metadata"]
        meta["finalizers"] = [f for f in meta.get("finalizers") or [] if f != _CRD_FINALIZER]
        if crd["metadata"]["finalizers"]:
            return self._store(crd_type, crd, "MODIFIED")
        return self._delete_now(crd_type, crd)

    def _terminating_crd(self, t: ResourceType) -> bool:
        key = ("apiextensions.k8s.io", "customresourcedefinitions", "", f"{t.plural}.{t.group}")
        crd = self._objects.get(key)
        return crd is not None and bool(crd["metadata"].get("deletionTimestamp"))

    def _delete_now(self, t: ResourceType, obj: Obj, orphan: bool = False) -> Obj:
        gone = self._store(t, obj, "DELETED")
        if not t.builtin:
            self._finish_crd(f"{t.plural}.{t.group}")
        uid = obj["metadata"].get("uid")
        if t.plural == "namespaces" and not t.group:
            dependents = [k for k in self._objects if k[2] == obj["metadata"]["name"]]
        elif orphan:
            dependents = []
        else:  # the garbage collector: objects owned by the deleted one
            dependents = [
                k
                for k, o in self._objects.items()
                if any(r.get("uid") == uid for r in o["metadata"].get("ownerReferences", []))
            ]
        for key in dependents:
            dep = self._objects.get(key)
            dep_type = next((x for x in self._types.values() if (x.group, x.plural) == key[:2]), None)
            if dep is not None and dep_type is not None:
                with contextlib.suppress(ApiError):
                    self._delete(dep_type, key[2], key[3])
        return gone

    def _list(self, t: ResourceType, ns: str | None, labels: str | None, fields: str | None) -> list[Obj]:
        with self._lock:
            return [
                copy.deepcopy(o)
                for (g, p, ons, _), o in sorted(self._objects.items())
                if (g, p) == (t.group, t.plural)
                and (ns is None or ons == ns)
                and label_selector_matches(labels, o["metadata"].get("labels"))
                and field_selector_matches(fields, o)
            ]

    # -- HTTP ------------------------------------------------------------------------------------

    async def _handle(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        for hold in list(self._holds):
            if request.path.startswith(hold.path_prefix):
                await hold.wait()
        try:
            user = requester = self.auth.authenticate(request.headers.get("Authorization"))
        except kube_auth.Unauthorized:
            return aiohttp.web.json_response(kube_auth.UNAUTHORIZED_STATUS, status=401)
        try:
            user, checks = kube_auth.impersonation_requests(user, request.headers)
        except ValueError as exc:
            return aiohttp.web.json_response(ApiError(400, "BadRequest", str(exc)).status(), status=400)
        for check in checks:  # the requester must be allowed to impersonate, as kube-apiserver checks
            with self._lock:
                allowed = kube_auth.authorize(requester, check, self._rbac_state())
            if not allowed:
                return aiohttp.web.json_response(kube_auth.forbidden_status(requester, check), status=403)
        info = kube_auth.request_info(request.method, request.path, request.query_string)
        with self._lock:
            allowed = kube_auth.authorize(user, info, self._rbac_state())
        if not allowed:
            status = kube_auth.forbidden_status(user, info)
            self.refusals.append(
                {
                    "user": user.name,
                    "method": request.method,
                    "path": request.path_qs,
                    "message": status["message"],
                }
            )
            return aiohttp.web.json_response(status, status=403)
        try:
            return await self._route(request, user)
        except ApiError as exc:
            return aiohttp.web.json_response(exc.status(), status=exc.code)
        except (json.JSONDecodeError, yaml.YAMLError, jsonpatch.JsonPatchException) as exc:
            return aiohttp.web.json_response(ApiError(400, "BadRequest", str(exc)).status(), status=400)

    async def _route(
        self, request: aiohttp.web.Request, user: kube_auth.UserInfo
    ) -> aiohttp.web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        method = request.method
        if method == "GET" and parts in (["version"], ["version", ""]):
            return aiohttp.web.json_response(SERVER_VERSION)
        if method == "GET" and parts in (["healthz"], ["readyz"], ["livez"]):
            return aiohttp.web.Response(text="ok")
        if parts == ["api"]:
            return aiohttp.web.json_response(
                {
                    "kind": "APIVersions",
                    "versions": ["v1"],
                    "serverAddressByClientCIDRs": [
                        {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{self._port}"}
                    ],
                }
            )
        if parts == ["apis"]:
            return aiohttp.web.json_response(self._group_list())
        if len(parts) == 2 and parts[0] == "apis":
            group = next((g for g in self._group_list()["groups"] if g["name"] == parts[1]), None)
            if group is None:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return aiohttp.web.json_response({"kind": "APIGroup", "apiVersion": "v1", **group})
        if parts[:1] == ["api"] and len(parts) >= 2:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if not rest:
            return aiohttp.web.json_response(self._resource_list(group, version))
        if (group, rest[0]) in _REVIEWS and len(rest) == 1:
            if method != "POST":
                raise ApiError(405, "MethodNotAllowed", f"{rest[0]} supports only create")
            review = self._review(group, version, rest[0], await request.json(), user)
            return aiohttp.web.json_response(review, status=201)

        ns: str | None = None
        if (
            len(rest) >= 3
            and rest[0] == "namespaces"
            and (t0 := self._types.get((group, version, rest[2]))) is not None
            and t0.namespaced
        ):
            ns, rest = rest[1], rest[2:]
        t = self._types.get((group, version, rest[0]))
        if t is None or len(rest) > 3 or (ns is not None) != t.namespaced and len(rest) > 1:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub is not None and (t.group, t.plural, sub) in self._subresources:
            with self._lock:
                self._get(t, ns or "", name or "")  # 404 for a missing object, as for any subresource
            return await self._subresources[(t.group, t.plural, sub)](request, ns or "", name or "", user)
        if sub == "token" and (t.group, t.plural) == ("", "serviceaccounts") and method == "POST":
            return aiohttp.web.json_response(
                self._token_request(ns or "", name or "", await request.json()), status=201
            )
        if sub is not None and (sub != "status" or not t.status):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return await self._resource_request(request, t, ns, name, sub)

    def _token_request(self, namespace: str, name: str, body: Obj) -> Obj:
        """The TokenRequest API: a bound ServiceAccount token (what the kubelet projects into pods)."""
        spec = body.get("spec") or {}
        expiration = int(spec.get("expirationSeconds") or 3600)
        if expiration < 600:
            raise ApiError(
                422,
                "Invalid",
                f'TokenRequest.authentication.k8s.io "{name}" is invalid: '
                "spec.expirationSeconds: Invalid value: %d: may not specify a duration less "
                "than 10 minutes" % expiration,
                {"name": name, "group": "authentication.k8s.io", "kind": "TokenRequest"},
            )
        with self._lock:
            sa = copy.deepcopy(self._get(self._types[("", "v1", "serviceaccounts")], namespace, name))
            ref = spec.get("boundObjectRef")
            bound = None
            if ref:
                plural = {"Pod": "pods", "Secret": "secrets"}.get(ref.get("kind", ""))
                if plural is None:
                    raise ApiError(
                        422,
                        "Invalid",
                        "spec.boundObjectRef.kind: Unsupported value: "
                        f'{ref.get("kind")!r}: supported values: "Pod", "Secret"',
                    )
                target = self._get(self._types[("", "v1", plural)], namespace, ref.get("name", ""))
                if ref.get("uid") and ref["uid"] != target["metadata"]["uid"]:
                    raise ApiError(
                        409,
                        "Conflict",
                        f"the UID in the bound object reference ({ref['uid']}) "
                        f"does not match the UID in record ({target['metadata']['uid']})",
                    )
                bound = {"kind": ref["kind"], "name": ref["name"], "uid": target["metadata"]["uid"]}
        audiences = list(spec.get("audiences") or [kube_auth.DEFAULT_AUDIENCE])
        token, expiry = self.auth.issue_service_account_token(
            sa, audiences=audiences, expiration_seconds=expiration, bound_object=bound
        )
        stamp = datetime.datetime.fromtimestamp(expiry, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "metadata": {"name": name, "namespace": namespace, "creationTimestamp": None},
            "spec": {"audiences": audiences, "expirationSeconds": expiration, "boundObjectRef": ref},
            "status": {"token": token, "expirationTimestamp": stamp},
        }

    def _review(self, group: str, version: str, plural: str, body: Obj, user: kube_auth.UserInfo) -> Obj:
        """SelfSubjectAccessReview, SubjectAccessReview (``kubectl auth can-i``), SelfSubjectReview."""
        kind = _REVIEWS[(group, plural)]
        answer: Obj = {
            "apiVersion": f"{group}/{version}",
            "kind": kind,
            "metadata": {"creationTimestamp": None},
            "spec": body.get("spec") or {},
        }
        if kind == "SelfSubjectReview":
            answer.pop("spec")
            answer["status"] = {
                "userInfo": {"username": user.name, "uid": user.uid, "groups": list(user.groups)}
            }
            return answer
        spec = body.get("spec") or {}
        subject = user
        if kind == "SubjectAccessReview":
            if not spec.get("user") and not spec.get("groups"):
                raise ApiError(
                    422,
                    "Invalid",
                    'SubjectAccessReview.authorization.k8s.io "" is invalid: '
                    'spec.user: Invalid value: "": at least one of user or group must be '
                    "specified",
                )
            subject = kube_auth.UserInfo(
                spec.get("user", ""), tuple(spec.get("groups") or []), spec.get("uid", "")
            )
        attrs, path_attrs = spec.get("resourceAttributes"), spec.get("nonResourceAttributes")
        if attrs:
            info = kube_auth.RequestInfo(
                attrs.get("verb", ""),
                "",
                True,
                attrs.get("group", ""),
                attrs.get("version", ""),
                attrs.get("resource", ""),
                attrs.get("subresource", ""),
                attrs.get("namespace", ""),
                attrs.get("name", ""),
            )
        elif path_attrs:
            info = kube_auth.RequestInfo(path_attrs.get("verb", ""), path_attrs.get("path", ""))
        else:
            raise ApiError(
                422,
                "Invalid",
                f"{kind}.authorization.k8s.io is invalid: "
                "spec.resourceAttributes: "
                'Invalid value: "null": exactly one of nonResourceAttributes or '
                "resourceAttributes must be specified",
            )
        with self._lock:
            allowed = kube_auth.authorize(subject, info, self._rbac_state())
        answer["status"] = {"allowed": allowed}
        if allowed:
            answer["status"]["reason"] = "RBAC: allowed"
        return answer

    async def _resource_request(
        self, request: aiohttp.web.Request, t: ResourceType, ns: str | None, name: str | None, sub: str | None
    ) -> aiohttp.web.StreamResponse:
        q = request.query
        dry_run = "All" in q.getall("dryRun", [])
        ns_key = ns or ""
        method = request.method
        if name is None:
            if method == "GET" and q.get("watch", "").lower() in ("true", "1"):
                return await self._watch(request, t, ns)
            if method == "GET":
                items = self._list(t, ns, q.get("labelSelector"), q.get("fieldSelector"))
                for item in items:
                    item.setdefault("apiVersion", t.api_version)
                    item.setdefault("kind", t.kind)
                return aiohttp.web.json_response(
                    {
                        "apiVersion": t.api_version,
                        "kind": f"{t.kind}List",
                        "metadata": {"resourceVersion": str(self._rv)},
                        "items": items,
                    }
                )
            if method == "POST":
                if t.namespaced and ns is None:
                    raise ApiError(405, "MethodNotAllowed", "create needs a namespace in the URL")
                body = await request.json()
                return aiohttp.web.json_response(self._create(t, ns_key, body, dry_run=dry_run), status=201)
            if method == "DELETE":
                deleted = [
                    self._delete(
                        t, o["metadata"].get("namespace", ""), o["metadata"]["name"], dry_run=dry_run
                    )
                    for o in self._list(t, ns, q.get("labelSelector"), q.get("fieldSelector"))
                ]
                return aiohttp.web.json_response(
                    {
                        "apiVersion": t.api_version,
                        "kind": f"{t.kind}List",
                        "metadata": {"resourceVersion": str(self._rv)},
                        "items": deleted,
                    }
                )
            raise ApiError(405, "MethodNotAllowed", f"{method} is not allowed on a collection")

        if method == "GET" and q.get("watch", "").lower() in ("true", "1"):
            return await self._watch(request, t, ns, name=name)
        if method == "GET":
            with self._lock:
                return aiohttp.web.json_response(copy.deepcopy(self._get(t, ns_key, name)))
        if method == "PUT":
            body = await request.json()
            return aiohttp.web.json_response(self._update(t, ns_key, name, body, sub, dry_run=dry_run))
        if method == "PATCH":
            return await self._patch(request, t, ns_key, name, sub, dry_run)
        if method == "DELETE":
            body = {}
            if request.can_read_body:
                with contextlib.suppress(json.JSONDecodeError):
                    body = await request.json() or {}
            policy = q.get("propagationPolicy") or body.get("propagationPolicy")
            return aiohttp.web.json_response(
                self._delete(t, ns_key, name, orphan=policy == "Orphan", dry_run=dry_run)
            )
        raise ApiError(405, "MethodNotAllowed", f"{method} is not allowed on an object")

    async def _patch(
        self,
        request: aiohttp.web.Request,
        t: ResourceType,
        ns: str,
        name: str,
        sub: str | None,
        dry_run: bool,
    ) -> aiohttp.web.Response:
        ctype = request.content_type
        raw = await request.text()
        if ctype == "application/apply-patch+yaml":
            body = yaml.safe_load(raw) or {}
            with self._lock:
                exists = (t.group, t.plural, ns if t.namespaced else "", name) in self._objects
            if not exists:
                body.setdefault("metadata", {})["name"] = name
                return aiohttp.web.json_response(self._create(t, ns, body, dry_run=dry_run), status=201)
            patcher = merge_patch
        elif ctype == "application/json-patch+json":
            body = json.loads(raw)
            patcher = lambda target, ops: jsonpatch.apply_patch(target, ops)  # noqa: E731
        elif ctype == "application/strategic-merge-patch+json":
            if not t.builtin:
                raise ApiError(
                    415,
                    "UnsupportedMediaType",
                    "the body of the request was in an unknown "
                    "format - accepted media types include: application/json-patch+json, "
                    "application/merge-patch+json, application/apply-patch+yaml",
                )
            body, patcher = json.loads(raw), strategic_merge_patch
        elif ctype == "application/merge-patch+json":
            body, patcher = json.loads(raw), merge_patch
        else:
            raise ApiError(415, "UnsupportedMediaType", f"unsupported patch content type {ctype!r}")
        with self._lock:
            current = copy.deepcopy(self._get(t, ns, name))
            patched = patcher(current, body)
            return aiohttp.web.json_response(
                self._update(t, ns, name, patched, sub, check_rv=True, dry_run=dry_run)
            )

    async def _watch(
        self, request: aiohttp.web.Request, t: ResourceType, ns: str | None, name: str | None = None
    ) -> aiohttp.web.StreamResponse:
        q = request.query
        labels, fields = q.get("labelSelector"), q.get("fieldSelector")
        if name is not None:
            fields = ",".join(filter(None, [fields, f"metadata.name={name}"]))
        timeout = float(q.get("timeoutSeconds") or 1800)
        since = q.get("resourceVersion") or "0"
        label_selector_matches(labels, {})  # raise 400 early on a bad selector
        field_selector_matches(fields, {})

        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout

        async def send(kind: str, obj: Obj) -> None:
            await response.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")

        def matches(obj: Obj | None) -> bool:
            return (
                obj is not None
                and (ns is None or obj["metadata"].get("namespace", "") == ns)
                and label_selector_matches(labels, obj["metadata"].get("labels"))
                and field_selector_matches(fields, obj)
            )

        with self._lock:
            if since == "0":
                position = self._rv
                initial = [("ADDED", o) for o in self._list(t, ns, labels, fields)]
            else:
                position = int(since) if since.isdigit() else -1
                oldest = self._history[0].rv if self._history else self._rv + 1
                initial = []
                if position < oldest - 1 or position > self._rv:
                    initial = [
                        (
                            "ERROR",
                            {
                                "kind": "Status",
                                "apiVersion": "v1",
                                "metadata": {},
                                "status": "Failure",
                                "reason": "Expired",
                                "code": 410,
                                "message": f"too old resource version: {since} ({oldest - 1})",
                            },
                        )
                    ]
                    position = -1
        for kind, obj in initial:
            await send(kind, obj)
        if position < 0:
            return response

        with contextlib.suppress(ConnectionResetError, asyncio.CancelledError):
            while not self._stopping and loop.time() < deadline:
                assert self._changed is not None
                changed = self._changed
                with self._lock:
                    events = [e for e in self._history if e.rv > position and e.rt_key == (t.group, t.plural)]
                    position = self._rv
                for event in events:
                    now, before = matches(event.obj), matches(event.old)
                    if event.type == "MODIFIED" and now != before:
                        kind = "ADDED" if now else "DELETED"
                    elif now or (event.type == "DELETED" and before):
                        kind = event.type
                    else:
                        continue
                    await send(kind, event.obj)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), timeout=max(0.0, min(5.0, deadline - loop.time())))
        return response

    def _group_list(self) -> Obj:
        groups: dict[str, list[str]] = {g: ["v1"] for g, _ in _REVIEWS}
        for t in self._types.values():
            if t.group and t.version not in groups.setdefault(t.group, []):
                groups[t.group].append(t.version)
        return {
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [
                {
                    "name": g,
                    "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in vs],
                    "preferredVersion": {"groupVersion": f"{g}/{vs[0]}", "version": vs[0]},
                }
                for g, vs in sorted(groups.items())
            ],
        }

    def _resource_list(self, group: str, version: str) -> Obj:
        types = [t for t in self._types.values() if (t.group, t.version) == (group, version)]
        reviews = [(plural, kind) for (g, plural), kind in _REVIEWS.items() if g == group and version == "v1"]
        if not types and not reviews:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        resources: list[Obj] = [
            {
                "name": plural,
                "singularName": kind.lower(),
                "namespaced": False,
                "kind": kind,
                "verbs": ["create"],
            }
            for plural, kind in reviews
        ]
        for t in sorted(types, key=lambda x: x.plural):
            resources.append(
                {
                    "name": t.plural,
                    "singularName": t.singular,
                    "namespaced": t.namespaced,
                    "kind": t.kind,
                    "verbs": _ALL_VERBS,
                    "shortNames": list(t.short_names),
                }
            )
            if (t.group, t.plural) == ("", "serviceaccounts"):
                resources.append(
                    {
                        "name": "serviceaccounts/token",
                        "singularName": "",
                        "namespaced": True,
                        "group": "authentication.k8s.io",
                        "version": "v1",
                        "kind": "TokenRequest",
                        "verbs": ["create"],
                    }
                )
            for g, plural, sub in sorted(self._subresources):
                if (g, plural) == (t.group, t.plural):
                    resources.append(
                        {
                            "name": f"{plural}/{sub}",
                            "singularName": "",
                            "kind": t.kind,
                            "namespaced": t.namespaced,
                            "verbs": ["get", "create"],
                        }
                    )
            if t.status:
                resources.append(
                    {
                        "name": f"{t.plural}/status",
                        "singularName": "",
                        "namespaced": t.namespaced,
                        "kind": t.kind,
                        "verbs": ["get", "patch", "update"],
                    }
                )
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": resources,
        }


def _file_safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


def _spec_part(obj: Obj) -> Obj:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}
