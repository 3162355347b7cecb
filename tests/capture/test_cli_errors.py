"""kubectl-retina on bad input and faults: one line naming the input and the fix, exit 2 for bad
usage, never a traceback, and nothing left half-created."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import kubernetes
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from retina_capture import jobs as jobs_mod
from retina_capture.cli.main import main
from tests import kube_fixtures
from tests.helpers.capture import free_port
from tests.kube_fixtures import small_cluster

kube_emulator = kube_fixtures.kube_emulator
kube_api_client = kube_fixtures.kube_api_client

KUBECTL_RETINA = str(Path(sys.executable).parent / "kubectl-retina")


def run_cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The installed kubectl-retina, so a traceback would show on its stderr."""
    base = {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": "/nonexistent",
        **{k: v for k, v in os.environ.items() if k == "PYTHONPATH"},
    }  # the code under test
    return subprocess.run(
        [KUBECTL_RETINA, *argv], capture_output=True, text=True, timeout=60, env={**base, **(env or {})}
    )


def unreachable_kubeconfig(tmp_path: Path) -> Path:
    """A kubeconfig naming an API server on a port nobody listens on."""
    path = tmp_path / "kubeconfig"
    path.write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "http://127.0.0.1:{free_port()}"}}}}]
users: [{{name: u, user: {{token: t}}}}]
contexts: [{{name: x, context: {{cluster: c, user: u, namespace: web}}}}]
current-context: x
""")
    return path


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--file-count", "5000"], "--file-count: must be 0 to 1000 (got 5000)"),
        (["--host-path", "/etc"], "--host-path: '/etc' is absolute"),
        (["--tcpdump-filter", "-w /tmp/x"], "--tcpdump-filter: '-w /tmp/x' starts with '-'"),
        (["--packet-size", "70000000"], "--packet-size: must be 0 to 262144 bytes"),
        (["--duration", "0.0001s"], "--duration: '0.0001s' is too short; use a duration between 1s and 24h"),
        (["--duration", "999999999h"], "--duration: '999999999h' is too long"),
        (["--pod-selectors", "app=web!"], "--pod-selectors: matchLabels.app: 'web!' is not a label value"),
    ],
)
def test_flags_are_checked_before_the_kubeconfig(tmp_path, argv, flag) -> None:
    args = argv if "--host-path" in argv else [*argv, "--host-path", "x"]
    proc = run_cli("capture", "create", "--no-wait", *args, env={"KUBECONFIG": str(tmp_path / "missing")})
    assert proc.returncode == 2, proc.stderr
    assert flag in proc.stderr
    assert "kubeconfig" not in proc.stderr and "Traceback" not in proc.stderr


def test_unreachable_api_server_is_one_line(tmp_path) -> None:
    kubeconfig = unreachable_kubeconfig(tmp_path)
    for argv in (
        ["capture", "create", "--host-path", "x", "--no-wait"],
        ["capture", "list"],
        ["capture", "delete", "--name", "x"],
        ["capture", "download", "--name", "x"],
    ):
        proc = run_cli(*argv, "--kubeconfig", str(kubeconfig))
        assert proc.returncode == 1, proc.stderr
        assert "Traceback" not in proc.stderr and "MaxRetryError" not in proc.stderr
        [line] = proc.stderr.strip().splitlines()
        assert line.startswith("error: cannot reach the Kubernetes API server at http://127.0.0.1:")
        assert "Connection refused" in line and "--kubeconfig" in line


def test_unknown_flag_does_not_echo_a_secret(tmp_path) -> None:
    proc = run_cli(
        "capture",
        "create",
        "--host-path",
        "x",
        "--s3-secret-key=TOPSECRET1",
        "--blob-sas",
        "https://a.blob.core.windows.net/c?sv=1&sig=TOPSECRET2",
        "--colour=blue",
        env={"KUBECONFIG": str(tmp_path / "missing")},
    )
    assert proc.returncode == 2
    assert "TOPSECRET" not in proc.stderr
    assert "--s3-secret-key=*** --blob-sas *** --colour=blue" in proc.stderr


def test_a_failed_job_leaves_no_secret_or_job_behind(kube_emulator, capsys, monkeypatch) -> None:
    """The API refuses the second Job: the Secret and the first Job made before it are removed."""
    small_cluster(kube_emulator)
    monkeypatch.setenv("RETINA_CAPTURE_S3_ACCESS_KEY_ID", "id")
    monkeypatch.setenv("RETINA_CAPTURE_S3_SECRET_ACCESS_KEY", "secret")
    real = jobs_mod.build_jobs

    def second_job_refused(*args, **kwargs):
        jobs = real(*args, **kwargs)
        jobs[1]["metadata"]["name"] = "Not_A_Valid_Name"  # the API answers 422
        return jobs

    monkeypatch.setattr(jobs_mod, "build_jobs", second_job_refused)
    code = main(
        [
            "capture",
            "create",
            "--name",
            "half",
            "-n",
            "web",
            "--node-names",
            "node-1,node-2",
            "--s3-bucket",
            "caps",
            "--no-wait",
            "--kubeconfig",
            str(kube_emulator.kubeconfig_path),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "422" in err and "removed 1 job(s) and 1 secret(s)" in err
    assert kube_emulator.objects("Job", "web") == [] and kube_emulator.objects("Secret", "web") == []


def test_an_existing_capture_is_left_alone(kube_emulator, capsys) -> None:
    """Refusing a second capture of the same name must not roll back the first one."""
    small_cluster(kube_emulator)
    kubeconfig = str(kube_emulator.kubeconfig_path)
    argv = [
        "capture",
        "create",
        "--name",
        "once",
        "-n",
        "web",
        "--node-names",
        "node-1",
        "--host-path",
        "x",
        "--no-wait",
        "--kubeconfig",
        kubeconfig,
    ]
    assert main(argv) == 0
    assert main(argv) == 1
    assert "already exists" in capsys.readouterr().err
    assert len(kube_emulator.objects("Job", "web")) == 1


def test_match_expressions_are_checked_like_the_api_does(kube_api_client) -> None:
    from retina_capture import spec

    def body(selector: dict) -> dict:
        return spec.capture_resource(
            "c",
            "web",
            {
                "captureConfiguration": {"captureTarget": {"podSelector": selector}},
                "outputConfiguration": {"hostPath": "x"},
            },
        )

    field = "spec.captureConfiguration.captureTarget.podSelector"
    for selector, message in (
        (
            {"matchExpressions": [{"key": "bad key", "operator": "In", "values": ["a"]}]},
            "matchExpressions[0].key: 'bad key' is not a label key",
        ),
        (
            {"matchExpressions": [{"key": "app", "operator": "In", "values": ["a b"]}]},
            "matchExpressions[0].values: 'a b' is not a label value",
        ),
        (
            {"matchExpressions": [{"key": "app", "operator": "In"}]},
            "matchExpressions[0].values: In needs at least one value",
        ),
        (
            {"matchExpressions": [{"key": "app", "operator": "Exists", "values": ["x"]}]},
            "matchExpressions[0].values: Exists takes no values",
        ),
    ):
        with pytest.raises(spec.SpecError) as exc:
            spec.parse_capture(body(selector))
        assert [(p.field, p.message.split(" (")[0]) for p in exc.value.problems] == [(field, message)]
    ok = spec.parse_capture(
        body(
            {
                "matchExpressions": [
                    {"key": "example.com/tier", "operator": "NotIn", "values": ["a", "b-c.d_e"]},
                    {"key": "app", "operator": "DoesNotExist"},
                ]
            }
        )
    )
    # ... and what passes, the API server accepts.
    core = kubernetes.client.CoreV1Api(kube_api_client)
    core.list_pod_for_all_namespaces(label_selector=spec.selector_to_string(ok.pod_selector))


FLAG_VALUES = {
    "--duration": ["30s", "0.0001s", "25h", "-1s", "1e9h", "soon"],
    "--max-size": ["1", "100000", "100001", "0", "x"],
    "--packet-size": ["0", "262144", "262145", "-1"],
    "--file-count": ["0", "1", "1000", "5000"],
    "--interfaces": ["any", "eth0,eth1", "bad name!", ""],
    "--host-path": ["x", "a/b", "/etc", "../up", ""],
    "--pvc": ["claim", "Bad_Claim"],
    "--s3-bucket": ["caps", "Bad_Bucket"],
    "--blob-upload": ["https://a.blob.core.windows.net/c?sv=1&sig=s", "not-a-url"],
    "--tcpdump-filter": ["tcp", "-w /tmp/x", "port 80; rm -rf /"],
    "--pcap-filter": ["udp", "tcp"],
    "--include-filter": ["10.0.0.1:80", "nope"],
    "--node-names": ["node-1", "node-1,node-2", "node-9", "Bad_Node"],
    "--node-selectors": ["kubernetes.io/os=linux", "bad key=x", "app"],
    "--pod-selectors": ["app=frontend", "app=nothing", "app=web!"],
    "--pod-names": ["a", "zzz"],
    "--namespace-selectors": ["team=db"],
    "--include-metadata": ["true", "false", "maybe"],
    "--job-num-limit": ["0", "1"],
}


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    flags=st.dictionaries(
        st.sampled_from(sorted(FLAG_VALUES)), st.sampled_from([0, 0, 0, 0, 0, 1, 2, 3, 4, 5]), max_size=4
    ),
    s3_keys=st.booleans(),
)
def test_every_flag_set_is_applied_whole_or_not_at_all(
    kube_emulator, capsys, monkeypatch, flags, s3_keys
) -> None:
    """Generated ``capture create`` flag sets: exit 0 with one Job per node, or exit 1/2 with a
    message naming the flag (2: bad usage) and no Job or Secret of that capture left behind."""
    if not kube_emulator.objects("Node"):
        small_cluster(kube_emulator)
    for key in ("RETINA_CAPTURE_S3_ACCESS_KEY_ID", "RETINA_CAPTURE_S3_SECRET_ACCESS_KEY"):
        if s3_keys:
            monkeypatch.setenv(key, "k")
        else:
            monkeypatch.delenv(key, raising=False)
    name = f"p{uuid.uuid4().hex[:8]}"
    argv = [
        "capture",
        "create",
        "--name",
        name,
        "-n",
        "web",
        "--no-wait",
        "--kubeconfig",
        str(kube_emulator.kubeconfig_path),
    ]
    for flag, pick in flags.items():
        values = FLAG_VALUES[flag]
        argv += [f"{flag}={values[pick % len(values)]}"]
    if not {"--host-path", "--pvc", "--s3-bucket", "--blob-upload"} & set(flags):
        argv.append("--host-path=x")
    capsys.readouterr()
    code = main(argv)
    event(f"exit {code}")  # --hypothesis-show-statistics shows the mix
    out, err = capsys.readouterr()
    mine = [
        o
        for kind in ("Job", "Secret")
        for o in kube_emulator.objects(kind, "web")
        if (o["metadata"].get("labels") or {}).get("capture-name") == name
    ]
    if code == 0:
        jobs = [o for o in mine if o["kind"] == "Job"]
        assert jobs and f"created {len(jobs)} job(s)" in out
        assert (
            main(
                [
                    "capture",
                    "delete",
                    "--name",
                    name,
                    "-n",
                    "web",
                    "--kubeconfig",
                    str(kube_emulator.kubeconfig_path),
                ]
            )
            == 0
        )
        return
    assert code in (1, 2), (code, err)
    assert mine == [], f"half-applied: {[o['metadata']['name'] for o in mine]} after {argv}"
    assert "Traceback" not in err and err.strip(), argv
    # A warning (a secret given as a flag) may come first; the first error names the problem.
    errors = [line for line in err.splitlines() if not line.startswith("warning: ")]
    if code == 2:
        assert errors[0].startswith("error: --"), err  # names the flag
    else:
        assert "exceeds the limit" in err or errors[0].startswith("error: "), err
