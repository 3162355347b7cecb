"""The README's ``kubectl retina diagnose`` command, run verbatim in a shell with the real kubectl
(plugin discovery) against the diagnose lab (tests/diagnose/lab.py: real pods in namespaces, the
real agent, a real Prometheus, Calico-style rules and the NetworkPolicy they implement): UDP to
a port B's policy drops gives the POLICY_DROP verdict naming the policy."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from retina_capture.observe.prometheus import ENV_URL
from retina_lab.agent import wait_for
from retina_lab.traffic import send_udp
from tests.diagnose.lab import ObservedLab, observed_lab, tw_chain
from tests.docs.readme import shell_commands
from tests.installer.ansible_run import ansible_env

THIS = "tests/docs/test_readme_diagnose.py"
DIAGNOSE = "kubectl retina diagnose shop/web-5d9c-x7k2p data/db-0 --since 10m"


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[ObservedLab]:
    with observed_lab(tmp_path) as observed:
        yield observed


def test_the_readme_shows_this_command() -> None:
    assert shell_commands(THIS) == [DIAGNOSE]


def test_diagnose_as_the_readme_shows_it(lab: ObservedLab, tmp_path: Path) -> None:
    env = ansible_env(KUBECONFIG=str(lab.kube.kubeconfig_path), **{ENV_URL: lab.prometheus.url})
    tw = tw_chain()
    before = lab.rule_counter(tw, "Drop if no policies passed packet")
    send_udp(lab.node["a"], lab.node["b"].ip, 5432, 40)
    kernel = lab.rule_counter(tw, "Drop if no policies passed packet")
    assert kernel == before + 40
    last = subprocess.CompletedProcess([], 1, "", "")

    def verdict() -> bool:
        nonlocal last
        last = subprocess.run(
            ["bash", "-c", DIAGNOSE],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return last.returncode == 0 and f"dropped {kernel} packets" in last.stdout

    with contextlib.suppress(TimeoutError):  # the assertions show the last output
        wait_for(verdict, 150, 2.0, "the drops in Prometheus")
    assert last.returncode == 0, last.stdout + last.stderr
    assert "POLICY_DROP" in last.stdout and "data/allow-api-only" in last.stdout, last.stdout
    assert f"dropped {kernel} packets" in last.stdout, last.stdout
