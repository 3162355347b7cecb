"""Fixtures for the preflight tests: the CLI as a process, a Kubernetes API emulator over real
HTTP (kmock), a tiny Grafana health endpoint on loopback, and an Ansible collections path."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
import yaml

REPO = Path(__file__).resolve().parents[2]
HOSTS = Path(__file__).resolve().parent / "hosts"
VENV_BIN = Path(sys.executable).parent
COLLECTION = REPO / "collections" / "retina"


SERVER_VERSION = {
    "major": "1",
    "minor": "30",
    "gitVersion": "v1.30.2",
    "gitCommit": "39683505b630ff2121012f3c5b16215a1449d5ed",
    "gitTreeState": "clean",
    "buildDate": "2024-06-11T20:21:00Z",
    "goVersion": "go1.22.4",
    "compiler": "gc",
    "platform": "linux/amd64",
}


def run_cli(*args: str, env: dict | None = None) -> tuple[int, dict]:
    """Run `retina-preflight --json ARGS` and return (exit code, report)."""
    done = subprocess.run(
        [str(VENV_BIN / "retina-preflight"), "--json", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert done.stdout, f"no report on stdout; stderr: {done.stderr}"
    return done.returncode, json.loads(done.stdout)


def by_id(report: dict) -> dict[str, dict]:
    return {check["id"]: check for check in report["checks"]}


def plugins(report: dict) -> dict[str, dict]:
    return {plugin["name"]: plugin for plugin in report["plugins"]}


@pytest.fixture
def k8s_api() -> Iterator[str]:
    """A Kubernetes API emulator (kmock) on 127.0.0.1; yields its URL. CRDs are created over HTTP."""
    import kmock

    ready = threading.Event()
    box: dict = {}

    async def serve() -> None:
        async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator) as server:
            emulator.resources["apiextensions.k8s.io/v1/customresourcedefinitions"] = {}
            # A real API server answers /version/ like /version; the Python client asks for the former.
            emulator["get /version/"] << (lambda request: SERVER_VERSION)
            box["url"] = str(server.url).rstrip("/")
            box["stop"] = asyncio.Event()
            ready.set()
            await box["stop"].wait()

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    try:
        assert ready.wait(20), "kmock did not start"
        yield box["url"]
    finally:
        if "stop" in box:
            loop.call_soon_threadsafe(box["stop"].set)
        thread.join(10)


def create_crd(api_url: str, name: str) -> None:
    response = requests.post(
        api_url + "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        timeout=10,
        json={
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": name},
        },
    )
    response.raise_for_status()


def write_kubeconfig(path: Path, server: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "emulator",
                "clusters": [{"name": "emulator", "cluster": {"server": server}}],
                "users": [{"name": "tester", "user": {"token": "not-a-secret"}}],
                "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tester"}}],
            }
        )
    )
    return path


class _GrafanaHealth(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path != "/api/health":
            self.send_error(404)
            return
        body = json.dumps({"commit": "abc", "database": "ok", "version": "10.4.2"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def grafana_url() -> Iterator[str]:
    """Grafana's /api/health contract on 127.0.0.1 (no Grafana server can be installed here)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _GrafanaHealth)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture
def collections_path(tmp_path: Path) -> Path:
    """A collections path holding a copy of collections/retina as retina.observability."""
    target = tmp_path / "ac" / "ansible_collections" / "retina" / "observability"
    shutil.copytree(COLLECTION, target, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path / "ac"


def ansible_env(collections: Path) -> dict:
    env = dict(os.environ)
    env.update(
        ANSIBLE_COLLECTIONS_PATH=str(collections),
        ANSIBLE_LOCAL_TEMP=str(collections.parent / "tmp"),
        ANSIBLE_HOME=str(collections.parent / "home"),
        PATH="{}:{}".format(VENV_BIN, env.get("PATH", "/usr/bin:/bin")),
        ANSIBLE_STDOUT_CALLBACK="json",
        ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
        ANSIBLE_NOCOLOR="1",
    )
    return env
