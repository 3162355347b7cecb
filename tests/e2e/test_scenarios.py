"""The installed system, end to end: install.yml into the API emulator, the built images run
by the node runner as the rendered manifests say, real traffic, a real Prometheus, real
captures to a hostPath and to S3 (moto), and an uninstall that leaves nothing behind.

Scenarios run in file order on one installation (``installed``, module-scoped); the last one
uninstalls.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import boto3
import dpkt
import kubernetes
import pytest
import yaml

from images.podman import podman_argv
from retina_agent.demo.node import LabPod
from retina_capture.operator.handlers import FINALIZER
from retina_lab import LabNode
from retina_lab.agent import Metrics, our_tc_filters
from retina_lab.prometheus import PrometheusServer
from retina_lab.traffic import send_udp, udp_sink
from tests.capture.conftest import Server, free_port
from tests.e2e.conftest import HOST_PATHS, NAMESPACE, NODE, Installed, host_path_listing
from tests.installer.ansible_run import VENV_BIN
from tests.kube_fixtures import (
    AGENT_USER,
    CAPTURE_USER,
    OPERATOR_USER,
    capture_user_kubeconfig_for,
    refusals_of,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

FORWARD = "networkobservability_forward_count"
ADV_FORWARD = "networkobservability_adv_forward_count"
ADV_FORWARD_BYTES = "networkobservability_adv_forward_bytes"
S3_KEYS = {"RETINA_CAPTURE_S3_ACCESS_KEY_ID": "AKIAE2E", "RETINA_CAPTURE_S3_SECRET_ACCESS_KEY": "e2e-secret"}


@pytest.fixture(scope="module")
def lab() -> Any:
    with LabNode(pod_names=("a", "b")) as node:
        yield node


def kubernetes_sd_targets(pod: dict[str, Any]) -> list[dict[str, Any]]:
    """What Prometheus' Kubernetes SD (role: pod) reports for each container port of ``pod``:
    Debian's Prometheus has no Kubernetes SD, so file_sd carries the same labels, made from the
    pod object the API server holds."""
    meta, spec, status = pod["metadata"], pod["spec"], pod["status"]
    base = {
        "__meta_kubernetes_namespace": meta["namespace"],
        "__meta_kubernetes_pod_name": meta["name"],
        "__meta_kubernetes_pod_ip": status["podIP"],
        "__meta_kubernetes_pod_node_name": spec["nodeName"],
        "__meta_kubernetes_pod_phase": status["phase"],
        "__meta_kubernetes_pod_ready": next(
            c["status"] for c in status["conditions"] if c["type"] == "Ready"
        ).lower(),
    }
    for key, value in (meta.get("labels") or {}).items():
        clean = "".join(ch if ch.isalnum() else "_" for ch in key)
        base[f"__meta_kubernetes_pod_label_{clean}"] = value
    for key, value in (meta.get("annotations") or {}).items():
        clean = "".join(ch if ch.isalnum() else "_" for ch in key)
        base[f"__meta_kubernetes_pod_annotation_{clean}"] = value
    groups = []
    for container in spec["containers"]:
        for port in container.get("ports") or []:
            groups.append(
                {
                    "targets": [f"{status['podIP']}:{port['containerPort']}"],
                    "labels": {
                        **base,
                        "__meta_kubernetes_pod_container_name": container["name"],
                        "__meta_kubernetes_pod_container_init": "false",
                        "__meta_kubernetes_pod_container_port_name": port.get("name", ""),
                        "__meta_kubernetes_pod_container_port_number": str(port["containerPort"]),
                    },
                }
            )
    return groups


def _agent_metrics(installed: Installed) -> Metrics:
    with urllib.request.urlopen(f"http://127.0.0.1:{installed.agent_port}/metrics", timeout=5) as resp:
        return Metrics(resp.read().decode())


def _attached(installed: Installed, veths: list[str], short: str) -> list[str] | None:
    """The agent pod's ``short`` data-path feature (pf, pp, ...) on both hooks of every veth."""
    programs = installed.agent_tc_programs()
    want = [f"{v}/{d}/retina_{short}_{d}" for v in veths for d in ("ingress", "egress")]
    return programs if all(any(p.startswith(w + "@") for p in programs) for w in want) else None


