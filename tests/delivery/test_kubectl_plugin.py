"""``kubectl retina`` as an admin installs it: one file on PATH, found and run by the real kubectl.

The plugin is built once per test run (``delivery.kubectl_plugin``, the code behind
``scripts/build_kubectl_plugin.sh``) for two Pythons: the oldest it supports (3.9) and this
machine's. It then runs under a Python 3.9 that has nothing installed, through the real
``kubectl``, against the Kubernetes API emulator over HTTPS.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from delivery import kubectl_plugin
from retina_lab.kube import KubeEmulator
from tests.kube_fixtures import small_cluster

KUBECTL = shutil.which("kubectl")


def _python(minor: int) -> Path:
    """A bare CPython 3.<minor> on this machine (pyenv's, or one on PATH)."""
    for candidate in sorted(Path("/root/.pyenv/versions").glob(f"3.{minor}.*/bin/python3.{minor}")):
        return candidate
    found = shutil.which(f"python3.{minor}")
    if found:
        return Path(found)
    pytest.fail(
        f"no Python 3.{minor} on this machine: the plugin claims to run on it, so the test needs one "
        f"(pyenv install 3.{minor}, or a python3.{minor} on PATH)"
    )


@pytest.fixture(scope="module")
def plugin_build(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("kubectl-plugin")
    return kubectl_plugin.build(
        out, "https://downloads.example.invalid/retina", [str(_python(9)), sys.executable]
    )


@pytest.fixture
def plugin_path(plugin_build: dict, tmp_path: Path) -> dict[str, str]:
    """An environment whose PATH has kubectl, the plugin and a ``python3`` that is Python 3.9."""
    if KUBECTL is None:  # a skip would hide that the admin's way in is untested
        pytest.fail("kubectl is not installed: run ./scripts/setup.sh (Debian package kubernetes-client)")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    shutil.copy2(plugin_build["plugin"], bindir / "kubectl-retina")
    (bindir / "python3").symlink_to(_python(9))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "PEX_"))}
    env.update(
        PATH=f"{bindir}:{Path(KUBECTL).parent}:/usr/bin:/bin",
        HOME=str(tmp_path),
        PEX_ROOT=str(tmp_path / "pex-root"),
    )
    return env


