"""Fixtures for the image tests: the images built by scripts/build_images.sh, the rendered
DaemonSet of the Ansible agent role, and containers that are removed whatever happens."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from images.names import REPO, image_refs
from images.podman import podman, remove_containers
from tests.installer.ansible_run import TEST_PLAYBOOKS, run_playbook

BUILD_SCRIPT = REPO / "scripts" / "build_images.sh"


@pytest.fixture(scope="session")
def built_images() -> dict[str, str]:
    """Runs scripts/build_images.sh (the base image and wheels are cached between runs)."""
    if os.geteuid() != 0:
        pytest.fail("the image tests need root (rootful podman): run them with sudo")
    proc = subprocess.run([str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=1800, check=False)
    assert proc.returncode == 0, f"build_images.sh failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    print(proc.stdout)  # sizes and build times, visible with pytest -s
    refs = image_refs()
    for kind, ref in refs.items():
        assert ref in proc.stdout, f"build_images.sh did not report the {kind} image {ref}"
    return refs


@pytest.fixture(scope="session")
def rendered_agent(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The agent role's manifests as the installer renders them: ``{kind/name: manifest}``."""
    tmp = tmp_path_factory.mktemp("render")
    out = tmp / "out"
    proc = run_playbook(TEST_PLAYBOOKS / "render.yml", tmp, {"manifest_dir": str(out)})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    manifests: dict[str, Any] = {}
    for path in sorted((out / "agent").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and "kind" in doc:
                manifests[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    assert "DaemonSet/retina-agent" in manifests, f"no DaemonSet rendered: {sorted(manifests)}"
    return manifests


class Containers:
    """Names of the containers a test started; ``cleanup`` stops them gracefully, then removes."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.names: list[str] = []

    def name(self, role: str) -> str:
        name = f"{self.prefix}-{len(self.names)}-{role}"
        self.names.append(name)
        return name

    def logs(self, name: str) -> str:
        proc = podman("logs", name, check=False)
        return proc.stdout + proc.stderr

    def cleanup(self) -> None:
        for name in self.names:
            # SIGTERM and a grace period first, as the kubelet does (terminationGracePeriodSeconds).
            podman("stop", "--ignore", "--time", "30", name, check=False, timeout=120)
        remove_containers(self.names)


@pytest.fixture
def containers(request: pytest.FixtureRequest) -> Iterator[Containers]:
    box = Containers(f"retina-test-{os.getpid()}-{request.node.name[:40]}".replace("[", "-").replace("]", ""))
    try:
        yield box
    finally:
        box.cleanup()
