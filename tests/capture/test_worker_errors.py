"""Bad input: a clear error that names the setting, exit code 2, and nothing started or written."""

from __future__ import annotations

import subprocess

import pytest

from tests.helpers.capture import WorkerRun

pytestmark = pytest.mark.timeout(60)

SAS = "https://acct.blob.core.windows.net/c?sv=2024&sig=TOPSECRETSIG"

CASES = {
    "shell-metacharacters": (["--tcpdump-filter", "udp port 53; rm -rf /"], {},
                             ["--tcpdump-filter", "';'"]),
    "command-substitution": (["--pcap-filter", "host $(reboot)"], {}, ["--pcap-filter", "'$'"]),
    "leading-dash": (["--tcpdump-filter", "-w /etc/cron.d/x"], {}, ["--tcpdump-filter", "starts with '-'"]),
    "host-path-dotdot": (["--host-path", "../../etc"], {}, ["--host-path", "'..'"]),
    "host-path-absolute": (["--host-path", "/etc"], {}, ["--host-path", "is absolute"]),
    "negative-duration": (["--duration", "-5s"], {}, ["--duration", "more than zero"]),
    "negative-duration-env": ([], {"RETINA_CAPTURE_DURATION": "-1m"},
                              ["--duration (env RETINA_CAPTURE_DURATION)", "more than zero"]),
    "duration-not-go-style": (["--duration", "5 minutes"], {}, ["--duration", "like 30s, 1m or 1m30s"]),
    "unknown-output": (["--ftp-upload", "ftp://x"], {}, ["--ftp-upload", "outputs are --host-path"]),
    "no-output": ([], {}, ["no output", "--s3-bucket"]),
    "include-and-exclude-malformed": (["--include-filter", "10.0.0.300:80", "--exclude-filter", "*:http"],
                                      {}, ["--include-filter: '10.0.0.300:80'",
                                           "--exclude-filter: '*:http' has port 'http'"]),
    "secret-on-argv": (["--blob-upload", SAS], {}, ["--blob-upload", "RETINA_CAPTURE_BLOB_UPLOAD"]),
    "unknown-env": ([], {"RETINA_CAPTURE_DURATON": "1m"}, ["RETINA_CAPTURE_DURATON: unknown setting"]),
    "tcpdump-rejects-filter": (["--tcpdump-filter", "udp port banana"], {},
                               ["--tcpdump-filter", "tcpdump rejects", "banana"]),
    "no-such-interface": (["--interfaces", "nosuchdev0"], {}, ["--interfaces", "nosuchdev0"]),
    "pvc-not-mounted": (["--pvc-mount-path", "/nonexistent/pvc"], {},
                        ["--pvc-mount-path", "not a directory"]),
    "s3-without-keys": (["--s3-bucket", "bucket-1"], {}, ["--s3-bucket", "RETINA_CAPTURE_S3_ACCESS_KEY_ID"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_refused_before_anything_starts(case, dirs):
    argv, env, expected = CASES[case]
    full = ["--name", "bad", "--host-path-base", str(dirs["base"]), "--output-dir-tmp", str(dirs["tmp"])]
    wants_output = case not in {"no-output", "unknown-output"} and not any(
        a in ("--host-path", "--pvc-mount-path", "--s3-bucket") for a in argv)
    if wants_output:
        full += ["--host-path", "out"]
    run = WorkerRun(full + argv, env)
    assert run.wait(timeout=30) == 2, run.stderr
    for text in expected:
        assert text in run.stderr, f"{text!r} not in:\n{run.stderr}"
    assert "nothing was captured" in run.stderr
    assert "capture started" not in run.stderr
    assert "TOPSECRETSIG" not in run.stderr
    assert not dirs["tmp"].exists() and not dirs["base"].exists(), "files were written"
    procs = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(dirs["tmp"]) not in procs, "a tcpdump was left running"
