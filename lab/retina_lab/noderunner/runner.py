"""``NodeRunner``: this machine as one or several Kubernetes nodes of an API server.

It plays the parts of a cluster that the API server alone does not: the workload controllers
(:mod:`.controllers`), the scheduler's node filter (:mod:`.scheduling`) and the kubelet
(:mod:`.kubelet`, pods as podman containers), plus the API server's HTTPS endpoint for
in-cluster clients (:mod:`.apifront`, which also routes ``pods/log`` and ``pods/exec`` to
the kubelet). Use::

    with KubeEmulator() as kube, NodeRunner.for_emulator(kube, nodes=["node-1"]) as runner:
        ...   # kube.kubeconfig_path works for pods/log and pods/exec of the runner's pods

The runner acts with the token it is given (the emulator's admin): the kubelet's and the
controllers' own identities (system:node, the controller service accounts) are not modelled.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from images.podman import remove_containers
from retina_lab.kube_tls import make_serving_certs
from retina_lab.noderunner.apifront import ApiFront
from retina_lab.noderunner.claims import VolumeBinder
from retina_lab.noderunner.client import ApiClient
from retina_lab.noderunner.controllers import Controllers
from retina_lab.noderunner.kubelet import Kubelet, leftover_containers
from retina_lab.noderunner.podnet import PodNetwork
from retina_lab.noderunner.streams import PodStreams

log = logging.getLogger(__name__)
T = TypeVar("T")
LOOP_SECONDS = 0.5


class NodeRunner:
    def __init__(
        self,
        api_url: str,
        token: str,
        *,
        ca_path: str | Path | None = None,
        add_subresource: Callable[[str, str, str, Any], None] | None = None,
        nodes: Sequence[str] = ("node-1",),
        node_ip: str = "127.0.0.1",
        workdir: str | Path | None = None,
        node_labels: dict[str, str] | None = None,
        node_taints: list[dict[str, Any]] | None = None,
        runner_id: str | None = None,
    ) -> None:
        self.runner_id = runner_id or secrets.token_hex(2)
        self.api_url, self.token = api_url, token
        self.nodes = list(nodes)
        self.node_ip = node_ip
        self._own_dir = None if workdir else tempfile.TemporaryDirectory(prefix="noderunner-")
        self.workdir = Path(workdir or self._own_dir.name)  # type: ignore[union-attr]
        n = int(self.runner_id, 16)
        self.podnet = PodNetwork(self.runner_id, f"10.{240 + n % 10}.{(n // 10) % 256}.0/24")
        # valid for the in-cluster service names (kube_tls.SERVER_NAMES) and the pods' gateway
        self.certs = make_serving_certs(self.workdir / "pki", ["127.0.0.1", self.podnet.gateway])
        ca = str(ca_path) if ca_path else None
        self.front = ApiFront(api_url, self.certs, ["127.0.0.1", self.podnet.gateway], backend_ca=ca)
        self.api = ApiClient(api_url, token, verify=ca or True)
        self._add_subresource = add_subresource
        self.controllers = Controllers(self.api)
        self.volume_binder = VolumeBinder(self.api)
        self.kubelet: Kubelet | None = None
        self._node_labels, self._node_taints = node_labels, node_taints
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors: list[str] = []

    @classmethod
    def for_emulator(cls, kube: Any, **options: Any) -> NodeRunner:
        """A runner for a ``retina_lab.kube.KubeEmulator``: its admin token and CA, and its
        ``pods/log``/``pods/exec`` served from this runner's containers."""
        return cls(
            kube.url, kube.token, ca_path=kube.ca_path, add_subresource=kube.add_subresource, **options
        )

    # -- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> NodeRunner:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.podnet.up()
        self.front.start()
        self.kubelet = Kubelet(
            self.api,
            runner_id=self.runner_id,
            node_names=self.nodes,
            node_ip=self.node_ip,
            workdir=self.workdir,
            podnet=self.podnet,
            api_port=self.front.port,
            ca_bytes=self.certs.ca_cert.read_bytes(),
            node_labels=self._node_labels,
            node_taints=self._node_taints,
        )
        if self._add_subresource is not None:
            streams = PodStreams(self.kubelet)
            self._add_subresource("", "pods", "log", streams.logs)
            self._add_subresource("", "pods", "exec", streams.exec)
        self.kubelet.register_nodes()
        self._thread = threading.Thread(target=self._loop, name=f"noderunner-{self.runner_id}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None
        if self.kubelet is not None:
            self.kubelet.shutdown()
        remove_containers(leftover_containers(self.runner_id))
        self.front.stop()
        self.podnet.down()
        if self._own_dir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _loop(self) -> None:
        assert self.kubelet is not None
        while not self._stop.wait(LOOP_SECONDS):
            for part in (self.controllers.sync, self.volume_binder.sync, self.kubelet.sync):
                try:
                    part()
                except Exception as exc:  # the API server restarting, a race: next round
                    message = f"{part.__qualname__}: {type(exc).__name__}: {exc}"
                    if not self.errors or self.errors[-1] != message:
                        log.warning("%s", message)
                        self.errors.append(message)

    # -- for tests -------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The API server's HTTPS endpoint (in front of ``api_url``)."""
        return self.front.url

    def write_kubeconfig(
        self, path: Path, token: str, *, namespace: str = "default", user: str = "user"
    ) -> Path:
        """A kubeconfig for the runner's relay (what pods reach), verified against the runner's CA."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "preferences": {},
            "clusters": [
                {
                    "name": "noderunner",
                    "cluster": {"server": self.url, "certificate-authority": str(self.certs.ca_cert)},
                }
            ],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [
                {"name": user, "context": {"cluster": "noderunner", "user": user, "namespace": namespace}}
            ],
            "current-context": user,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600, exist_ok=True)
        path.write_text(yaml.safe_dump(config))
        return path

    def containers(self) -> list[str]:
        """podman names of the containers this runner runs now."""
        return leftover_containers(self.runner_id)

    def wait_for(
        self, what: str, check: Callable[[], T | None], timeout: float = 120, interval: float = 0.5
    ) -> T:
        """Poll ``check`` until it returns something truthy; fail naming ``what`` at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            result = check()
            if result:
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not within {timeout:.0f}s; runner errors: {self.errors[-5:]}")
            time.sleep(interval)
