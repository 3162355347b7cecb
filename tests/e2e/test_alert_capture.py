"""Alert-triggered capture, the whole chain with the installed system: ``install.yml`` with the
webhook receiver and the example CaptureTriggers enabled, the agent and the operator running as
the rendered DaemonSet/Deployment on the node runner; a lab pod whose iptables drops the UDP it
is sent; a real Prometheus scraping the agent pod with the shipped alert rules; a real
Alertmanager with the shipped receiver/route snippet posting to the operator's Service; the
operator creates the Capture, the node runner runs its Job, and the pcap holds the dropped
datagrams.

Shortened for a test, and only that: the ``for: 5m`` of RetinaNamespaceDropsRising becomes
:data:`TEST_FOR` (the rules offer no option for it); its expression is the shipped one. On a
fresh Prometheus the expression's ``[1h] offset 5m`` baseline is empty, as for a namespace that
dropped nothing the hour before. The Alertmanager around the snippet is configured as
kube-prometheus-stack's default (root route: group_wait 30s, group_interval 5m).

The time from the alert firing to the first captured packet is printed (``pytest -s``) and
appended to ``$RETINA_TIMING_FILE`` when it is set.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import secrets
import subprocess
import tarfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dpkt
import kubernetes
import pytest
import requests
import yaml

from retina_lab.agent import free_port
from retina_lab.alertmanager import AlertmanagerServer
from retina_lab.kube import KubeEmulator
from retina_lab.noderunner import NodeRunner
from retina_lab.prometheus import PrometheusServer
from tests.e2e.conftest import NAMESPACE, NODE, Installed
from tests.e2e.test_scenarios import kubernetes_sd_targets
from tests.images.conftest import built_images  # noqa: F401 (the fixture: images as shipped)
from tests.installer.ansible_run import REPO, localhost_inventory
from tests.kube_fixtures import OPERATOR_USER, refusals_of

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

RULES = REPO / "deploy" / "prometheus" / "retina-alerts.rules.yml"
RECEIVER_SNIPPET = REPO / "deploy" / "alertmanager" / "alertmanager-receiver.yaml"
ALERT = "RetinaNamespaceDropsRising"
TRIGGER = "namespace-drops"  # deploy/alertmanager/triggers/namespace-drops.yaml, installed by the role
WEBHOOK_SECRET = "retina-capture-webhook"  # agent_capture_webhook_token_secret's default
#: The rule's ``for`` in this test (shipped: 5m).
TEST_FOR = "10s"
MARK = b"retina-alert-"
GROUP, VERSION = "retina.sh", "v1alpha1"


@dataclass
class Site:
    installed: Installed
    token: str
    token_file: Path  # the Secret as it is mounted into Alertmanager

    @property
    def kube(self) -> KubeEmulator:
        return self.installed.kube

    def webhook_url(self) -> str:
        """``http://retina-capture-webhook.retina-system.svc:<port>`` as kube-proxy resolves it: the
        Service's selector picks the ready operator pod, its ``targetPort`` names the pod's port."""
        [service] = [
            s
            for s in self.kube.objects("Service", NAMESPACE)
            if s["metadata"]["name"] == "retina-capture-webhook"
        ]
        [port] = service["spec"]["ports"]
        pod = self.installed.ready_pod("retina-operator")
        labels = pod["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items())
        [container_port] = [
            p["containerPort"]
            for c in pod["spec"]["containers"]
            for p in c.get("ports") or []
            if p.get("name") == port["targetPort"]
        ]
        return f"http://{pod['status']['podIP']}:{container_port}"


@pytest.fixture(scope="module")
def site(
    built_images: dict[str, str],  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Site]:
    """install.yml with ``agent_capture_webhook_enabled`` and ``agent_capture_triggers_examples``,
    after the admin made the namespace and the token Secret, as the role's defaults document."""
    if os.geteuid() != 0:
        pytest.fail("the end-to-end scenarios need root (rootful podman, network namespaces, BPF)")
    tmp = tmp_path_factory.mktemp("e2e-alert")
    inventory = localhost_inventory(tmp)
    token = secrets.token_urlsafe(32)
    token_file = tmp / "alertmanager-secrets" / "token"
    token_file.parent.mkdir()
    token_file.write_text(token)
    token_file.chmod(0o600)
    options = {
        "retina_become": False,
        "preflight_report_dir": str(tmp / "preflight"),
        "agent_port": free_port(),
        "agent_pod_level": True,  # adv_drop_count{namespace}: what RetinaNamespaceDropsRising reads
        "agent_metrics_interval": "1s",
        "prometheus_helm_values_path": str(tmp / "retina-prometheus-values.yaml"),
        "prometheus_scrape_interval": "1s",
        "agent_capture_webhook_enabled": True,
        "agent_capture_triggers_examples": True,
    }
    with KubeEmulator() as kube, NodeRunner.for_emulator(kube, nodes=[NODE]) as runner:
        admin = kubernetes.config.new_client_from_config(config_file=str(kube.kubeconfig_path))
        core = kubernetes.client.CoreV1Api(admin)
        core.create_namespace({"metadata": {"name": NAMESPACE}})
        core.create_namespaced_secret(
            NAMESPACE, {"metadata": {"name": WEBHOOK_SECRET}, "stringData": {"token": token}}
        )
        state = Installed(
            kube, runner, tmp, inventory, options, admin, options["agent_port"], dict(built_images)
        )
        started = time.monotonic()
        proc = state.playbook("install.yml")
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
        print(f"install.yml took {time.monotonic() - started:.0f}s")
        try:
            yield Site(state, token, token_file)
        finally:
            admin.close()


