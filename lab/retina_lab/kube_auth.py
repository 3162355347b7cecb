"""Authentication and RBAC authorization for the Kubernetes API emulator, as kube-apiserver does them.

The emulator (:mod:`retina_lab.kube`) asks three questions of every request, in kube-apiserver's
order:

1. **Who is it?**  :class:`Authenticator` reads ``Authorization: Bearer <token>``: a static user
   token (tests mint these for any user and groups, like ``--token-auth-file``) or a
   ServiceAccount token issued by the TokenRequest API (a signed JWT that is valid while its
   ServiceAccount, and the pod it is bound to, still exist, and until it expires).  A bad token
   is ``401 Unauthorized``; no token at all is ``system:anonymous`` in ``system:unauthenticated``
   (kube-apiserver's ``--anonymous-auth=true`` default, which kubeadm and kubespray keep), so RBAC
   decides -- it allows only ``/healthz``, ``/livez``, ``/readyz`` and ``/version``.
2. **What does it ask for?**  :func:`request_info` turns method, path and query into kube-apiserver's
   ``RequestInfo`` (verb ``get``/``list``/``watch``/``create``/``update``/``patch``/``delete``/
   ``deletecollection``, API group, resource, subresource, namespace, name; or a non-resource path).
3. **May it?**  :func:`authorize` evaluates Roles, ClusterRoles, RoleBindings and
   ClusterRoleBindings like the RBAC authorizer (``plugin/pkg/auth/authorizer/rbac``): a
   ClusterRoleBinding grants its rules everywhere, a RoleBinding only inside its namespace (never
   cluster-scoped resources or non-resource URLs), ``*`` wildcards, ``*/subresource``,
   ``resourceNames`` (which can never match a request without a name: list, watch without a
   ``metadata.name`` field selector, create, deletecollection), ClusterRole aggregation.  Members
   of ``system:masters`` skip authorization, as kube-apiserver's privileged-group authorizer does.

:func:`bootstrap_rbac` returns the default ClusterRoles and bindings that kube-apiserver creates
(``cluster-admin``, ``system:discovery``, ``system:basic-user``, ``system:public-info-viewer``,
and the ``admin``/``edit``/``view`` aggregation targets).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

Obj = dict[str, Any]

ANONYMOUS = "system:anonymous"
AUTHENTICATED = "system:authenticated"
UNAUTHENTICATED = "system:unauthenticated"
MASTERS = "system:masters"
#: The issuer written into ServiceAccount tokens (kube-apiserver's --service-account-issuer).
ISSUER = "https://kubernetes.default.svc.cluster.local"
DEFAULT_AUDIENCE = ISSUER


@dataclass(frozen=True)
class UserInfo:
    """An authenticated identity, as kube-apiserver's ``user.Info``."""

    name: str
    groups: tuple[str, ...] = ()
    uid: str = ""
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict, compare=False, hash=False)


def service_account_user(namespace: str, name: str, uid: str = "") -> UserInfo:
    """The identity of a ServiceAccount: ``system:serviceaccount:NS:NAME`` and its three groups."""
    return UserInfo(
        f"system:serviceaccount:{namespace}:{name}",
        ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", AUTHENTICATED),
        uid,
    )


ANONYMOUS_USER = UserInfo(ANONYMOUS, (UNAUTHENTICATED,))


class Unauthorized(Exception):
    """The token is missing (anonymous auth off), malformed, expired or unknown: 401."""


