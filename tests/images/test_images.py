"""The images built offline, run with exactly the security context the manifests declare.

The agent image runs as the rendered DaemonSet says (tests/images/podspec.py translates the pod
spec into ``podman run``): host network, not privileged, ``drop: [ALL]`` plus the DaemonSet's
capability list, its hostPath mounts, read-only root, no privilege escalation, its seccomp
profile and memory/CPU limits, with tracefs/debugfs read-only and no privileged init container. The capture
worker runs as a capture Job says (``retina_capture.jobs.build_job``).
"""

from __future__ import annotations

import ast
import copy
import json
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from images.podman import ULIMITS, podman
from retina_capture.jobs import HOST_PATH_BASE, build_job
from retina_capture.spec import CaptureSpec
from retina_lab import LabNode
from retina_lab.agent import Metrics, free_port, wait_for
from retina_lab.traffic import send_udp, udp_sink
from tests.helpers.capture import pcaps_in, udp_packets
from tests.images.conftest import Containers
from tests.images.podspec import cap_names, podman_run_argv

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

FORWARD = "networkobservability_forward_count"
PLUGIN_STATUS = "controlplane_networkobservability_plugin_status"


# -- helpers ---------------------------------------------------------------------------------
def _pod(manifests: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(manifests["DaemonSet/retina-agent"]["spec"]["template"]["spec"])


def _agent_config(manifests: dict[str, Any], node: LabNode, port: int) -> dict[str, Any]:
    """The ConfigMap's config.yaml, on a free loopback port, harvesting every second, with the TC
    plugins held to this lab's veths (the VM's own NIC and other tests' labs are left alone)."""
    config = yaml.safe_load(manifests["ConfigMap/retina-config"]["data"]["config.yaml"])
    config["apiServer"] = {"host": "127.0.0.1", "port": port}
    config["metricsIntervalDuration"] = "1s"
    lab_veths = [f"{veth[:-1]}*" for veth in node.host_veths[:1]]  # rlv<lab id>*
    config["plugins"] = {"packetforward": {"interfaces": lab_veths}, "dns": {"interfaces": lab_veths}}
    # cls_bpf, so the programs of the agent in the container show in `tc filter show` with its
    # owner tag (@1.); TCX attachment and its clean-up are held by tests/datapath and test_lifecycle.
    config["dataPathAttach"] = "cls_bpf"
    return config


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _running(containers: Containers, name: str) -> None:
    state = json.loads(podman("inspect", "--format", "{{json .State}}", name).stdout)
    if not state.get("Running"):
        raise AssertionError(
            f"container {name} is not running (exit {state.get('ExitCode')}):\n"
            + containers.logs(name)[-4000:]
        )


def _wait_ready(containers: Containers, name: str, port: int, timeout: float = 180) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        _running(containers, name)
        status, body = _get(f"http://127.0.0.1:{port}/readyz")
        return json.loads(body) if status == 200 else None

    try:
        return wait_for(ready, timeout, 0.5, f"/readyz of {name}")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{containers.logs(name)[-4000:]}") from None


def _scrape(port: int) -> Metrics:
    status, body = _get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    return Metrics(body.decode())


def _effective_caps(name: str) -> set[str]:
    pid = podman("inspect", "--format", "{{.State.Pid}}", name).stdout.strip()
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(x for x in status.splitlines() if x.startswith("CapEff:"))
    return cap_names(int(line.split()[1], 16))


def _grantable(caps: set[str]) -> set[str]:
    """``caps`` that this host can grant at all: the test process's bounding set limits every
    container (on the build VMs CAP_SYS_RESOURCE is outside it, for every process)."""
    status = Path("/proc/self/status").read_text()
    line = next(x for x in status.splitlines() if x.startswith("CapBnd:"))
    return caps & cap_names(int(line.split()[1], 16))


def _run_init_container(
    pod: dict[str, Any], image: str, containers: Containers, host_paths: dict[str, Path] | None = None
) -> None:
    """Every init container, to completion, before the agent (as the kubelet does)."""
    for init in pod.get("initContainers") or []:
        name = containers.name(init["name"])
        argv = podman_run_argv(pod, init, name=name, image=image, host_paths=host_paths, detach=False)
        proc = podman(*argv, check=False, timeout=120)
        assert proc.returncode == 0, f"init container {init['name']} failed: {proc.stdout}{proc.stderr}"


def _start_agent(
    pod: dict[str, Any],
    image: str,
    containers: Containers,
    config: dict[str, Any],
    config_dir: Path,
    tweak: Callable[[dict[str, Any]], None] | None = None,
) -> str:
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "config.yaml").write_text(yaml.safe_dump(config))
    container = copy.deepcopy(pod["containers"][0])
    if tweak is not None:
        tweak(container)
    name = containers.name(container["name"])
    argv = podman_run_argv(
        pod,
        container,
        name=name,
        image=image,
        config_dirs={"retina-config": config_dir},
        field_values={"spec.nodeName": "lab-node", "status.hostIP": "127.0.0.1"},
    )
    podman(*argv, timeout=120)
    return name