def trigger_object(site: Site) -> dict[str, Any]:
    [obj] = [t for t in site.kube.objects("CaptureTrigger", NAMESPACE) if t["metadata"]["name"] == TRIGGER]
    return obj


def accepted_trigger(site: Site) -> dict[str, Any]:
    def accepted() -> dict[str, Any] | None:
        obj = trigger_object(site)
        conditions = (obj.get("status") or {}).get("conditions") or []
        return obj if any(c["type"] == "Accepted" and c["status"] == "True" for c in conditions) else None

    try:
        return site.installed.runner.wait_for("the example CaptureTrigger Accepted", accepted, timeout=120)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{site.installed.diagnose('retina-operator')}") from None


def captures(site: Site) -> list[dict[str, Any]]:
    return site.kube.objects("Capture", NAMESPACE)


# -- refused requests change nothing ---------------------------------------------------------------
def notification(labels: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {
        "version": "4",
        "groupKey": "{}:{}",
        "status": "firing",
        "receiver": "retina-capture-namespace-drops",
        "groupLabels": {},
        "commonLabels": labels,
        "commonAnnotations": {},
        "externalURL": "http://alertmanager",
        "alerts": [
            {
                "status": "firing",
                "labels": labels,
                "annotations": {},
                "startsAt": "2026-01-01T00:00:00Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "fingerprint": "0123456789abcdef",
            }
        ],
        **extra,
    }


def test_the_installed_receiver_refuses_bad_requests_and_nothing_changes(site: Site) -> None:
    before = accepted_trigger(site)
    base = site.webhook_url()
    hook = f"{base}/v1/triggers/{NAMESPACE}/{TRIGGER}"
    good = notification({"alertname": ALERT, "namespace": "default", "reason": "NETFILTER_DROP"})
    bearer = {"Authorization": f"Bearer {site.token}"}

    def post(url: str, body: Any, headers: dict[str, str]) -> requests.Response:
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        return requests.post(url, data=data, headers=headers, timeout=30)

    answers = {
        "no token": post(hook, good, {}),
        "wrong token": post(hook, good, {"Authorization": "Bearer " + secrets.token_urlsafe(32)}),
        "basic auth": post(hook, good, {"Authorization": "Basic " + site.token}),
        "not JSON": post(hook, "{firing", bearer),
        "version 3": post(hook, {**good, "version": "3"}, bearer),
        "labels not strings": post(hook, notification({"alertname": ALERT, "namespace": 7}), bearer),  # type: ignore[dict-item]
        "status unknown": post(
            hook, {**good, "alerts": [{**good["alerts"][0], "status": "pending"}]}, bearer
        ),
        "unknown trigger": post(f"{base}/v1/triggers/{NAMESPACE}/no-such-trigger", good, bearer),
        "trigger of another namespace": post(f"{base}/v1/triggers/default/{TRIGGER}", good, bearer),
        "over 1 MiB": post(hook, b"{" + b" " * (1 << 20) + b"}", bearer),
    }
    codes = {what: r.status_code for what, r in answers.items()}
    assert codes == {
        "no token": 401,
        "wrong token": 401,
        "basic auth": 401,
        "not JSON": 400,
        "version 3": 400,
        "labels not strings": 400,
        "status unknown": 400,
        "unknown trigger": 404,
        "trigger of another namespace": 404,
        "over 1 MiB": 413,
    }, {what: r.text[:200] for what, r in answers.items()}
    assert "alerts[0].labels" in answers["labels not strings"].text
    assert "version" in answers["version 3"].text
    # nothing changed: no Capture, the trigger untouched (same resourceVersion, no decision in status)
    assert captures(site) == []
    after = trigger_object(site)
    assert after.get("status") == before.get("status") and "lastAction" not in (after.get("status") or {})
    assert site.kube.objects("Job", NAMESPACE) == []
    # the token never shows in the operator's log
    logs = site.installed.diagnose("retina-operator")
    assert site.token not in logs


# -- the chain ---------------------------------------------------------------------------------------
@dataclass
class DropTarget:
    namespace: str
    pod: str
    ip: str
    netns: str
    port: int


@pytest.fixture
def drop_target(site: Site, built_images: dict[str, str]) -> Iterator[DropTarget]:  # noqa: F811
    """A pod in a namespace of its own on the node's pod network, whose netns drops UDP to ``port``."""
    core = kubernetes.client.CoreV1Api(site.installed.admin)
    namespace = f"shop-{secrets.token_hex(3)}"
    core.create_namespace({"metadata": {"name": namespace}})
    body = {
        "metadata": {"name": "cart", "namespace": namespace, "labels": {"app": "cart"}},
        "spec": {
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 0,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 65534,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "cart",
                    "image": built_images["agent"],
                    "command": ["sleep", "3600"],
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }
    core.create_namespaced_pod(namespace, body)
    runner = site.installed.runner

    def running() -> dict[str, Any] | None:
        pod = next((p for p in site.kube.objects("Pod", namespace) if p["metadata"]["name"] == "cart"), None)
        status = (pod or {}).get("status") or {}
        return pod if status.get("phase") == "Running" and status.get("podIP") else None

    pod = runner.wait_for("the lab pod Running", running, timeout=120)
    assert runner.kubelet is not None
    worker = runner.kubelet.worker_for(namespace, "cart")
    assert worker is not None and worker.netns is not None
    port = free_port()
    target = DropTarget(namespace, "cart", pod["status"]["podIP"], worker.netns.netns, port)
    subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            target.netns,
            "iptables",
            "-w",
            "-A",
            "INPUT",
            "-p",
            "udp",
            "--dport",
            str(port),
            "-j",
            "DROP",
        ],
        check=True,
    )
    try:
        yield target
    finally:
        core.delete_namespaced_pod("cart", namespace, grace_period_seconds=0)  # its netns and rule go with it
        runner.wait_for(
            "the lab pod's container removed",
            lambda: not [c for c in runner.containers() if f"_cart_{namespace}_" in c],
            60,
        )