# ---------------------------------------------------------------------------------------------
# Authentication
# ---------------------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Authenticator:
    """Static user tokens and ServiceAccount tokens (HS256 JWTs signed with a per-emulator key).

    ``lookup(kind, namespace, name)`` returns the stored object or None; it lets a ServiceAccount
    token die with its ServiceAccount (or bound pod), as kube-apiserver's token authenticator checks.
    """

    def __init__(self, lookup: Callable[[str, str, str], Obj | None], *, anonymous: bool = True) -> None:
        self._lookup = lookup
        self._key = secrets.token_bytes(32)
        self._static: dict[str, UserInfo] = {}
        self.anonymous = anonymous

    def add_static_token(self, user: UserInfo, token: str | None = None) -> str:
        """Register a static token for ``user`` (``system:authenticated`` is added, as the apiserver
        does for every authenticated request); returns the token."""
        token = token or secrets.token_hex(24)
        groups = tuple(dict.fromkeys([*user.groups, AUTHENTICATED]))
        self._static[token] = UserInfo(user.name, groups, user.uid or secrets.token_hex(8), user.extra)
        return token

    def issue_service_account_token(
        self,
        service_account: Obj,
        *,
        audiences: Iterable[str] = (),
        expiration_seconds: int = 3600,
        bound_object: Obj | None = None,
    ) -> tuple[str, int]:
        """A bound ServiceAccount token as TokenRequest makes it; returns (token, expiry epoch)."""
        meta = service_account["metadata"]
        now = int(time.time())
        expiry = now + int(expiration_seconds)
        claims: Obj = {
            "iss": ISSUER,
            "aud": list(audiences) or [DEFAULT_AUDIENCE],
            "iat": now,
            "nbf": now,
            "exp": expiry,
            "sub": f"system:serviceaccount:{meta['namespace']}:{meta['name']}",
            "kubernetes.io": {
                "namespace": meta["namespace"],
                "serviceaccount": {"name": meta["name"], "uid": meta.get("uid", "")},
            },
        }
        if bound_object:
            claims["kubernetes.io"][bound_object["kind"].lower()] = {
                "name": bound_object["name"],
                "uid": bound_object.get("uid", ""),
            }
        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "emulator"}).encode())
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        signature = _b64(hmac.new(self._key, f"{header}.{payload}".encode(), hashlib.sha256).digest())
        return f"{header}.{payload}.{signature}", expiry

    def authenticate(self, authorization: str | None) -> UserInfo:
        """The user behind an ``Authorization`` header value; raises :class:`Unauthorized`."""
        if not authorization:
            if self.anonymous:
                return ANONYMOUS_USER
            raise Unauthorized("no credentials")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("only bearer tokens are accepted")
        if token in self._static:
            return self._static[token]
        return self._service_account(token)

    def _service_account(self, token: str) -> UserInfo:
        parts = token.split(".")
        if len(parts) != 3:
            raise Unauthorized("unknown token")
        expected = _b64(hmac.new(self._key, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest())
        if not hmac.compare_digest(expected, parts[2]):
            raise Unauthorized("token signature invalid")
        try:
            claims = json.loads(_unb64(parts[1]))
            k8s = claims["kubernetes.io"]
            namespace, sa = k8s["namespace"], k8s["serviceaccount"]
        except (ValueError, KeyError, TypeError):
            raise Unauthorized("malformed token") from None
        if claims.get("exp", 0) < time.time():
            raise Unauthorized("token has expired")
        stored = self._lookup("serviceaccounts", namespace, sa["name"])
        if stored is None or stored["metadata"].get("uid", "") != sa["uid"]:
            raise Unauthorized(f"service account {namespace}/{sa['name']} has been deleted")
        if "pod" in k8s:
            pod = self._lookup("pods", namespace, k8s["pod"]["name"])
            if pod is None or pod["metadata"].get("uid", "") != k8s["pod"]["uid"]:
                raise Unauthorized(f"pod {namespace}/{k8s['pod']['name']} the token is bound to is gone")
        return service_account_user(namespace, sa["name"], sa["uid"])


# ---------------------------------------------------------------------------------------------
# Request attributes
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestInfo:
    """kube-apiserver's ``RequestInfo``: what a request asks to do."""

    verb: str
    path: str = ""
    resource_request: bool = False
    api_group: str = ""
    api_version: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""

    @property
    def group_resource(self) -> str:
        """``pods``, ``jobs.batch``, ``captures.retina.sh`` (as in Forbidden messages)."""
        return f"{self.resource}.{self.api_group}" if self.api_group else self.resource

    @property
    def combined_resource(self) -> str:
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


_NAMESPACE_SUBRESOURCES = {"status", "finalize"}


def request_info(method: str, path: str, query: str | Mapping[str, Any] = "") -> RequestInfo:
    """Parse a request like ``k8s.io/apiserver/pkg/endpoints/request.RequestInfoFactory``."""
    params = parse_qs(query) if isinstance(query, str) else {k: [v] for k, v in query.items()}
    parts = [p for p in path.strip("/").split("/") if p]
    nonresource = RequestInfo(verb=method.lower(), path=path)
    if len(parts) < 3 or parts[0] not in ("api", "apis"):
        return nonresource
    prefix, rest = parts[0], parts[1:]
    group = ""
    if prefix == "apis":
        if len(rest) < 3:
            return nonresource
        group, rest = rest[0], rest[1:]
    version, rest = rest[0], rest[1:]
    verb = {
        "POST": "create",
        "GET": "get",
        "HEAD": "get",
        "PUT": "update",
        "PATCH": "patch",
        "DELETE": "delete",
    }.get(method.upper(), "")
    if rest and rest[0] == "watch" and len(rest) >= 2:  # the deprecated /watch/ path prefix
        verb, rest = "watch", rest[1:]
    namespace = ""
    if rest and rest[0] == "namespaces" and len(rest) > 1:
        namespace = rest[1]
        if len(rest) > 2 and rest[2] not in _NAMESPACE_SUBRESOURCES:
            rest = rest[2:]
    resource = rest[0] if rest else ""
    name = rest[1] if len(rest) >= 2 else ""
    subresource = rest[2] if len(rest) >= 3 else ""
    if not name and verb == "get":
        verb = "watch" if (params.get("watch") or [""])[0].lower() in ("true", "1") else "list"
        for term in (params.get("fieldSelector") or [""])[0].split(","):
            key, op, value = term.partition("==") if "==" in term else term.partition("=")
            if op and key.strip() == "metadata.name" and value.strip():
                name = value.strip()
    if not name and verb == "delete":
        verb = "deletecollection"
    return RequestInfo(verb, path, True, group, version, resource, subresource, namespace, name)


# ---------------------------------------------------------------------------------------------
# RBAC
# ---------------------------------------------------------------------------------------------


@dataclass
class RBACState:
    """The RBAC objects of the cluster at the moment of a request."""

    roles: Mapping[tuple[str, str], Obj]  # (namespace, name) -> Role
    cluster_roles: Mapping[str, Obj]
    role_bindings: list[Obj]
    cluster_role_bindings: list[Obj]


def _label_selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A metav1.LabelSelector (matchLabels + matchExpressions) against labels."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def cluster_role_rules(
    role: Obj, cluster_roles: Mapping[str, Obj], _seen: frozenset[str] = frozenset()
) -> list[Obj]:
    """The rules of a ClusterRole; for an aggregated one, the union of the rules of every
    ClusterRole its ``aggregationRule`` selects (what the aggregation controller writes into it;
    an aggregated role selected by another contributes its aggregated rules, as ``edit`` to ``admin``)."""
    aggregation = role.get("aggregationRule")
    if not aggregation:
        return list(role.get("rules") or [])
    seen = _seen | {role["metadata"]["name"]}
    rules: list[Obj] = []
    for name, other in sorted(cluster_roles.items()):
        if name in seen:
            continue
        labels = other["metadata"].get("labels") or {}
        if any(_label_selector_matches(sel, labels) for sel in aggregation.get("clusterRoleSelectors") or []):
            rules += [r for r in cluster_role_rules(other, cluster_roles, seen) if r not in rules]
    return rules


