"""The README's main job: ``retina-demo`` runs, reports what it saw, and leaves nothing behind.

"Nothing behind" is checked on what the demo itself made (it prints every name): its bridge,
pod namespaces and veths, the agent's work directory and its listening port. Other tests on
this machine create namespaces and links of their own at the same time, so the host-wide lists
are never compared.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

from retina_agent.demo.agent_process import free_port


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", "dev", name], capture_output=True).returncode == 0


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def what_the_demo_made(out: str) -> dict:
    """The bridge, namespaces, veths and agent work directory named in the demo's output."""
    bridge = re.search(r"Building the demo node: bridge (\S+),", out)
    pods = re.findall(r"^  pod (\w+)\s+\S+\s+netns (\S+)\s+veth (\S+)$", out, re.MULTILINE)
    log = re.search(r"; log (\S+)$", out, re.MULTILINE)
    assert bridge and log and len(pods) == 3, out
    return {
        "bridge": bridge[1],
        "namespaces": {p[1] for p in pods},
        "veths": {p[2] for p in pods},
        "workdir": Path(log[1]).parent,
    }


def test_demo_reports_traffic_drops_and_dns_and_cleans_up():
    port = free_port()
    demo = Path(sys.executable).parent / "retina-demo"
    result = subprocess.run(
        [str(demo), "--port", str(port), "--duration", "4"], capture_output=True, text=True, timeout=240
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert f"metrics at http://127.0.0.1:{port}/metrics" in out
    assert "NETFILTER_DROP" in out and "NO_SOCKET" in out
    assert "NXDOMAIN  A" in out and "NOERROR   A" in out
    assert (
        "Plugins: linuxutil running, packetforward running, dropreason running, dns running, "
        "tcpretrans running" in out
    )
    made = what_the_demo_made(out)
    assert not made["namespaces"] & _namespaces(), (
        "the demo's pod namespaces (and the iptables rule it put in db's) are still there"
    )
    left = [name for name in (made["bridge"], *made["veths"]) if _link_exists(name)]
    assert not left, f"the demo's links are still there: {left}"
    assert not made["workdir"].exists(), f"the agent's work directory {made['workdir']} is still there"
    assert not _listening(port), "the demo's agent still listens"


def test_the_wheel_ships_the_demo_and_no_test_code(tmp_path: Path) -> None:
    """What the agent image installs: the demo and the plugin catalogue, nothing from lab/ or tests/."""
    from images.build import build_wheel

    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        sources = {name: archive.read(name).decode() for name in archive.namelist() if name.endswith(".py")}
    assert {
        "retina_agent/demo/cli.py",
        "retina_agent/demo/node.py",
        "retina_agent/demo/agent_process.py",
        "retina_agent/catalogue.py",
    } <= set(sources)
    assert "PLUGIN_NAMES" in sources["retina_agent/catalogue.py"]  # the symlink's content, not a link
    assert not [name for name in sources if name.startswith(("retina_lab/", "tests/"))]
    test_imports = re.compile(r"^\s*(from|import) (retina_lab|tests)\b", re.M)
    assert not [name for name, text in sources.items() if test_imports.search(text)]
