"""Fixtures for the preflight tests: a Kubernetes API emulator over real HTTP (kmock), a tiny
Grafana health endpoint on loopback, and an Ansible collections path. Helpers live in
tests.helpers.preflight."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.helpers.preflight import COLLECTION, SERVER_VERSION


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