def test_basic_the_agent_pod_counts_lab_traffic_and_prometheus_scrapes_it(installed: Installed, lab) -> None:
    agent = installed.ready_pod("retina-agent")
    assert agent["spec"]["nodeName"] == NODE and agent["spec"]["hostNetwork"] is True
    installed.ready_pod("retina-operator")
    # The scrape job the installer wrote (helm values: no Prometheus operator in this cluster).
    values = yaml.safe_load(Path(installed.options["prometheus_helm_values_path"]).read_text())
    [job] = values["prometheus"]["prometheusSpec"]["additionalScrapeConfigs"]
    assert job["kubernetes_sd_configs"] == [{"role": "pod", "namespaces": {"names": [NAMESPACE]}}]
    sd_file = installed.tmp / "sd.json"
    sd_file.write_text(json.dumps(kubernetes_sd_targets(agent)))
    job = {k: v for k, v in job.items() if k != "kubernetes_sd_configs"}
    job["file_sd_configs"] = [{"files": [str(sd_file)]}]
    prom = PrometheusServer([], scrape_interval="1s")
    config = yaml.safe_load((prom.workdir / "prometheus.yml").read_text())
    config["scrape_configs"] = [job]
    (prom.workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    # The agent attaches to new pod veths by itself (netlink): wait for it before counting.
    started = time.monotonic()
    try:
        installed.runner.wait_for(
            "packetforward on the lab pods' veths", lambda: _attached(installed, lab.host_veths, "pf"), 60
        )
    except TimeoutError as exc:
        raise AssertionError(f"{exc}: {installed.agent_tc_programs()}") from None
    print(f"packetforward on the lab veths after waiting {time.monotonic() - started:.1f}s")
    sink = udp_sink(lab["b"], 7201)
    try:
        with prom:
            selector = f'job="retina-pods",instance="{NODE}",namespace="{NAMESPACE}"'
            pod = agent["metadata"]["name"]
            installed.runner.wait_for(
                "Prometheus scrapes the agent pod",
                lambda: prom.query(f'up{{job="retina-pods",instance="{NODE}",pod="{pod}"}} == 1'),
                timeout=90,
            )

            def counted() -> dict[str, float]:
                result = prom.query(f"sum by (direction) ({FORWARD}{{{selector}}})")
                return {r["metric"]["direction"]: float(r["value"][1]) for r in result}

            before = installed.runner.wait_for("forward_count in Prometheus", counted, timeout=60)
            # 300 packets a -> b: each enters the node at a's veth (ingress) and leaves it at b's
            # veth (egress). The node's other traffic adds to both, so these are lower bounds.
            send_udp(lab["a"], lab["b"].ip, 7201, 300)

            def rose() -> dict[str, float] | None:
                now = counted()
                grown = {d: now.get(d, 0.0) - before.get(d, 0.0) for d in ("ingress", "egress")}
                return grown if min(grown.values()) >= 300 else None

            try:
                installed.runner.wait_for("forward_count rises by 300 each way", rose, timeout=60)
            except TimeoutError as exc:
                raise AssertionError(
                    f"{exc}: before {before}, now {counted()}\n{installed.diagnose('retina-agent')}"
                ) from None
            # How the scrapes went (the figures the notes give for a loaded machine), and what
            # the earlier check (increase over the whole series) makes of the same samples.
            old_check = prom.query(f"sum(increase({FORWARD}{{{selector}}}[1h]))")
            print("sum(increase(forward_count[1h])):", old_check[0]["value"][1] if old_check else None)
            scrapes = {
                what: prom.query(f'{what}({metric}{{job="retina-pods"}}[10m])')
                for what, metric in (
                    ("count_over_time", "up"),
                    ("sum_over_time", "up"),
                    ("max_over_time", "scrape_duration_seconds"),
                    ("avg_over_time", "scrape_duration_seconds"),
                )
            }
            print(
                "scrapes of the agent pod:", {k: v[0]["value"][1] if v else None for k, v in scrapes.items()}
            )
    finally:
        sink.close()
    assert refusals_of(installed.kube, AGENT_USER) == [], "the agent's RBAC lacks what it uses"
    # It ran as one process all along (an OOM kill at start, loading its BPF objects, would restart it).
    statuses = installed.ready_pod("retina-agent")["status"]["containerStatuses"]
    assert [s["restartCount"] for s in statuses] == [0], statuses
    print(f"agent container memory (bytes): {installed.agent_memory()}")


WEB_NS, WEB = "e2e-web", "web"


def _web_deployment(image: str) -> dict[str, Any]:
    """A workload of the cluster's users: a pod that only sleeps (the test makes its traffic)."""
    labels = {"app.kubernetes.io/name": WEB}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": WEB, "namespace": WEB_NS, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "automountServiceAccountToken": False,
                    "containers": [
                        {
                            "name": WEB,
                            "image": image,
                            "command": ["sleep", "infinity"],
                            "securityContext": {
                                "runAsUser": 65534,
                                "runAsNonRoot": True,
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]},
                            },
                        }
                    ],
                },
            },
        },
    }