def _subject_matches(subject: Obj, user: UserInfo, binding_namespace: str) -> bool:
    kind = subject.get("kind")
    if kind == "User":
        return subject.get("name") == user.name
    if kind == "Group":
        return subject.get("name") in user.groups
    if kind == "ServiceAccount":
        namespace = subject.get("namespace") or binding_namespace
        return user.name == f"system:serviceaccount:{namespace}:{subject.get('name')}"
    return False


def _verb_matches(rule: Obj, verb: str) -> bool:
    verbs = rule.get("verbs") or []
    return "*" in verbs or verb in verbs


def _resource_matches(rule: Obj, info: RequestInfo) -> bool:
    groups = rule.get("apiGroups") or []
    if "*" not in groups and info.api_group not in groups:
        return False
    for resource in rule.get("resources") or []:
        if resource in ("*", info.combined_resource):
            return True
        if info.subresource and resource == f"*/{info.subresource}":
            return True
    return False


def _name_matches(rule: Obj, info: RequestInfo) -> bool:
    names = rule.get("resourceNames") or []
    return not names or info.name in names


def _url_matches(rule: Obj, path: str) -> bool:
    for url in rule.get("nonResourceURLs") or []:
        if url == "*" or url == path or (url.endswith("*") and path.startswith(url[:-1])):
            return True
    return False


