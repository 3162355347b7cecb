"""Bad input: a clear error that names the setting, exit code 2, and nothing started or written."""

from __future__ import annotations

import subprocess

import pytest

from tests.helpers.capture import WorkerRun

pytestmark = pytest.mark.timeout(60)

SAS = "https://acct.blob.core.windows.net/c?sv=2024&sig=TOPSECRETSIG"

CASES = {
    "shell-metacharacters": (["--tcpdump-filter", "udp port 53; rm -rf /"], {}, ["--tcpdump-filter", "';'"]),
    "command-substitution": (["--pcap-filter", "host $(reboot)"], {}, ["--pcap-filter", "'$'"]),
    "leading-dash": (["--tcpdump-filter", "-w /etc/cron.d/x"], {}, ["--tcpdump-filter", "starts with '-'"]),
    "host-path-dotdot": (["--host-path", "../../etc"], {}, ["--host-path", "'..'"]),
    "host-path-absolute": (["--host-path", "/etc"], {}, ["--host-path", "is absolute"]),
    "negative-duration": (
        ["--duration", "-5s"],
        {},
        ["--duration", "is negative; use a duration between 1s and 24h"],
    ),
    "negative-duration-env": (
        [],
        {"RETINA_CAPTURE_DURATION": "-1m"},
        ["--duration (env RETINA_CAPTURE_DURATION)", "is negative"],
    ),
    "duration-not-go-style": (
        ["--duration", "5 minutes"],
        {},
        ["--duration", "is not a duration; write it like 30s"],
    ),
    "unknown-output": (["--ftp-upload", "ftp://x"], {}, ["--ftp-upload", "outputs are --host-path"]),
    "no-output": ([], {}, ["no output", "--s3-bucket"]),
    "include-and-exclude-malformed": (
        ["--include-filter", "10.0.0.300:80", "--exclude-filter", "*:http"],
        {},
        ["--include-filter: '10.0.0.300:80'", "--exclude-filter: '*:http' has port 'http'"],
    ),
    "secret-on-argv": (["--blob-upload", SAS], {}, ["--blob-upload", "RETINA_CAPTURE_BLOB_UPLOAD"]),
    "unknown-env": ([], {"RETINA_CAPTURE_DURATON": "1m"}, ["RETINA_CAPTURE_DURATON: unknown setting"]),
    "tcpdump-rejects-filter": (
        ["--tcpdump-filter", "udp port banana"],
        {},
        ["--tcpdump-filter", "tcpdump rejects", "banana"],
    ),
    "no-such-interface": (["--interfaces", "nosuchdev0"], {}, ["--interfaces", "nosuchdev0"]),
    "pvc-not-mounted": (
        ["--pvc-mount-path", "/nonexistent/pvc"],
        {},
        ["--pvc-mount-path", "not a directory"],
    ),
    "s3-without-keys": (["--s3-bucket", "bucket-1"], {}, ["--s3-bucket", "RETINA_CAPTURE_S3_ACCESS_KEY_ID"]),
    "unknown-secret-flag": (
        ["--s3-secret-key=TOPSECRETSIG", "--sas-token", "TOPSECRETSIG"],
        {},
        ["unrecognized arguments: --s3-secret-key=*** --sas-token ***"],
    ),
    # The bounds kubectl-retina and the operator apply (one model): what they accept, this accepts.
    "file-count-over-1000": (
        ["--file-count", "5000", "--max-size", "9000"],
        {},
        ["--file-count: must be 0 to 1000 (got 5000)"],
    ),
    "duration-below-1s": (["--duration", "0.0001s"], {}, ["--duration: '0.0001s' is too short"]),
    "packet-size-over-snaplen": (["--packet-size", "262145"], {}, ["--packet-size: must be 0 to 262144"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_refused_before_anything_starts(case, dirs):
    argv, env, expected = CASES[case]
    full = ["--name", "bad", "--host-path-base", str(dirs["base"]), "--output-dir-tmp", str(dirs["tmp"])]
    wants_output = case not in {"no-output", "unknown-output"} and not any(
        a in ("--host-path", "--pvc-mount-path", "--s3-bucket") for a in argv
    )
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


def test_missing_tcpdump_is_one_line_not_a_traceback(dirs, monkeypatch, capsys):
    """The node image lacks tcpdump: say so and what to install; nothing is written."""
    from retina_capture.worker import capture as capture_mod
    from retina_capture.worker.cli import main

    def no_tcpdump() -> str:
        raise capture_mod.CaptureError("tcpdump not found; install the Debian package 'tcpdump'")

    monkeypatch.setattr(capture_mod, "tcpdump_binary", no_tcpdump)
    code = main(
        [
            "--name",
            "t",
            "--host-path",
            "out",
            "--host-path-base",
            str(dirs["base"]),
            "--output-dir-tmp",
            str(dirs["tmp"]),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert err.splitlines() == [
        "retina-capture: error: tcpdump not found; install the Debian package 'tcpdump'",
        "retina-capture: nothing was captured",
    ]
    assert not dirs["tmp"].exists() and not dirs["base"].exists()
