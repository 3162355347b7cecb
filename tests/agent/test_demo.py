"""The README's main job: ``retina-demo`` runs, reports what it saw, and leaves nothing behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from retina_lab.agent import free_port


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return {line.split(": ")[1].split("@")[0] for line in out.splitlines()}


def test_demo_reports_traffic_drops_and_dns_and_cleans_up():
    namespaces, links = _namespaces(), _links()
    port = free_port()
    demo = Path(sys.executable).parent / "retina-demo"
    result = subprocess.run([str(demo), "--port", str(port), "--duration", "4"],
                            capture_output=True, text=True, timeout=240)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert f"metrics at http://127.0.0.1:{port}/metrics" in out
    assert "NETFILTER_DROP" in out and "NO_SOCKET" in out
    assert "NXDOMAIN  A" in out and "NOERROR   A" in out
    assert "Plugins: linuxutil running, packetforward running, dropreason running, dns running, " \
           "tcpretrans running" in out
    assert _namespaces() == namespaces
    assert not {name for name in _links() - links if name.startswith("rl")}
