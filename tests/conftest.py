"""Fixtures shared by the whole suite: a node with pods, and the real agent process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from retina_lab import LabNode
from retina_lab.agent import AgentProcess, our_tc_filters, wait_for

# The Kubernetes API emulator fixtures (kube_emulator, kube_api_client, small_cluster).
pytest_plugins = ["tests.kube_fixtures"]


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