def _run_agent(
    rendered_agent: dict[str, Any],
    image: str,
    containers: Containers,
    node: LabNode,
    config_dir: Path,
    tweak: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[str, int, dict[str, Any]]:
    """The rendered DaemonSet's pod on this machine: its init containers, then the agent (changed
    by ``tweak``) with the rendered config on a free port, until ready; (name, port, /readyz)."""
    pod = _pod(rendered_agent)
    port = free_port()
    _run_init_container(pod, image, containers)
    config = _agent_config(rendered_agent, node, port)
    name = _start_agent(pod, image, containers, config, config_dir, tweak=tweak)
    return name, port, _wait_ready(containers, name, port)


#: The agent is PID 1 of its container (the image's entrypoint), so its TC filters are named
#: ``retina_<program>@1.<process start time>``. Agents other tests run attach to pod veths too.
IN_CONTAINER_OWNER = "@1."


def _lab_tc_filters(node: LabNode, owner: str = IN_CONTAINER_OWNER) -> list[str]:
    """The container agent's TC filters on the lab's veths (``dev/direction/name``)."""
    found = []
    for dev in node.host_veths:
        for direction in ("ingress", "egress"):
            out = subprocess.run(
                ["tc", "filter", "show", "dev", dev, direction], capture_output=True, text=True, check=False
            ).stdout
            found += [f"{dev}/{direction}/{w}" for w in out.split() if w.startswith("retina_") and owner in w]
    return found


def _diagnose(containers: Containers, name: str, node: LabNode) -> str:
    """What to show when counts do not rise: every retina filter on the lab veths, the log."""
    return (
        f"retina TC filters on the lab veths (any owner): {_lab_tc_filters(node, owner='')}\n"
        f"agent log:\n{containers.logs(name)[-3000:]}"
    )


# -- tests -----------------------------------------------------------------------------------
def test_agent_image_runs_as_the_daemonset_declares_and_counts_pod_traffic(
    built_images: dict[str, str],
    rendered_agent: dict[str, Any],
    containers: Containers,
    lab_node: LabNode,
    tmp_path: Path,
) -> None:
    pod = _pod(rendered_agent)
    agent_spec = pod["containers"][0]
    security = agent_spec["securityContext"]
    assert pod["hostNetwork"] is True and security["privileged"] is False
    declared = set(security["capabilities"]["add"])
    assert security["capabilities"]["drop"] == ["ALL"]

    name, port, ready = _run_agent(
        rendered_agent, built_images["agent"], containers, lab_node, tmp_path / "config"
    )
    assert {p: s["state"] for p, s in ready["plugins"].items()} == {p: "running" for p in ready["plugins"]}, (
        f"not every plugin runs in the container: {ready}"
    )
    assert _effective_caps(name) == _grantable(declared), "the agent does not hold exactly the declared caps"

    sink = udp_sink(lab_node["b"], 7101)
    try:
        try:
            wait_for(
                lambda: len(_lab_tc_filters(lab_node)) >= 2 * len(lab_node.host_veths),
                20,
                message="the agent's TC programs on the lab veths",
            )
            before = _scrape(port)
            send_udp(lab_node["a"], lab_node["b"].ip, 7101, 200)

            def risen() -> Metrics | None:
                m = _scrape(port)
                ok = all(
                    m.value(FORWARD, direction=d) - before.value(FORWARD, direction=d) >= 200
                    for d in ("ingress", "egress")
                )
                return m if ok else None

            wait_for(risen, 30, 0.5, "forward counts up by 200 packets each way")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{_diagnose(containers, name, lab_node)}") from None
    finally:
        sink.close()
    _running(containers, name)
    # SIGTERM as the kubelet sends it: the agent removes its TC programs from the node.
    podman("stop", "--time", "30", name, timeout=90)
    assert _lab_tc_filters(lab_node) == [], "the agent left TC programs behind after SIGTERM"


def test_agent_without_net_admin_reports_tc_plugins_unavailable_and_keeps_running(
    built_images: dict[str, str],
    rendered_agent: dict[str, Any],
    containers: Containers,
    lab_node: LabNode,
    tmp_path: Path,
) -> None:
    pod = _pod(rendered_agent)
    declared = set(pod["containers"][0]["securityContext"]["capabilities"]["add"])
    assert "NET_ADMIN" in declared

    def without_net_admin(container: dict[str, Any]) -> None:
        caps = container["securityContext"]["capabilities"]
        caps["add"] = [c for c in caps["add"] if c != "NET_ADMIN"]

    name, port, ready = _run_agent(
        rendered_agent,
        built_images["agent"],
        containers,
        lab_node,
        tmp_path / "config",
        tweak=without_net_admin,
    )
    assert _effective_caps(name) == _grantable(declared - {"NET_ADMIN"})
    states = {p: s["state"] for p, s in ready["plugins"].items()}
    tc_plugins = {"packetforward", "dns"} & set(states)
    assert tc_plugins, f"no TC plugin is enabled in the rendered config: {states}"
    for plugin in tc_plugins:
        assert states[plugin] == "unavailable", f"{plugin} without NET_ADMIN: {ready['plugins'][plugin]}"
        assert ready["plugins"][plugin]["reason"], f"{plugin} is unavailable without a reason"
    for plugin in set(states) - tc_plugins:
        assert states[plugin] == "running", f"{plugin} should not need NET_ADMIN: {ready['plugins'][plugin]}"

    metrics = _scrape(port)
    for plugin in tc_plugins:
        assert metrics.value(PLUGIN_STATUS, plugin=plugin, state="unavailable") == 1, (
            f"{PLUGIN_STATUS} does not report {plugin} unavailable: {metrics.series(PLUGIN_STATUS)}"
        )
    assert _lab_tc_filters(lab_node) == []
    _running(containers, name)


def test_capture_worker_image_writes_a_pod_capture_to_the_host_path(
    built_images: dict[str, str], containers: Containers, lab_node: LabNode, tmp_path: Path
) -> None:
    """The capture Job for pod b (as the CLI and the operator build it), run with the agent image:
    the tarball lands in the Job's hostPath on the host (here a temporary directory)."""
    spec = CaptureSpec(name="img-test", namespace="default", duration=4, host_path="img-test-out")
    job = build_job(spec, "lab-node", [lab_node["b"].ip])
    pod = job["spec"]["template"]["spec"]
    base = tmp_path / "captures"
    name = containers.name("capture")
    argv = podman_run_argv(
        pod,
        pod["containers"][0],
        name=name,
        image=built_images["agent"],
        host_paths={HOST_PATH_BASE: base},
        field_values={"spec.nodeName": "lab-node"},
    )
    podman(*argv, timeout=60)
    sink = udp_sink(lab_node["b"], 7102)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # paced UDP from pod a to pod b until the capture ends
            send_udp(lab_node["a"], lab_node["b"].ip, 7102, 20)
            if not json.loads(podman("inspect", "--format", "{{json .State}}", name).stdout)["Running"]:
                break
            time.sleep(0.2)
    finally:
        sink.close()
    exit_code = int(podman("wait", name, timeout=120).stdout.strip())
    logs = containers.logs(name)
    assert exit_code == 0, f"retina-capture exited {exit_code}:\n{logs[-4000:]}"
    out = base / "img-test-out"
    tarballs = sorted(out.glob("*.tar.gz"))
    assert len(tarballs) == 1, f"expected one tarball in {out}, found {tarballs}\n{logs[-2000:]}"
    # Pod b's traffic: the datagrams from pod a, and no UDP to anywhere else.
    udp = Counter((dst, port) for pcap in pcaps_in(tarballs[0]) for dst, port, _ in udp_packets(pcap))
    udp.pop(("other", 0), None)
    assert set(udp) == {(lab_node["b"].ip, 7102)}, f"{udp}\n{logs[-2000:]}"


LEANNESS_PROBE = """
import importlib.util, os, shutil
found = {m: importlib.util.find_spec(m) is not None
         for m in ("kubernetes", "dns", "ijson", "kopf", "pip", "setuptools", "bcc")}
tools = {t: shutil.which(t) is not None for t in ("gcc", "cc", "clang", "make", "tcpdump", "ip", "ss",
                                                  "iptables-save", "nft", "retina-agent", "retina-capture")}
lists = [f for f in os.listdir("/var/lib/apt/lists") if f not in ("lock", "partial", "auxfiles")]
debs = [f for _, _, files in os.walk("/var/cache/apt") for f in files if f.endswith((".deb", ".bin"))]
print({"modules": found, "tools": tools, "apt_lists": lists, "debs": debs, "uid": os.getuid()})
"""


@pytest.mark.parametrize("kind", ["agent", "operator"])
def test_images_are_lean(built_images: dict[str, str], kind: str) -> None:
    """No installer tools, compilers, apt lists or package caches; the agent image carries the
    pod-level clients (kubernetes, dnspython) but no operator framework; each image holds the
    commands its manifests run."""
    proc = podman(
        "run",
        "--rm",
        "--network",
        "none",
        *ULIMITS,
        "--entrypoint",
        '["python3", "-c"]',
        built_images[kind],
        LEANNESS_PROBE,
        timeout=120,
    )
    report = ast.literal_eval(proc.stdout.strip())
    modules, tools = report["modules"], report["tools"]
    assert not modules["pip"] and not modules["setuptools"], report
    assert not any(tools[t] for t in ("gcc", "cc", "clang", "make")), report
    assert report["apt_lists"] == [] and report["debs"] == [], report
    if kind == "agent":
        assert not modules["bcc"] and modules["kubernetes"] and modules["dns"], report
        assert modules["ijson"] and not modules["kopf"], report
        assert all(
            tools[t]
            for t in ("tcpdump", "ip", "ss", "iptables-save", "nft", "retina-agent", "retina-capture")
        ), report
    else:
        assert modules["kubernetes"] and modules["kopf"] and not modules["bcc"], report
        assert report["uid"] == 65532, report