@pytest.fixture
def web_pod(installed: Installed) -> Any:
    """A Deployment's pod on the node's pod network, and a handle on its network namespace."""
    core = kubernetes.client.CoreV1Api(installed.admin)
    apps = kubernetes.client.AppsV1Api(installed.admin)
    core.create_namespace({"metadata": {"name": WEB_NS}})
    try:
        apps.create_namespaced_deployment(WEB_NS, _web_deployment(installed.images["agent"]))
        pod = installed.ready_pod(WEB, namespace=WEB_NS, timeout=120)
        assert installed.runner.kubelet is not None
        worker = installed.runner.kubelet.worker_for(WEB_NS, pod["metadata"]["name"])
        assert worker is not None and worker.netns is not None, "the web pod has no pod network"
        net = worker.netns
        yield pod, LabPod(pod["metadata"]["name"], net.netns, net.ip, "", net.host_veth)
    finally:
        apps.delete_namespaced_deployment(WEB, WEB_NS)
        installed.runner.wait_for(
            "the web pod's container removed",
            lambda: not [c for c in installed.runner.containers() if f"_{WEB_NS}_" in c],
            timeout=120,
        )
        core.delete_namespace(WEB_NS)


def test_pod_level_adv_forward_count_carries_pod_labels_through_the_agents_own_token(
    installed: Installed, web_pod: tuple[dict[str, Any], LabPod]
) -> None:
    """A Deployment's pod on the node's pod network: the agent, watching pods with its own
    token, counts its packets under the namespace, pod name and workload the API server holds,
    and the direction (the installer's MetricsConfiguration asks for it: the pod-traffic
    dashboard splits by it), exactly as many as the test sent."""
    pod, web = web_pod
    want = {
        "ip": pod["status"]["podIP"],
        "namespace": WEB_NS,
        "podname": pod["metadata"]["name"],
        "workload_kind": "Deployment",
        "workload_name": WEB,
    }
    try:
        installed.runner.wait_for(
            "packetparser on the web pod's veth", lambda: _attached(installed, [web.host_veth], "pp"), 60
        )
    except TimeoutError as exc:
        raise AssertionError(f"{exc}: {installed.agent_tc_programs()}") from None
    gateway = installed.runner.podnet.gateway
    host_sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    host_sink.bind((gateway, 0))
    pod_sink = udp_sink(web, 7300)  # probes into the pod are received: no ICMP comes back
    try:
        # The agent learns the pod from its watch: probe into the pod until its series appears.
        def known() -> float | None:
            send_udp_from_host(gateway, web.ip, 7300, 1)
            return _agent_metrics(installed).value(ADV_FORWARD, direction="ingress", **want) or None

        try:
            installed.runner.wait_for("the web pod's first adv_forward_count", known, timeout=90)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{installed.diagnose('retina-agent')}") from None
        # Out of the pod: exactly 50 datagrams of 100 bytes, 142 bytes each at its veth (100
        # payload + UDP 8 + IPv4 20 + Ethernet 14). Nothing else leaves it: it only sleeps, its
        # sink answers no probe, ARP is not IP.
        send_udp(web, gateway, host_sink.getsockname()[1], 50)
        egress = {**want, "direction": "egress"}
        assert _settled(installed, egress) == (50, 50 * 142)
        series = [
            s for s in _agent_metrics(installed).series(ADV_FORWARD) if s.get("podname") == want["podname"]
        ]
        assert series and all(set(s) == {*want, "direction"} for s in series), series
    finally:
        pod_sink.close()
        host_sink.close()
    assert refusals_of(installed.kube, AGENT_USER) == [], "the agent's RBAC lacks what it uses"


