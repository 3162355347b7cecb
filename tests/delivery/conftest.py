"""Fixtures for image delivery: the images saved by ``build_images.sh --save`` (once per session),
a real registry (Debian's docker-registry, i.e. distribution) with htpasswd authentication on a
loopback port, a test-owned containerd daemon, and a containers-storage of the test's own."""

from __future__ import annotations

import crypt
import json
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from images.names import REPO
from retina_lab.agent import free_port, wait_for
from tests.images.conftest import built_images  # noqa: F401 - pytest fixture

BUILD_SCRIPT = REPO / "scripts" / "build_images.sh"


def run(
    argv: list[str], timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """A command's exit code and text output; never raises on failure (the test reads both)."""
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, env=env)


@dataclass
class Saved:
    dir: Path
    manifest: dict
    seconds: float
    output: str


@pytest.fixture(scope="session")
def saved_images(built_images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Saved:  # noqa: F811
    """``build_images.sh --no-build --save DIR`` of the images the session built."""
    out = tmp_path_factory.mktemp("saved") / "images"
    started = time.monotonic()
    proc = run([str(BUILD_SCRIPT), "--no-build", "--save", str(out)], timeout=1800)
    seconds = time.monotonic() - started
    assert proc.returncode == 0, f"--save failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return Saved(out, json.loads((out / "images.json").read_text()), seconds, proc.stdout)


@dataclass
class Registry:
    address: str  # host:port
    user: str
    password: str
    process: subprocess.Popen


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    """Debian's docker-registry on 127.0.0.1:<free port>, storage and htpasswd in tmp_path."""
    binary = shutil.which("docker-registry")
    if binary is None:
        pytest.fail(
            "docker-registry is not installed: run ./scripts/setup.sh (Debian package docker-registry)"
        )
    user, password = "retina", f"pw-{time.time_ns()}"
    (tmp_path / "htpasswd").write_text(
        f"{user}:{crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))}\n"
    )
    port = free_port()
    config = {
        "version": 0.1,
        "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(tmp_path / "storage")}},
        "http": {"addr": f"127.0.0.1:{port}"},
        "auth": {"htpasswd": {"realm": "retina-test", "path": str(tmp_path / "htpasswd")}},
    }
    (tmp_path / "config.yml").write_text(json.dumps(config))  # JSON is YAML
    log = (tmp_path / "registry.log").open("w")
    proc = subprocess.Popen([binary, "serve", str(tmp_path / "config.yml")], stdout=log, stderr=log)
    try:

        def answers() -> bool | None:
            assert proc.poll() is None, (tmp_path / "registry.log").read_text()[-2000:]
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2)
            except urllib.error.HTTPError as exc:
                return exc.code == 401 or None  # up, and asking for credentials
            except OSError:
                return None
            return None

        wait_for(answers, 30, 0.2, "docker-registry /v2/")
        yield Registry(f"127.0.0.1:{port}", user, password, proc)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@dataclass
class Containerd:
    address: str
    dir: Path

    def ctr(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run(["ctr", "--address", self.address, "-n", "k8s.io", *args], timeout=300)


@pytest.fixture
def containerd() -> Iterator[Containerd]:
    """A containerd of the test's own: root, state and socket in a fresh directory (a short path:
    unix socket paths are limited to 108 bytes), the CRI plugin on as on a kubelet's node."""
    if shutil.which("containerd") is None or shutil.which("ctr") is None:
        pytest.fail("containerd is not installed: run ./scripts/setup.sh (Debian package containerd)")
    work = Path(tempfile.mkdtemp(prefix="rtctd-", dir="/tmp"))
    address = str(work / "c.sock")
    (work / "config.toml").write_text(
        f'version = 2\nroot = "{work}/root"\nstate = "{work}/state"\n'
        f'[grpc]\n  address = "{address}"\n[ttrpc]\n  address = "{address}.ttrpc"\n'
        '[plugins."io.containerd.grpc.v1.cri"]\n  disable_tcp_service = true\n'
    )
    log = (work / "containerd.log").open("w")
    proc = subprocess.Popen(["containerd", "--config", str(work / "config.toml")], stdout=log, stderr=log)
    box = Containerd(address, work)
    try:

        def up() -> bool | None:
            assert proc.poll() is None, (work / "containerd.log").read_text()[-2000:]
            return box.ctr("version").returncode == 0 or None

        wait_for(up, 60, 0.3, "containerd")
        yield box
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
        log.close()
        subprocess.run(["umount", "-R", str(work / "state")], capture_output=True, check=False)
        shutil.rmtree(work, ignore_errors=True)


@dataclass
class PodmanStore:
    root: Path
    runroot: Path

    def podman(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run(["podman", "--root", str(self.root), "--runroot", str(self.runroot), *args], timeout=300)


@pytest.fixture
def podman_store() -> Iterator[PodmanStore]:
    """A containers-storage of the test's own (the shared podman store other tests use is untouched)."""
    work = Path(tempfile.mkdtemp(prefix="rtps-", dir="/var/tmp"))
    store = PodmanStore(work / "root", work / "runroot")
    try:
        yield store
    finally:
        # Only this store's images (never `system reset`: it also removes the host's networks).
        store.podman("rmi", "--all", "--force")
        shutil.rmtree(work, ignore_errors=True)
