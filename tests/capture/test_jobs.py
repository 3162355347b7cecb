"""The shared code path: Capture resource -> CaptureSpec -> Jobs, without an API server."""

from __future__ import annotations

import pytest

from retina_capture import jobs, spec
from retina_capture.cli.main import build_parser, capture_from_flags
from retina_lab.manifests import validate_manifest


def test_cli_flags_and_the_crd_give_the_same_spec() -> None:
    args = build_parser().parse_args(
        [
            "capture",
            "create",
            "--name",
            "x",
            "--node-names",
            "n1,n2",
            "--host-path",
            "a/b",
            "--duration",
            "2m",
            "--include-filter",
            "10.0.0.1:80",
        ]
    )
    body, secrets = capture_from_flags(args, "ns")
    assert secrets == {}
    by_hand = spec.capture_resource(
        "x",
        "ns",
        {
            "captureConfiguration": {
                "captureTarget": {"nodeNames": ["n1", "n2"]},
                "captureOption": {
                    "duration": "2m",
                    "maxCaptureSize": 100,
                    "packetSize": 0,
                    "interfaces": ["any"],
                },
                "filters": {"include": ["10.0.0.1:80"]},
                "includeMetadata": True,
            },
            "outputConfiguration": {"hostPath": "a/b"},
        },
    )
    assert spec.parse_capture(body) == spec.parse_capture(by_hand)
    assert spec.parse_capture(body).duration == 120


def test_every_problem_is_reported_with_its_field() -> None:
    body = spec.capture_resource(
        "Bad_Name",
        "ns",
        {
            "captureConfiguration": {
                "captureTarget": {},
                "captureOption": {"duration": "-1s", "packetSize": -1, "maxCaptureSize": 0},
                "filters": {"include": ["1.2.3.4:99999"], "exclude": ["x"]},
            },
            "outputConfiguration": {"hostPath": "a/../../b", "nfs": "x"},
        },
    )
    with pytest.raises(spec.SpecError) as exc:
        spec.parse_capture(body)
    fields = {p.field for p in exc.value.problems}
    assert fields == {
        "metadata.name",
        "spec.captureConfiguration.captureOption.duration",
        "spec.captureConfiguration.captureOption.packetSize",
        "spec.captureConfiguration.captureOption.maxCaptureSize",
        "spec.captureConfiguration.filters.include",
        "spec.captureConfiguration.filters.exclude",
        "spec.captureConfiguration.captureTarget",
        "spec.outputConfiguration.hostPath",
        "spec.outputConfiguration.nfs",
    }
    assert "--duration: '-1s' is negative; use a duration between 1s and 24h" in exc.value.for_cli()


def test_job_names_are_stable_and_valid() -> None:
    capture = spec.parse_capture(
        spec.capture_resource(
            "c",
            "ns",
            {
                "captureConfiguration": {"captureTarget": {"nodeNames": ["node-a"]}},
                "outputConfiguration": {"blobUpload": "blob-secret"},
            },
        )
    )
    [job] = jobs.build_jobs(capture, {"node-a": ()})
    assert job == jobs.build_jobs(capture, {"node-a": ()})[0]
    assert job["metadata"]["name"] == jobs.job_name("c", "node-a") and len(job["metadata"]["name"]) <= 63
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["RETINA_CAPTURE_BLOB_UPLOAD"]["valueFrom"] == {
        "secretKeyRef": {"name": "blob-secret", "key": "blob-upload-url"}
    }
    validate_manifest(job)
    validate_manifest(jobs.build_secret("c", "ns", blob_upload_url="https://a.blob/c?sig=x"))


def test_summarize_jobs() -> None:
    running = {"status": {"startTime": "2026-01-01T00:00:02+00:00", "active": 1}}
    ok = {
        "status": {
            "startTime": "2026-01-01T00:00:01Z",
            "succeeded": 1,
            "completionTime": "2026-01-01T00:01:00Z",
        }
    }
    bad = {
        "status": {
            "failed": 1,
            "conditions": [
                {"type": "Failed", "status": "True", "lastTransitionTime": "2026-01-01T00:02:00Z"}
            ],
        }
    }
    assert jobs.summarize_jobs([running, ok])["phase"] == "Running"
    assert jobs.summarize_jobs([running, ok])["startTime"] == "2026-01-01T00:00:01Z"
    summary = jobs.summarize_jobs([ok, bad])
    assert (summary["phase"], summary["succeeded"], summary["failed"]) == ("Failed", 1, 1)
    assert summary["completionTime"] == "2026-01-01T00:02:00Z"
    assert jobs.summarize_jobs([ok])["phase"] == "Succeeded"


def test_capture_jobs_run_with_least_privilege_and_keep_captures_on_the_node() -> None:
    """Issue 10: no SYS_ADMIN, everything else dropped, RuntimeDefault seccomp, no privilege
    escalation, no service-account token, limits; the tarball is built on a hostPath so a
    failed upload survives the pod, and the pod's termination message is the worker's error."""
    capture = spec.parse_capture(
        spec.capture_resource(
            "c",
            "ns",
            {
                "captureConfiguration": {"captureTarget": {"nodeNames": ["node-a"]}},
                "outputConfiguration": {"blobUpload": "blob-secret"},
            },
        )
    )
    [job] = jobs.build_jobs(capture, {"node-a": ()})
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    security = container["securityContext"]
    assert security["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW", "SETGID", "SETUID"]}
    assert security["allowPrivilegeEscalation"] is False and security["privileged"] is False
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert security["readOnlyRootFilesystem"] is True
    assert pod["automountServiceAccountToken"] is False
    assert set(container["resources"]["limits"]) == {"cpu", "memory"}
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    # a stopped capture is still packed and written: more than the kubelet's 30 s default (the
    # e2e uninstall scenario lost its tarball to SIGKILL on a loaded node without it)
    assert pod["terminationGracePeriodSeconds"] >= 120
    keep = {v["name"]: v for v in pod["volumes"]}["keep"]
    assert keep["hostPath"] == {"path": "/var/log/retina/captures", "type": "DirectoryOrCreate"}
    assert {"name": "keep", "mountPath": "/var/log/retina/captures"} in container["volumeMounts"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["RETINA_CAPTURE_OUTPUT_DIR_TMP"] == "/var/log/retina/captures"
    validate_manifest(job)
