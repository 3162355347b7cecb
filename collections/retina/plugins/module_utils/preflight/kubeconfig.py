# Copyright: retina-onprem contributors
# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
"""Where every component finds the Kubernetes API server: one loader, one order.

The agent (``retina_agent.enrichment``), the capture CLI and operator (``retina_capture.kube``) and
the preflight control checks all call :func:`load_api_client`; it lives here, in module_utils,
because this is the one place all three can import (Ansible ships module_utils to where its
modules run; the pip package reaches it as ``retina_preflight.core.kubeconfig``).

The order is controller-runtime's (``sigs.k8s.io/controller-runtime/pkg/client/config``), which
is kubectl's too except that kubectl reads ``~/.kube/config`` before trying the in-cluster
service account:

1. an explicit kubeconfig path (``--kubeconfig``, the module's ``kubeconfig`` option, the agent's
   ``podLevel.kubeconfig``): it must exist;
2. ``$KUBECONFIG``: a list of files separated by ``os.pathsep``, merged as kubectl merges them
   (the first file that sets a value wins); files that do not exist are skipped, as kubectl does;
3. the in-cluster service account: ``$KUBERNETES_SERVICE_HOST``/``$KUBERNETES_SERVICE_PORT`` and
   the token and ``ca.crt`` under ``/var/run/secrets/kubernetes.io/serviceaccount``;
4. ``~/.kube/config``.

Standard library only at import time (``kubernetes`` is imported when a client is made); runs on
the node Python of the oldest supported distribution (3.6), like the rest of module_utils.
"""

import os
from typing import Any, Dict, Mapping, Optional, Tuple

#: Where the kubelet mounts a pod's service-account token, CA and namespace.
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"

EXPLICIT = "explicit"
KUBECONFIG_ENV = "KUBECONFIG"
IN_CLUSTER = "in-cluster"
DEFAULT = "default"
#: The order in which :func:`find_kubeconfig` looks (documented above; tests hold it).
PRECEDENCE = (EXPLICIT, KUBECONFIG_ENV, IN_CLUSTER, DEFAULT)


class KubeconfigError(Exception):
    """No way to reach the API server was found; the message says what was tried and the fix."""


class KubeconfigSource:
    """What :func:`find_kubeconfig` chose: ``kind`` (one of :data:`PRECEDENCE`) and the files."""

    def __init__(self, kind: str, paths: Tuple[str, ...] = ()) -> None:
        self.kind, self.paths = kind, paths

    def __repr__(self) -> str:
        return f"KubeconfigSource({self.kind!r}, {self.paths!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KubeconfigSource) and (self.kind, self.paths) == (other.kind, other.paths)

    @property
    def config_file(self) -> str:
        """The files as one ``os.pathsep``-joined string (what the ``kubernetes`` loaders merge)."""
        return os.pathsep.join(self.paths)

    def describe(self) -> str:
        if self.kind == IN_CLUSTER:
            return "the in-cluster service account"
        return "kubeconfig " + self.config_file


def find_kubeconfig(
    explicit: Optional[str] = None, environ: Optional[Mapping[str, str]] = None, home: Optional[str] = None
) -> KubeconfigSource:
    """Decide where the configuration comes from (no file is parsed; nothing is imported)."""
    env = os.environ if environ is None else environ
    if explicit:
        path = os.path.expanduser(str(explicit))
        if not os.path.isfile(path):
            raise KubeconfigError(f"kubeconfig {path} does not exist: give an existing file")
        return KubeconfigSource(EXPLICIT, (path,))
    listed = [p for p in env.get("KUBECONFIG", "").split(os.pathsep) if p]
    existing = tuple(os.path.expanduser(p) for p in listed if os.path.isfile(os.path.expanduser(p)))
    if existing:
        return KubeconfigSource(KUBECONFIG_ENV, existing)
    if env.get("KUBERNETES_SERVICE_HOST") and env.get("KUBERNETES_SERVICE_PORT"):
        return KubeconfigSource(IN_CLUSTER)
    default = os.path.join(home or os.path.expanduser("~"), ".kube", "config")
    if os.path.isfile(default):
        return KubeconfigSource(DEFAULT, (default,))
    tried = f"KUBECONFIG={env.get('KUBECONFIG')!r} (no such file), " if listed else ""
    raise KubeconfigError(
        f"cannot reach the API server: {tried}not in a cluster (no KUBERNETES_SERVICE_HOST) and no "
        f"kubeconfig at {default}; set KUBECONFIG or pass a kubeconfig"
    )


def load_api_client(
    explicit: Optional[str] = None, context: Optional[str] = None, environ: Optional[Mapping[str, str]] = None
) -> Any:
    """A ``kubernetes.client.ApiClient`` from the first source in :data:`PRECEDENCE`.

    Raises :class:`KubeconfigError` when there is none, or when the chosen one cannot be loaded
    (the message names the source).
    """
    from kubernetes import client as k8s_client
    from kubernetes import config as k8s_config

    source = find_kubeconfig(explicit, environ)
    try:
        if source.kind == IN_CLUSTER:
            if context:
                raise KubeconfigError(f"--context {context}: the in-cluster service account has no contexts")
            configuration = k8s_client.Configuration()
            k8s_config.incluster_config.InClusterConfigLoader(
                token_filename=os.path.join(SERVICE_ACCOUNT_DIR, "token"),
                cert_filename=os.path.join(SERVICE_ACCOUNT_DIR, "ca.crt"),
                environ=os.environ if environ is None else environ,
            ).load_and_set(configuration)
            return k8s_client.ApiClient(configuration)
        return k8s_config.new_client_from_config(config_file=source.config_file, context=context)
    except k8s_config.ConfigException as error:
        raise KubeconfigError(f"{source.describe()}: {error}") from None


def default_namespace(
    explicit: Optional[str] = None, context: Optional[str] = None, environ: Optional[Mapping[str, str]] = None
) -> str:
    """The namespace a command works in when none is given, as kubectl decides it: the context's
    namespace, in a pod the service account's namespace, else ``default``."""
    try:
        source = find_kubeconfig(explicit, environ)
    except KubeconfigError:
        return "default"
    if source.kind == IN_CLUSTER:
        try:
            with open(os.path.join(SERVICE_ACCOUNT_DIR, "namespace"), encoding="utf-8") as handle:
                return handle.read().strip() or "default"
        except OSError:
            return "default"
    from kubernetes import config as k8s_config

    try:
        contexts, current = k8s_config.list_kube_config_contexts(config_file=source.config_file)
    except (k8s_config.ConfigException, OSError):
        return "default"
    chosen: Optional[Dict[str, Any]] = current
    if context:
        chosen = next((c for c in contexts if c.get("name") == context), current)
    return ((chosen or {}).get("context") or {}).get("namespace") or "default"
