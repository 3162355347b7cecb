"""Fixtures for the capture worker tests: a lab node, real Azurite and moto S3 servers, and a
factory that runs ``retina-capture`` and follows its log. Helpers live in tests.helpers.capture.

Everything started here is stopped by a finalizer, also when the test fails.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.capture import AZURITE, BIN, Server, WorkerRun, free_port
from tests.images.conftest import built_images  # noqa: F401 (the fixture: images as shipped)


@pytest.fixture
def azurite(tmp_path: Path) -> Iterator[Server]:
    if not AZURITE.exists():
        pytest.fail(f"{AZURITE} missing: run ./scripts/setup.sh")
    port = free_port()
    location = tmp_path / "azurite"
    location.mkdir()
    server = Server(
        "azurite",
        [
            str(AZURITE),
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(port),
            "--location",
            str(location),
            "--skipApiVersionCheck",
            "--disableTelemetry",
            "--silent",
        ],
        port,
    )
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def moto_s3() -> Iterator[Server]:
    port = free_port()
    server = Server("moto", [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], port)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def lab():
    from retina_lab import LabNode

    with LabNode(pod_names=("a", "b", "c")) as node:
        yield node


@pytest.fixture
def worker():
    """Factory: ``worker(argv, env)`` starts a run; every run is killed at teardown."""
    runs: list[WorkerRun] = []

    def start(argv: list[str], env: dict[str, str] | None = None) -> WorkerRun:
        run = WorkerRun(argv, env)
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.stop()


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    """A host-path base and a tarball build dir for one test (removed by tmp_path's cleanup)."""
    out = {"base": tmp_path / "base", "tmp": tmp_path / "build"}
    yield out
    for path in out.values():
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def agent_image(built_images: dict[str, str]) -> str:  # noqa: F811
    """The agent image as scripts/build_images.sh builds it from this tree (once per run): the
    node-runner capture tests run what users run, never an image left over from another tree."""
    if os.geteuid() != 0:
        pytest.fail("the node runner needs root (rootful podman, network namespaces)")
    return built_images["agent"]
