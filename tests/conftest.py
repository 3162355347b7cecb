"""Fixtures shared by the whole suite: a node with pods, and the real agent process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from retina_agent.bpf import build
from retina_lab import LabNode
from retina_lab.agent import AgentProcess, our_tc_filters, wait_for

# The Kubernetes API emulator fixtures (kube_emulator, kube_api_client, small_cluster).
pytest_plugins = ["tests.kube_fixtures"]

ROOT = Path(__file__).resolve().parent.parent
#: Folders of BPF C the tests load: the agent's, the benchmark's, the tests' own.
BPF_FOLDERS = [build.PACKAGE_DIR, ROOT / "bench" / "bpf", ROOT / "tests" / "datapath" / "bpf"]


@pytest.fixture(scope="session", autouse=True)
def bpf_objects() -> None:
    """The BPF objects, built as ``python -m retina_agent.bpf.build`` does when missing or older
    than their C (a fresh clone has none: they are build products, not sources)."""
    for folder in BPF_FOLDERS:
        build.build(folder)


@pytest.fixture
def lab_node() -> Iterator[LabNode]:
    """A bridge and two pod namespaces ``a`` and ``b``; removed even when the test fails."""
    with LabNode(pod_names=("a", "b")) as node:
        yield node


@pytest.fixture(scope="module")
def agent() -> Iterator[AgentProcess]:
    """The real retina-agent with every basic plugin, harvesting every second."""
    proc = AgentProcess()
    try:
        proc.start()
        yield proc
    finally:
        proc.cleanup()


@pytest.fixture
def watched_lab(agent, lab_node) -> LabNode:
    """``lab_node`` once the agent's TC programs sit on every pod veth (attach follows netlink)."""

    def attached() -> bool:
        filters = our_tc_filters(agent.proc.pid)
        return all(
            any(f.startswith(f"{veth}/ingress/retina_") for f in filters)
            and any(f.startswith(f"{veth}/egress/retina_") for f in filters)
            for veth in lab_node.host_veths
        )

    try:
        wait_for(attached, 20, message="the agent's TC programs on the pod veths")
    except TimeoutError as exc:
        raise AssertionError(
            f"{exc}: veths {lab_node.host_veths}, this agent's filters "
            f"{our_tc_filters(agent.proc.pid)}\n{agent.log()[-3000:]}"
        ) from None
    return lab_node