def _kubectl(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KUBECTL, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_kubectl_finds_the_plugin_and_runs_it_on_python_3_9(plugin_path: dict[str, str]) -> None:
    listed = _kubectl(plugin_path, "plugin", "list")
    assert listed.returncode == 0, listed.stderr
    assert any(line.endswith("/kubectl-retina") for line in listed.stdout.splitlines()), listed.stdout

    version = _kubectl(plugin_path, "retina", "version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith(f"kubectl-retina {kubectl_plugin.project_version()}")
    # It really ran on 3.9: the interpreter the plugin chose is the 3.9 on PATH.
    probe = subprocess.run(
        ["kubectl-retina", "-c", "import sys; print(sys.version_info[:2])"],
        env={**plugin_path, "PEX_INTERPRETER": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert probe.stdout.strip() == "(3, 9)", probe.stderr


def test_capture_create_and_list_through_kubectl_honour_kubeconfig_context_and_namespace(
    plugin_path: dict[str, str], tmp_path: Path
) -> None:
    with KubeEmulator(workdir=tmp_path / "kube") as kube:
        small_cluster(kube)
        # Two contexts: the current one points at a closed port, "lab" at the emulator, with
        # namespace db. --context must pick "lab", -n must override its namespace.
        config = yaml.safe_load(kube.kubeconfig_path.read_text())
        good = config["contexts"][0]
        bad_cluster = {**config["clusters"][0], "name": "closed"}
        bad_cluster["cluster"] = {**bad_cluster["cluster"], "server": "https://127.0.0.1:9"}
        config["clusters"].append(bad_cluster)
        config["contexts"] = [
            {"name": "lab", "context": {**good["context"], "namespace": "db"}},
            {"name": "elsewhere", "context": {**good["context"], "cluster": "closed"}},
        ]
        config["current-context"] = "elsewhere"
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump(config))

        lab = ["--kubeconfig", str(kubeconfig), "--context", "lab"]
        created = _kubectl(
            plugin_path,
            *("retina", "capture", "create", *lab, "-n", "web", "--name", "from-kubectl"),
            *("--node-names", "node-1", "--host-path", "x", "--no-wait"),
        )
        assert created.returncode == 0, created.stderr
        assert [j["metadata"]["namespace"] for j in kube.objects("Job", "web")] == ["web"]

        listed = _kubectl(plugin_path, "retina", "capture", "list", *lab, "-n", "web")
        assert listed.returncode == 0, listed.stderr
        # Retina's columns: NAMESPACE, CAPTURE NAME, JOBS, COMPLETIONS, AGE (+ STATUS)
        assert [line.split()[:2] for line in listed.stdout.splitlines()[1:]] == [["web", "from-kubectl"]]

        # The context's own namespace (db) applies without -n: nothing there.
        listed_db = _kubectl(plugin_path, "retina", "capture", "list", *lab)
        assert listed_db.returncode == 0 and "No captures found" in listed_db.stdout

        # KUBECONFIG is honoured like --kubeconfig; the current context is unreachable: one clean line.
        env = {**plugin_path, "KUBECONFIG": str(kubeconfig)}
        refused = _kubectl(env, "retina", "capture", "list", "-n", "web")
        assert refused.returncode == 1
        (line,) = refused.stderr.strip().splitlines()  # the server KUBECONFIG's current context names
        assert line.startswith("error: cannot reach the Kubernetes API server at https://127.0.0.1:9: "), line
        assert line.endswith("check that the cluster is up and that --kubeconfig/--context name it"), line


def test_krew_manifest_and_archive_agree(plugin_build: dict) -> None:
    manifest = yaml.safe_load(plugin_build["manifest"].read_text())
    archive: Path = plugin_build["archive"]
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert manifest["apiVersion"] == "krew.googlecontainertools.github.com/v1alpha2"
    assert manifest["kind"] == "Plugin" and manifest["metadata"]["name"] == "retina"
    assert manifest["spec"]["version"] == f"v{kubectl_plugin.project_version()}"
    selectors = {
        (p["selector"]["matchLabels"]["os"], p["selector"]["matchLabels"]["arch"])
        for p in manifest["spec"]["platforms"]
    }
    assert selectors == set(kubectl_plugin.KREW_PLATFORMS)
    with tarfile.open(archive) as tar:
        members = {m.name: m for m in tar.getmembers()}
    for platform in manifest["spec"]["platforms"]:
        assert platform["sha256"] == digest
        assert platform["uri"].endswith("/" + archive.name)
        assert platform["bin"] == "kubectl-retina"
        for entry in platform["files"]:
            assert entry["from"] in members
    assert members["kubectl-retina"].mode & 0o111


def test_what_the_plugin_imports_needs_nothing_newer_than_python_3_9(plugin_path: dict[str, str]) -> None:
    """Every module the plugin loads (its commands, the capture model, diagnose and map) is
    checked by vermin against 3.9: the run above proves only the code paths it took."""
    probe = subprocess.run(
        [
            "kubectl-retina",
            "-c",
            "import sys, retina_capture.cli.main\n"
            "print('\\n'.join(m.__file__ for n, m in sys.modules.items()\n"
            "                 if n.startswith(('retina_capture', 'retina_common', 'retina_preflight'))\n"
            "                 and getattr(m, '__file__', None)))",
        ],
        env={**plugin_path, "PEX_INTERPRETER": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr
    files = probe.stdout.split()
    assert any(f.endswith("retina_capture/cli/main.py") for f in files), files
    vermin = subprocess.run(
        [
            str(Path(sys.executable).with_name("vermin")),
            "--no-tips",
            "--violations",
            "--eval-annotations",
            "-t=3.9-",
            *files,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert f"Analyzing {len(files)} files" in vermin.stdout, vermin.stdout + vermin.stderr  # all of them
    # vermin reads float.is_integer as int.is_integer (3.12); every other finding is real.
    findings = [
        line for line in vermin.stdout.splitlines() if "requires" in line and "is_integer" not in line
    ]
    assert not findings, vermin.stdout
