"""What the agent image leaves out (issue 16: 597 MB before) still leaves bcc and the upload
clients working: libbcc's whole library closure resolves with the libz3 and libicudata stand-ins,
bcc compiles and loads a BPF program, the S3 upload client and its STS credential source build
from the trimmed botocore models, and the dropped parts are really gone."""

from __future__ import annotations

import ast

import pytest

from images.podman import ULIMITS, podman

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

PROBE = r"""
import importlib.util, os, subprocess, sysconfig
site = sysconfig.get_paths()["purelib"]
ldd = subprocess.run(["ldd", "/usr/lib/x86_64-linux-gnu/libbcc.so.0"], capture_output=True, text=True).stdout
import boto3
clients = [type(boto3.client(s, region_name="us-east-1")).__name__ for s in ("s3", "sts")]
from bcc import BPF
prog = BPF(text="int probe(void *ctx) { return 0; }")
fn = prog.load_func("probe", BPF.SOCKET_FILTER)
lib = "/usr/lib/x86_64-linux-gnu/"
print({
    "not_found": [line for line in ldd.splitlines() if "not found" in line],
    "clients": clients,
    "bpf_fd": fn.fd,
    "aio": importlib.util.find_spec("kubernetes.aio") is not None,
    "botocore_services": sorted(os.listdir(os.path.join(site, "botocore", "data"))),
    "z3": os.path.getsize(lib + "libz3.so.4"),
    "icudata": os.path.getsize(os.path.realpath(lib + "libicudata.so.72")),
})
"""


def test_agent_image_trimmed_and_bcc_still_loads_a_program(built_images: dict[str, str]) -> None:
    # Capabilities a BPF socket filter needs, as the DaemonSet grants; headers from the node.
    proc = podman(
        "run",
        "--rm",
        "--network",
        "none",
        *ULIMITS,
        "--cap-drop",
        "ALL",
        "--cap-add",
        "CAP_BPF",
        "--cap-add",
        "CAP_PERFMON",
        "--cap-add",
        "CAP_SYS_RESOURCE",
        "--security-opt",
        "seccomp=unconfined",
        "-v",
        "/lib/modules:/lib/modules:ro",
        "-v",
        "/usr/src:/usr/src:ro",
        "--entrypoint",
        '["python3", "-c"]',
        built_images["agent"],
        PROBE,
        timeout=600,
    )
    report = ast.literal_eval(proc.stdout.strip().splitlines()[-1])
    assert report["not_found"] == [], report
    assert report["clients"] == ["S3", "STS"], report
    assert report["bpf_fd"] > 0, report
    assert not report["aio"], report
    services = [s for s in report["botocore_services"] if not s.endswith(".json")]
    assert services == ["s3", "sso", "sso-oidc", "sts"], report
    assert report["z3"] < 1_000_000 and report["icudata"] < 100_000, report  # the stand-ins, not 23 MB/30 MB