def send_udp_from_host(source: str, dst: str, port: int, count: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        for _ in range(count):
            s.sendto(b"x" * 100, (dst, port))


def _settled(installed: Installed, labels: dict[str, str]) -> tuple[float, float]:
    """(adv_forward_count, adv_forward_bytes) of ``labels`` once above 0 and unchanged over three
    harvest intervals (the agent reads its flow map every second): a late extra packet shows."""
    last: list[tuple[float, float]] = []

    def steady() -> tuple[float, float] | None:
        metrics = _agent_metrics(installed)
        now = (metrics.value(ADV_FORWARD, **labels), metrics.value(ADV_FORWARD_BYTES, **labels))
        last.append(now)
        return now if now[0] > 0 and len(last) >= 4 and len(set(last[-4:])) == 1 else None

    return installed.runner.wait_for("adv_forward_count settled", steady, timeout=60, interval=1.0)


# -- captures ------------------------------------------------------------------------------------
CAPTURE_NS = "default"


@pytest.fixture(scope="module")
def capture_user(installed: Installed) -> Path:
    """A user bound only as collections/retina/README.md tells a cluster admin to bind capture users."""
    return capture_user_kubeconfig_for(installed.kube)


@pytest.fixture
def moto() -> Any:
    port = free_port()
    server = Server("moto", [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], port)
    try:
        yield server.start()
    finally:
        server.stop()


def kubectl_retina(
    kubeconfig: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [str(VENV_BIN / "kubectl-retina"), "capture", *args, "--kubeconfig", str(kubeconfig)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"PATH": os.environ["PATH"], **(env or {})},
        check=False,
    )


def kubectl_retina_popen(kubeconfig: Path, *args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(VENV_BIN / "kubectl-retina"), "capture", *args, "--kubeconfig", str(kubeconfig)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"PATH": os.environ["PATH"], **env},
    )


def _s3(server: Server) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=server.url,
        region_name="us-east-1",
        aws_access_key_id=S3_KEYS["RETINA_CAPTURE_S3_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_KEYS["RETINA_CAPTURE_S3_SECRET_ACCESS_KEY"],
    )


#: The hostPath subdirectories the capture scenarios ask for (removed after the module).
CAPTURE_DIRS = ("e2e", "e2e-cr")


def _remove_capture_files(name: str) -> None:
    for base in ("/var/lib/retina/captures", "/var/log/retina/captures"):
        for path in Path(base).rglob(f"{name}-*"):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


@pytest.fixture(scope="module", autouse=True)
def _capture_dirs() -> Any:
    yield
    for sub in CAPTURE_DIRS:
        shutil.rmtree(Path("/var/lib/retina/captures") / sub, ignore_errors=True)


def _numbered(pcap: bytes, prefix: bytes) -> list[int]:
    """The sequence numbers of the ``prefix<n>`` UDP datagrams in a pcap, in capture order."""
    numbers = []
    for _, frame in dpkt.pcap.Reader(io.BytesIO(pcap)):
        at = frame.find(prefix)
        if at >= 0:
            numbers.append(int(frame[at + len(prefix) : at + len(prefix) + 6]))
    return numbers


def _pcap_of(tarball: Path) -> bytes:
    with tarfile.open(tarball) as tar:
        [member] = [m for m in tar.getmembers() if m.name.endswith(".pcap")]
        data = tar.extractfile(member)
        assert data is not None
        return data.read()


def _send_numbered_while(running: Any, pod: LabPod, dst: str, port: int, prefix: bytes) -> int:
    """Numbered datagrams from ``pod`` (20 a second) while ``running()``; bounded: 240 s."""
    sent = 0
    deadline = time.monotonic() + 240
    with pod.entered(), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        while running() and time.monotonic() < deadline:
            sock.sendto(prefix + b"%06d" % sent, (dst, port))
            sent += 1
            time.sleep(0.05)
    return sent