def rule_allows(rule: Obj, info: RequestInfo) -> bool:
    """Does one PolicyRule allow this request?"""
    if not _verb_matches(rule, info.verb):
        return False
    if info.resource_request:
        return _resource_matches(rule, info) and _name_matches(rule, info)
    return _url_matches(rule, info.path)


def _binding_rules(binding: Obj, state: RBACState) -> list[Obj] | None:
    ref = binding.get("roleRef") or {}
    if ref.get("kind") == "ClusterRole":
        role = state.cluster_roles.get(ref.get("name", ""))
        return None if role is None else cluster_role_rules(role, state.cluster_roles)
    if ref.get("kind") == "Role":
        role = state.roles.get((binding["metadata"].get("namespace", ""), ref.get("name", "")))
        return None if role is None else list(role.get("rules") or [])
    return None


def authorize(user: UserInfo, info: RequestInfo, state: RBACState) -> bool:
    """kube-apiserver's authorizer chain for this emulator: privileged group, then RBAC."""
    if MASTERS in user.groups:
        return True
    for binding in state.cluster_role_bindings:
        if any(_subject_matches(s, user, "") for s in binding.get("subjects") or []):
            rules = _binding_rules(binding, state) or []
            if any(rule_allows(r, info) for r in rules):
                return True
    if not info.resource_request or not info.namespace:
        return False  # RoleBindings grant only namespaced resource requests in their namespace
    for binding in state.role_bindings:
        namespace = binding["metadata"].get("namespace", "")
        if namespace != info.namespace:
            continue
        if any(_subject_matches(s, user, namespace) for s in binding.get("subjects") or []):
            rules = _binding_rules(binding, state) or []
            if any(rule_allows(r, info) for r in rules):
                return True
    return False


def forbidden_message(user: UserInfo, info: RequestInfo) -> str:
    """The message kube-apiserver answers a refused request with (``responsewriters.forbiddenMessage``)."""
    who = f'User "{user.name}" '
    if not info.resource_request:
        return f'forbidden: {who}cannot {info.verb} path "{info.path}"'
    resource = f'resource "{info.combined_resource}" in API group "{info.api_group}"'
    where = f'in the namespace "{info.namespace}"' if info.namespace else "at the cluster scope"
    subject = info.group_resource + (f' "{info.name}"' if info.name else "")
    return f"{subject} is forbidden: {who}cannot {info.verb} {resource} {where}"


def forbidden_status(user: UserInfo, info: RequestInfo) -> Obj:
    """The ``Status`` body of a 403."""
    details: Obj = {}
    if info.resource_request:
        details = {"group": info.api_group, "kind": info.resource}
        if info.name:
            details = {"name": info.name, **details}
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": forbidden_message(user, info),
        "reason": "Forbidden",
        "details": details,
        "code": 403,
    }


UNAUTHORIZED_STATUS: Obj = {
    "kind": "Status",
    "apiVersion": "v1",
    "metadata": {},
    "status": "Failure",
    "message": "Unauthorized",
    "reason": "Unauthorized",
    "code": 401,
}


# ---------------------------------------------------------------------------------------------
# The default RBAC of a new cluster
# ---------------------------------------------------------------------------------------------

_BOOTSTRAP_LABELS = {"kubernetes.io/bootstrapping": "rbac-defaults"}


def _cluster_role(
    name: str, rules: list[Obj], labels: Mapping[str, str] | None = None, aggregate_from: str | None = None
) -> Obj:
    role: Obj = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {
            "name": name,
            "labels": {**_BOOTSTRAP_LABELS, **(labels or {})},
            "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"},
        },
        "rules": rules,
    }
    if aggregate_from:
        role["aggregationRule"] = {
            "clusterRoleSelectors": [
                {"matchLabels": {f"rbac.authorization.k8s.io/aggregate-to-{aggregate_from}": "true"}}
            ]
        }
    return role