def dropped_by_rule(target: DropTarget) -> int:
    """Packets the pod's DROP rule has dropped (the kernel's own counter)."""
    out = subprocess.run(
        ["ip", "netns", "exec", target.netns, "iptables", "-w", "-L", "INPUT", "-v", "-x", "-n"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    [line] = [ln for ln in out.splitlines() if "DROP" in ln and f"dpt:{target.port}" in ln]
    return int(line.split()[0])


class Sender(threading.Thread):
    """Numbered datagrams to the pod, 20 a second, until stopped (and never beyond 15 minutes)."""

    def __init__(self, target: DropTarget) -> None:
        super().__init__(daemon=True)
        self.target, self.sent, self.stop = target, 0, threading.Event()

    def run(self) -> None:
        import socket

        deadline = time.monotonic() + 900
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            while not self.stop.is_set() and time.monotonic() < deadline:
                sock.sendto(MARK + f"{self.sent:06d}".encode(), (self.target.ip, self.target.port))
                self.sent += 1
                self.stop.wait(0.05)


def test_rules_and_snippet_of_the_collection_are_what_this_test_runs() -> None:
    """The shortened rule differs from the shipped one in ``for`` only; the snippet routes the alert."""
    shipped = rules_with_for(TEST_FOR)
    original = yaml.safe_load(RULES.read_text())
    changed = [
        (a["alert"], a.get("for"), b.get("for"))
        for ga, gb in zip(original["groups"], shipped["groups"], strict=True)
        for a, b in zip(ga["rules"], gb["rules"], strict=True)
        if a != b
    ]
    assert changed == [(ALERT, "5m", TEST_FOR)]
    snippet = yaml.safe_load(RECEIVER_SNIPPET.read_text())
    [route] = [r for r in snippet["route"]["routes"] if r["matchers"] == [f'alertname="{ALERT}"']]
    assert route["receiver"] == f"retina-capture-{TRIGGER}"


POD_LEVEL_METRICS = """# TYPE networkobservability_adv_drop_count gauge
networkobservability_adv_drop_count{direction="ingress",ip="10.0.0.5",namespace="shop",podname="cart",\
reason="NETFILTER_DROP",workload_kind="unknown",workload_name="unknown"} 42
# TYPE networkobservability_drop_count gauge
networkobservability_drop_count{direction="ingress",reason="NETFILTER_DROP"} 42
"""


def test_pod_level_series_keep_their_namespace_through_the_shipped_scrape_job(tmp_path: Path) -> None:
    """The shipped job sets the target label ``namespace`` (the agent pod's); a pod-level series'
    own ``namespace`` (the pod it is about) must win, or RetinaNamespaceDropsRising names the
    agent's namespace for every namespace's drops (found by the chain below). The Prometheus
    operator's monitors add ``namespace`` too: they honour the series' labels as well."""
    import http.server

    class Metrics(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            body = POD_LEVEL_METRICS.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    agent = {
        "metadata": {
            "namespace": NAMESPACE,
            "name": "retina-agent-x1",
            "labels": {"app.kubernetes.io/name": "retina-agent"},
            "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": str(server.server_port)},
        },
        "spec": {
            "nodeName": NODE,
            "containers": [{"name": "retina-agent", "ports": [{"name": "metrics", "containerPort": 1}]}],
        },
        "status": {
            "podIP": "127.0.0.1",
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }
    (job,) = yaml.safe_load((REPO / "deploy" / "prometheus" / "retina-pods.scrape.yaml").read_text())
    job = {k: v for k, v in job.items() if k != "kubernetes_sd_configs"}
    (tmp_path / "sd.json").write_text(json.dumps(kubernetes_sd_targets(agent)))
    job["file_sd_configs"] = [{"files": [str(tmp_path / "sd.json")]}]
    prom = PrometheusServer([], scrape_interval="1s")
    config = yaml.safe_load((prom.workdir / "prometheus.yml").read_text())
    config["scrape_configs"] = [job]
    (prom.workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    try:
        with prom:
            deadline = time.monotonic() + 60
            while (
                not (adv := prom.query("networkobservability_adv_drop_count")) and time.monotonic() < deadline
            ):
                time.sleep(0.5)
            node = prom.query("networkobservability_drop_count")
    finally:
        server.shutdown()
    assert [s["metric"]["namespace"] for s in adv] == ["shop"]
    assert "exported_namespace" not in adv[0]["metric"]
    assert [s["metric"]["namespace"] for s in node] == [NAMESPACE]  # the target's, where the series has none
    assert adv[0]["metric"]["instance"] == NODE and adv[0]["metric"]["pod"] == "retina-agent-x1"
    for monitor, key in (("podmonitor.yaml", "podMetricsEndpoints"), ("servicemonitor.yaml", "endpoints")):
        [endpoint] = yaml.safe_load((REPO / "deploy" / "prometheus" / monitor).read_text())["spec"][key]
        assert endpoint["honorLabels"] is True, monitor


def rules_with_for(duration: str) -> dict[str, Any]:
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == ALERT:
                rule["for"] = duration
    return rules


def alertmanager_config(site: Site) -> dict[str, Any]:
    """kube-prometheus-stack's default Alertmanager config with the shipped snippet merged in; the
    Service URL resolved as kube-proxy would, the credentials file where the Secret is mounted."""
    snippet = yaml.safe_load(RECEIVER_SNIPPET.read_text())
    service = "http://retina-capture-webhook.retina-system.svc:9095"
    receivers = []
    for receiver in snippet["receivers"]:
        for hook in receiver["webhook_configs"]:
            assert hook["url"].startswith(service + "/"), hook["url"]
            hook["url"] = site.webhook_url() + hook["url"].removeprefix(service)
            hook["http_config"]["authorization"]["credentials_file"] = str(site.token_file)
        receivers.append(receiver)
    return {
        "route": {
            "receiver": "null",
            "group_by": ["namespace"],
            "group_wait": "30s",
            "group_interval": "5m",
            "repeat_interval": "12h",
            "routes": snippet["route"]["routes"],
        },
        "receivers": [{"name": "null"}, *receivers],
    }


def prometheus_for(site: Site, am: AlertmanagerServer) -> PrometheusServer:
    """The installed scrape job (file_sd in place of Kubernetes SD, which Debian's Prometheus lacks),
    the shipped rules with the test's ``for``, alerts sent to ``am``."""
    agent = site.installed.ready_pod("retina-agent")
    values = yaml.safe_load(Path(site.installed.options["prometheus_helm_values_path"]).read_text())
    [job] = values["prometheus"]["prometheusSpec"]["additionalScrapeConfigs"]
    sd_file = site.installed.tmp / "sd.json"
    sd_file.write_text(json.dumps(kubernetes_sd_targets(agent)))
    job = {k: v for k, v in job.items() if k != "kubernetes_sd_configs"}
    job["file_sd_configs"] = [{"files": [str(sd_file)]}]
    rules_file = site.installed.tmp / "retina-alerts.rules.yml"
    rules_file.write_text(yaml.safe_dump(rules_with_for(TEST_FOR)))
    prom = PrometheusServer([], scrape_interval="1s", rule_files=[str(rules_file)])
    config = yaml.safe_load((prom.workdir / "prometheus.yml").read_text())
    config["scrape_configs"] = [job]
    config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am.port}"]}]}]}
    (prom.workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    return prom


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def rfc3339(text: str) -> float:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def marked_packets(tarball: Path) -> list[tuple[float, dpkt.ip.IP]]:
    """(timestamp, IPv4 packet) of every datagram carrying the test's marker in the tarball's pcaps
    (``-i any`` writes Linux cooked headers: the IP header is found from the payload's end)."""
    found = []
    with tarfile.open(tarball) as tar:
        for member in tar.getmembers():
            if not member.name.endswith(".pcap"):
                continue
            data = tar.extractfile(member)
            assert data is not None
            for ts, buf in dpkt.pcap.Reader(io.BytesIO(data.read())):
                start = buf.find(MARK)
                if start < 0:
                    continue
                ip = dpkt.ip.IP(buf[start - 28 :])  # IPv4 without options + UDP header
                found.append((float(ts), ip))
    return found


def test_a_firing_alert_captures_the_dropped_packets(site: Site, drop_target: DropTarget) -> None:
    accepted_trigger(site)
    sender = Sender(drop_target)
    created: dict[str, Any] = {}
    with AlertmanagerServer(alertmanager_config(site)) as am, prometheus_for(site, am) as prom:
        sender.start()
        try:

            def the_capture() -> dict[str, Any] | None:
                found = [
                    c
                    for c in captures(site)
                    if c["metadata"]["labels"].get("retina.sh/trigger") == TRIGGER
                    and c["metadata"]["annotations"].get("retina.sh/trigger-target")
                    == f"namespace:{drop_target.namespace}"
                ]
                if captures(site) and not found:
                    print("other captures:", [c["metadata"]["annotations"] for c in captures(site)])
                    print("alertmanager alerts:", [a["labels"] for a in get_json(am.url + "/api/v2/alerts")])
                return found[0] if found else None

            try:
                created = site.installed.runner.wait_for(
                    "a Capture made by the trigger", the_capture, timeout=420
                )
            except TimeoutError as exc:
                alerts = get_json(prom.url + "/api/v1/alerts")["data"]["alerts"]
                series = prom.query(
                    f'networkobservability_adv_drop_count{{namespace="{drop_target.namespace}"}}'
                )
                raise AssertionError(
                    f"{exc}\nprometheus alerts: {alerts}\nadv_drop_count: {series}\n"
                    f"trigger status: {trigger_object(site).get('status')}\n"
                    f"alertmanager log: {am.log_text[-3000:]}\n{site.installed.diagnose('retina-operator')}"
                ) from None
            name = created["metadata"]["name"]
            # Alertmanager's view of the alert: when it fired, which labels it has.
            [am_alert] = [
                a
                for a in get_json(am.url + "/api/v2/alerts")
                if a["labels"].get("alertname") == ALERT
                and a["labels"].get("namespace") == drop_target.namespace
            ]
            [prom_alert] = [
                a
                for a in get_json(prom.url + "/api/v1/alerts")["data"]["alerts"]
                if a["labels"].get("alertname") == ALERT
                and a["labels"].get("namespace") == drop_target.namespace
            ]

            def finished() -> str | None:
                """The Capture's outcome from its conditions (Complete / Failed), as Retina reports it."""
                [obj] = [c for c in captures(site) if c["metadata"]["name"] == name]
                done = {
                    c["type"]
                    for c in (obj.get("status") or {}).get("conditions") or []
                    if c["status"] == "True"
                }
                return "Failed" if "Failed" in done else "Succeeded" if "Complete" in done else None

            try:
                phase = site.installed.runner.wait_for("the Capture finished", finished, timeout=300)
            except TimeoutError as exc:
                raise AssertionError(f"{exc}\n{site.installed.diagnose('retina-operator')}") from None
        finally:
            sender.stop.set()
            sender.join(10)
    try:
        assert phase == "Succeeded", [c.get("status") for c in captures(site)]
        # What the trigger made: the namespace's pod, on its node, for the alert that fired.
        config = created["spec"]["captureConfiguration"]
        assert config["captureTarget"] == {"nodeNames": [NODE]}
        assert config["filters"]["include"] == [drop_target.ip]
        assert created["metadata"]["annotations"]["retina.sh/alert"] == ALERT
        assert (
            created["metadata"]["annotations"]["retina.sh/trigger-target"]
            == f"namespace:{drop_target.namespace}"
        )
        assert created["metadata"]["labels"]["retina.sh/alert-fingerprint"] == am_alert["fingerprint"]
        # One Capture for the namespace (more alerts of it, e.g. other drop reasons, meet the cooldown).
        status = trigger_object(site)["status"]
        [target] = [
            t for t in status["targets"].values() if t["target"] == f"namespace:{drop_target.namespace}"
        ]
        assert target["capture"] == name and status["counts"]["Created"] >= 1
        assert [
            c["metadata"]["name"]
            for c in captures(site)
            if c["metadata"]["annotations"]["retina.sh/trigger-target"]
            == f"namespace:{drop_target.namespace}"
        ] == [name]

        # The pcap holds the dropped datagrams: to the pod's IP and port, with the test's numbers.
        [tarball] = Path("/var/lib/retina/captures/alerts").glob(f"{name}-{NODE}-*UTC.tar.gz")
        packets = marked_packets(tarball)
        assert packets, f"no datagram of the test in {tarball}"
        assert {(ip.dst, ip.data.dport) for _, ip in packets} == {
            (bytes(map(int, drop_target.ip.split("."))), drop_target.port)
        }
        numbers = sorted({int(ip.data.data.removeprefix(MARK)) for _, ip in packets})
        assert numbers == list(range(numbers[0], numbers[-1] + 1)), "datagrams missing from the capture"
        # ... and the kernel dropped every datagram sent: the rule's own counter says so.
        site.installed.runner.wait_for(
            f"the DROP rule counting all {sender.sent} datagrams sent",
            lambda: dropped_by_rule(drop_target) == sender.sent,
            timeout=10,
        )
        assert numbers[-1] < sender.sent

        first_packet = min(ts for ts, _ in packets)
        fired = rfc3339(am_alert["startsAt"])
        active = rfc3339(prom_alert["activeAt"])
        capture_made = rfc3339(created["metadata"]["creationTimestamp"])
        [job_pod] = [
            p
            for p in site.kube.objects("Pod", NAMESPACE)
            if (p["metadata"].get("labels") or {}).get("capture-name") == name
        ]
        worker_started = rfc3339(
            job_pod["status"]["containerStatuses"][0]["state"]["terminated"]["startedAt"]
        )
        report = (
            f"alert {ALERT} (for: {TEST_FOR}): Prometheus activeAt {prom_alert['activeAt']}, "
            f"Alertmanager startsAt {am_alert['startsAt']}; Capture {name} created "
            f"{capture_made - fired:+.0f} s, its Job's worker started {worker_started - fired:+.0f} s "
            "(API timestamps: whole seconds); first captured packet "
            f"{first_packet - fired:.2f} s after startsAt ({first_packet - active:.2f} s after activeAt); "
            f"{len(numbers)} dropped datagrams captured"
        )
        print(report)
        if os.environ.get("RETINA_TIMING_FILE"):
            with open(os.environ["RETINA_TIMING_FILE"], "a") as fh:
                fh.write(report + "\n")
        assert refusals_of(site.kube, OPERATOR_USER) == [], "the operator's RBAC lacks what triggers use"
    finally:
        for base in ("/var/lib/retina/captures/alerts", "/var/log/retina/captures"):
            for path in Path(base).glob(f"{created.get('metadata', {}).get('name', '-')}-*"):
                path.unlink(missing_ok=True)