def test_capture_cli_as_capture_user_writes_host_path_and_s3_then_downloads_and_deletes(
    installed: Installed, capture_user: Path, moto: Server, lab, tmp_path: Path
) -> None:
    name = "e2e-cap"
    _s3(moto).create_bucket(Bucket="captures")
    port, prefix = 7301, b"retina-e2e-"
    sink = udp_sink(lab["b"], port)
    create = kubectl_retina_popen(
        capture_user,
        "create",
        "-n",
        CAPTURE_NS,
        "--name",
        name,
        "--node-names",
        NODE,
        "--duration",
        "3s",
        "--interfaces",
        lab["a"].host_veth,
        "--tcpdump-filter",
        f"udp dst port {port}",
        "--host-path",
        "e2e",
        "--s3-bucket",
        "captures",
        "--s3-endpoint",
        moto.url,
        "--s3-region",
        "us-east-1",
        env=S3_KEYS,
    )
    try:
        # a -> b while the capture runs: tcpdump on a's host veth sees each datagram once
        _send_numbered_while(lambda: create.poll() is None, lab["a"], lab["b"].ip, port, prefix)
        out, err = create.communicate(timeout=60)
        assert create.returncode == 0, out + err
        on_node = sorted(Path("/var/lib/retina/captures/e2e").glob(f"{name}-{NODE}-*UTC.tar.gz"))
        assert len(on_node) == 1, (on_node, out)
        keys = [o["Key"] for o in _s3(moto).list_objects_v2(Bucket="captures").get("Contents", [])]
        assert keys == [f"retina/captures/{on_node[0].name}"]
        s3_bytes = _s3(moto).get_object(Bucket="captures", Key=keys[0])["Body"].read()
        assert s3_bytes == on_node[0].read_bytes()
        # real packets: an unbroken run of the numbered datagrams, none twice
        numbers = _numbered(_pcap_of(on_node[0]), prefix)
        assert numbers and numbers == list(range(numbers[0], numbers[0] + len(numbers))), numbers
        # nothing of a successful capture stays in the node's build directory
        assert not list(Path("/var/log/retina/captures").glob(f"{name}-*"))
        downloaded = tmp_path / "download"
        proc = kubectl_retina(
            capture_user, "download", "-n", CAPTURE_NS, "--name", name, "-o", str(downloaded)
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert [p.read_bytes() for p in downloaded.glob("*.tar.gz")] == [on_node[0].read_bytes()]
        proc = kubectl_retina(capture_user, "delete", "-n", CAPTURE_NS, "--name", name)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        batch = kubernetes.client.BatchV1Api(installed.admin)
        assert batch.list_namespaced_job(CAPTURE_NS, label_selector=f"capture-name={name}").items == []
        installed.runner.wait_for(
            "capture containers removed",
            lambda: not [c for c in installed.runner.containers() if f"_{name}-" in c],
        )
        assert refusals_of(installed.kube, CAPTURE_USER) == [], "the capture user's RBAC lacks what it uses"
    finally:
        if create.poll() is None:
            create.kill()
            create.communicate()
        sink.close()
        _remove_capture_files(name)


def test_upload_failure_keeps_the_tarball_on_the_node_and_the_pod_says_where(
    installed: Installed, capture_user: Path, moto: Server
) -> None:
    name = "e2e-down"
    endpoint = moto.url
    moto.stop()  # the S3 endpoint is down
    try:
        proc = kubectl_retina(
            capture_user,
            "create",
            "-n",
            CAPTURE_NS,
            "--name",
            name,
            "--node-names",
            NODE,
            "--duration",
            "2s",
            "--s3-bucket",
            "captures",
            "--s3-endpoint",
            endpoint,
            "--s3-region",
            "us-east-1",
            env=S3_KEYS,
        )
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "failed on 1 node(s)" in proc.stderr
        [pod] = [
            p
            for p in installed.kube.objects("Pod", CAPTURE_NS)
            if p["metadata"].get("labels", {}).get("capture-name") == name
        ]
        terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
        assert terminated["exitCode"] == 1
        message = terminated["message"]
        kept = [w.rstrip(",") for w in message.split() if w.startswith("/var/log/retina/captures/")]
        assert kept, message
        path = Path(kept[0])
        assert path.is_file() and path.name.startswith(f"{name}-{NODE}-"), message
        with tarfile.open(path) as tar:
            assert any(m.name.endswith(".pcap") for m in tar.getmembers())
        assert "s3 output failed" in message
        # The CLI sends the user to the Job logs: kubectl, as the capture user, shows the path.
        hint = f"kubectl logs -n {CAPTURE_NS} -l retina.sh/app=capture,capture-name={name}"
        assert hint in proc.stderr, proc.stderr
        logs = subprocess.run(
            ["kubectl", "--kubeconfig", str(capture_user), *hint.split()[1:]],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert logs.returncode == 0, logs.stderr
        assert f"the capture was kept on this node at {path}" in logs.stdout, logs.stdout[-3000:]
        proc = kubectl_retina(capture_user, "delete", "-n", CAPTURE_NS, "--name", name)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    finally:
        _remove_capture_files(name)


def _capture_resource(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "retina.sh/v1alpha1",
        "kind": "Capture",
        "metadata": {"name": name},
        "spec": {
            "captureConfiguration": {
                "captureTarget": {"nodeNames": [NODE]},
                "captureOption": {"duration": "2s"},
            },
            "outputConfiguration": {"hostPath": "e2e-cr"},
        },
    }


def test_a_capture_resource_runs_through_the_operator_and_its_deletion_completes(
    installed: Installed, capture_user: Path
) -> None:
    name = "e2e-cr"
    client = kubernetes.config.new_client_from_config(config_file=str(capture_user))
    crs = kubernetes.client.CustomObjectsApi(client)
    try:
        crs.create_namespaced_custom_object(
            "retina.sh", "v1alpha1", CAPTURE_NS, "captures", _capture_resource(name)
        )

        def finished() -> dict[str, Any] | None:
            obj = crs.get_namespaced_custom_object("retina.sh", "v1alpha1", CAPTURE_NS, "captures", name)
            conditions = {c["type"]: c["status"] for c in (obj.get("status") or {}).get("conditions") or []}
            return obj if "True" in (conditions.get("Complete"), conditions.get("Failed")) else None

        try:
            done = installed.runner.wait_for("Capture finished (status from the operator)", finished, 180)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{installed.diagnose('retina-operator')}") from None
        status = done["status"]
        assert (status["succeeded"], status["failed"], status["active"]) == (1, 0, 0), status
        assert FINALIZER in done["metadata"]["finalizers"]  # what the deletion below must release
        kept = sorted(Path("/var/lib/retina/captures/e2e-cr").glob(f"{name}-{NODE}-*UTC.tar.gz"))
        assert len(kept) == 1, kept
        _pcap_of(kept[0])  # a tarball holding one pcap
        crs.delete_namespaced_custom_object("retina.sh", "v1alpha1", CAPTURE_NS, "captures", name)

        def gone() -> bool:
            try:
                crs.get_namespaced_custom_object("retina.sh", "v1alpha1", CAPTURE_NS, "captures", name)
            except kubernetes.client.ApiException as exc:
                return exc.status == 404
            return False

        try:
            installed.runner.wait_for(
                "Capture deleted (the operator removed its finalizer)", gone, timeout=120
            )
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{installed.diagnose('retina-operator')}") from None
        assert (
            kubernetes.client.BatchV1Api(installed.admin)
            .list_namespaced_job(CAPTURE_NS, label_selector=f"capture-name={name}")
            .items
            == []
        )
        assert refusals_of(installed.kube, OPERATOR_USER) == [], "the operator's RBAC lacks what it uses"
    finally:
        client.close()
        _remove_capture_files(name)


# -- uninstall: last ---------------------------------------------------------------------------------
KINDS = (
    "Pod",
    "DaemonSet",
    "Deployment",
    "ReplicaSet",
    "Job",
    "Secret",
    "ConfigMap",
    "ServiceAccount",
    "Service",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
    "Namespace",
    "CustomResourceDefinition",
)


def _ours(kube: Any) -> list[str]:
    found = []
    for kind in KINDS:
        for obj in kube.objects(kind):
            labels = obj["metadata"].get("labels") or {}
            if (
                labels.get("app.kubernetes.io/managed-by") == "retina-installer"
                or labels.get("retina.sh/app") == "capture"
                or "retina.sh" in obj["metadata"]["name"]
            ):
                found.append(f"{kind}/{obj['metadata'].get('namespace', '')}/{obj['metadata']['name']}")
    return found


def _writable_host_paths(kube: Any) -> set[str]:
    """Host paths that a workload of ours mounts writable (DaemonSet, Deployment, capture Jobs)."""
    paths = set()
    for kind in ("DaemonSet", "Deployment", "Job"):
        for obj in kube.objects(kind):
            spec = obj["spec"]["template"]["spec"]
            host = {v["name"]: v["hostPath"]["path"] for v in spec.get("volumes") or [] if "hostPath" in v}
            for container in spec.get("initContainers", []) + spec["containers"]:
                for mount in container.get("volumeMounts") or []:
                    if mount["name"] in host and not mount.get("readOnly"):
                        paths.add(host[mount["name"]])
    return paths


def test_uninstall_with_a_capture_present_leaves_nothing_of_ours(
    installed: Installed, lab, capture_user: Path
) -> None:
    kube = installed.kube
    name = "e2e-left"
    # what the agent attached (it must all be gone afterwards), as <start time> of its process
    programs = installed.agent_tc_programs()
    assert programs, "the agent pod attached nothing"
    agent_start = programs[0].rsplit(".", 1)[1]
    client = kubernetes.config.new_client_from_config(config_file=str(capture_user))
    port, prefix = 7302, b"retina-left-"
    body = _capture_resource(name)
    body["spec"]["captureConfiguration"]["captureOption"]["duration"] = "10m"  # still running
    # Only the test's datagrams: the kept tarball's content is known, whatever else the machine carries.
    body["spec"]["captureConfiguration"]["tcpdumpFilter"] = f"udp dst port {port}"
    kubernetes.client.CustomObjectsApi(client).create_namespaced_custom_object(
        "retina.sh", "v1alpha1", CAPTURE_NS, "captures", body
    )
    client.close()

    def capturing() -> bool:
        return any(
            (p.get("status") or {}).get("phase") == "Running"
            for p in kube.objects("Pod", CAPTURE_NS)
            if p["metadata"].get("labels", {}).get("capture-name") == name
        )

    installed.runner.wait_for("the capture's pod running", capturing, timeout=120)
    # The capture pod's log, kept past its removal (it tells how the stop went).
    [container] = [c for c in installed.runner.containers() if f"_{name}-" in c]
    log_file = installed.tmp / f"{name}.log"
    follow = subprocess.Popen(
        podman_argv("logs", "-f", "-t", container), stdout=log_file.open("w"), stderr=subprocess.STDOUT
    )
    writable = _writable_host_paths(kube)
    # Every host path a workload of ours may write is one the product documents.
    assert writable <= set(HOST_PATHS), writable
    # Numbered datagrams a -> b until the uninstall is over (the capture is stopped meanwhile).
    uninstalling = threading.Event()
    sink = udp_sink(lab["b"], port)
    sender = threading.Thread(
        target=_send_numbered_while,
        args=(lambda: not uninstalling.is_set(), lab["a"], lab["b"].ip, port, prefix),
        daemon=True,
    )
    sender.start()
    try:
        started = time.monotonic()
        try:
            proc = installed.playbook("uninstall.yml")
        finally:
            uninstalling.set()
            sender.join(30)
            sink.close()
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
        print(f"uninstall.yml took {time.monotonic() - started:.0f}s")
        assert _ours(kube) == [], "left in the cluster"
        installed.runner.wait_for(
            "every container gone", lambda: installed.runner.containers() == [], timeout=120
        )
        assert [f for f in our_tc_filters() if f.endswith(f".{agent_start}")] == [], "TC programs left"
        state = Path("/var/run/retina/tc-state.json")
        assert not state.exists() or json.loads(state.read_text()) == {}, "qdiscs the agent made are left"
        listing = host_path_listing()
        assert not [p for p in listing["/sys/fs/bpf"] if "retina" in p], "pinned BPF objects"
        # The deleted capture stopped early and still wrote what it had to its output (the
        # user's hostPath); nothing of it stays in the node's build directory.
        kept = sorted(Path("/var/lib/retina/captures/e2e-cr").glob(f"{name}-{NODE}-*UTC.tar.gz"))
        with contextlib.suppress(subprocess.TimeoutExpired):
            follow.wait(30)  # ends with the container
        assert len(kept) == 1, f"{kept}\ncapture pod log:\n{log_file.read_text()[-3000:]}"
        assert not list(Path("/var/log/retina/captures").glob(f"{name}-*"))
        # ... holding an unbroken run of the datagrams (tcpdump on "any" sees each at a's and b's veth)
        seen = sorted(set(_numbered(_pcap_of(kept[0]), prefix)))
        assert seen and seen == list(range(seen[0], seen[0] + len(seen))), seen
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()
        _remove_capture_files(name)