def _cluster_role_binding(name: str, role: str, groups: Iterable[str]) -> Obj:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {
            "name": name,
            "labels": dict(_BOOTSTRAP_LABELS),
            "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"},
        },
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": g} for g in groups],
    }


def bootstrap_rbac() -> list[Obj]:
    """The default ClusterRoles/ClusterRoleBindings of kube-apiserver that matter to clients.

    ``admin``, ``edit`` and ``view`` are aggregated ClusterRoles (empty until a ClusterRole
    labelled ``rbac.authorization.k8s.io/aggregate-to-<name>: "true"`` exists), so the emulator
    does not grant more than a cluster's built-in rules would without us writing them all out.
    """
    healthz = ["/healthz", "/livez", "/readyz", "/version", "/version/"]
    return [
        _cluster_role(
            "cluster-admin",
            [
                {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
                {"nonResourceURLs": ["*"], "verbs": ["*"]},
            ],
        ),
        _cluster_role(
            "system:discovery",
            [
                {
                    "nonResourceURLs": [
                        "/api",
                        "/api/*",
                        "/apis",
                        "/apis/*",
                        "/healthz",
                        "/livez",
                        "/openapi",
                        "/openapi/*",
                        "/readyz",
                        "/version",
                        "/version/",
                    ],
                    "verbs": ["get"],
                }
            ],
        ),
        _cluster_role("system:public-info-viewer", [{"nonResourceURLs": healthz, "verbs": ["get"]}]),
        _cluster_role(
            "system:basic-user",
            [
                {
                    "apiGroups": ["authorization.k8s.io"],
                    "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                    "verbs": ["create"],
                },
                {
                    "apiGroups": ["authentication.k8s.io"],
                    "resources": ["selfsubjectreviews"],
                    "verbs": ["create"],
                },
            ],
        ),
        _cluster_role("admin", [], aggregate_from="admin"),
        _cluster_role("edit", [], {"rbac.authorization.k8s.io/aggregate-to-admin": "true"}, "edit"),
        _cluster_role("view", [], {"rbac.authorization.k8s.io/aggregate-to-edit": "true"}, "view"),
        _cluster_role_binding("cluster-admin", "cluster-admin", [MASTERS]),
        _cluster_role_binding("system:discovery", "system:discovery", [AUTHENTICATED]),
        _cluster_role_binding("system:basic-user", "system:basic-user", [AUTHENTICATED]),
        _cluster_role_binding(
            "system:public-info-viewer", "system:public-info-viewer", [AUTHENTICATED, UNAUTHENTICATED]
        ),
    ]


# ---------------------------------------------------------------------------------------------
# Impersonation (kubectl --as / --as-group)
# ---------------------------------------------------------------------------------------------


def impersonation_requests(user: UserInfo, headers: Any) -> tuple[UserInfo, list[RequestInfo]]:
    """The identity ``Impersonate-User``/``Impersonate-Group`` headers ask for, and the
    ``impersonate`` checks the requester must pass first (as kube-apiserver's impersonation
    filter: users, groups, or serviceaccounts for ``system:serviceaccount:NS:NAME``)."""
    name = headers.get("Impersonate-User", "")
    groups = list(headers.getall("Impersonate-Group", [])) if hasattr(headers, "getall") else []
    if not name and not groups:
        return user, []
    if not name:
        raise ValueError("requested impersonation of groups without a user")
    checks = []
    prefix = "system:serviceaccount:"
    if name.startswith(prefix) and name.count(":") == 3:
        namespace, sa = name[len(prefix) :].split(":")
        checks.append(RequestInfo("impersonate", "", True, "", "v1", "serviceaccounts", "", namespace, sa))
        groups = [*groups, "system:serviceaccounts", f"system:serviceaccounts:{namespace}"]
    else:
        checks.append(RequestInfo("impersonate", "", True, "", "v1", "users", "", "", name))
    checks += [
        RequestInfo("impersonate", "", True, "", "v1", "groups", "", "", g)
        for g in groups
        if not g.startswith("system:serviceaccounts")
    ]
    if name != ANONYMOUS and AUTHENTICATED not in groups:
        groups.append(AUTHENTICATED)
    return UserInfo(name, tuple(dict.fromkeys(groups))), checks
