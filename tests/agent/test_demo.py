"""The README's main job: ``retina-demo`` runs, reports what it saw, and leaves nothing behind."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

from retina_agent.demo.agent_process import free_port


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
    # Only this demo's node (its lab id in every name): other tests may build labs meanwhile.
    lab_id = re.search(r"bridge rlbr(\w+),", out).group(1)
    assert not {name for name in _namespaces() - namespaces if f"-{lab_id}-" in name}
    assert not {name for name in _links() - links if name.startswith(("rlbr" + lab_id, "rlv" + lab_id))}


def test_the_wheel_ships_the_demo_and_no_test_code(tmp_path: Path) -> None:
    """What the agent image installs: the demo and the plugin catalogue, nothing from lab/ or tests/."""
    from images.build import build_wheel

    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        sources = {name: archive.read(name).decode() for name in archive.namelist() if name.endswith(".py")}
    assert {"retina_agent/demo/cli.py", "retina_agent/demo/node.py", "retina_agent/demo/agent_process.py",
            "retina_agent/catalogue.py"} <= set(sources)
    assert "PLUGIN_NAMES" in sources["retina_agent/catalogue.py"]  # the symlink's content, not a link
    assert not [name for name in sources if name.startswith(("retina_lab/", "tests/"))]
    test_imports = re.compile(r"^\s*(from|import) (retina_lab|tests)\b", re.M)
    assert not [name for name, text in sources.items() if test_imports.search(text)]
