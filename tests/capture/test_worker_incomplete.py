"""A tcpdump that dies mid-capture: the packets captured until then are still packed, with a
note saying why the capture is short, and written to every output; the worker exits 1."""

from __future__ import annotations

import os
import signal
import tarfile
from pathlib import Path

import pytest

from tests.capture.test_worker import base_args, send_udp
from tests.helpers.capture import only_tarball, pcaps_in, wait_until

pytestmark = pytest.mark.timeout(120)


def _tcpdump_children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if comm == "tcpdump" and int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def test_tcpdump_killed_mid_capture_still_packs_and_writes_what_it_had(lab, worker, dirs):
    a, b = lab["a"], lab["b"]
    run = worker(
        [
            *base_args(dirs, "cut"),
            "--interfaces",
            a.host_veth,
            "--duration",
            "60s",
            "--node-name",
            "node-1",
            "--include-metadata",
            "false",
        ]
    )
    run.wait_for("capture started")
    sent = send_udp(a, [(b.ip, 7301)], count=50)
    assert sent == 50
    tcpdumps = wait_until(lambda: _tcpdump_children(run.proc.pid), 10, "the worker's tcpdump")
    # libpcap hands packets over in blocks: let the block with our 50 reach the file first
    wait_until(lambda: any(p.stat().st_size > 24 for p in dirs["tmp"].rglob("*.pcap")), 10, "packets on disk")
    os.kill(tcpdumps[0], signal.SIGKILL)  # as the OOM killer would
    assert run.wait(timeout=60) == 1, run.stderr
    assert "the capture is incomplete: tcpdump on" in run.stderr and "exited early (-9)" in run.stderr
    tarball = only_tarball(dirs["base"] / "out")
    top = tarball.name.removesuffix(".tar.gz")
    with tarfile.open(tarball) as tar:
        note = tar.extractfile(f"{top}/CAPTURE-INCOMPLETE.txt").read().decode()
    assert "exited early (-9)" in note and "of the 60.0s asked for" in note
    pcaps = pcaps_in(tarball)
    assert len(pcaps) == 1 and len(pcaps[0]) > 24 + 50 * 100
    assert not any(dirs["tmp"].iterdir()), "a capture written to its outputs stays in the build dir"
