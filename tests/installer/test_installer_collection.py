"""The collection builds into an installable artifact that carries the roles, CRDs, dashboards,
module and image list, works once installed, and passes ansible-lint (production profile) and
the ansible-test sanity tests that run offline."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

from tests.installer.ansible_run import (
    COLLECTION,
    REPO,
    TEST_PLAYBOOKS,
    VENV_BIN,
    ansible_env,
    run_playbook,
)

# Sanity tests that need no virtual environment of their own (the others bootstrap pip from the
# internet, which this machine cannot reach).
OFFLINE_SANITY_TESTS = (
    "action-plugin-docs",
    "compile",
    "empty-init",
    "ignores",
    "line-endings",
    "no-illegal-filenames",
    "no-smart-quotes",
    "shebang",
    "symlinks",
)


def run(argv: list[str], cwd: Path, timeout: float = 600, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=cwd, env=ansible_env(**env), capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(tarball, installed collection directory)."""
    out = tmp_path_factory.mktemp("build")
    proc = run(
        [str(VENV_BIN / "ansible-galaxy"), "collection", "build", str(COLLECTION), "--output-path", str(out)],
        REPO,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tarball = out / "retina-observability-0.1.0.tar.gz"
    assert tarball.is_file(), proc.stdout
    installed = out / "installed"
    proc = run(
        [
            str(VENV_BIN / "ansible-galaxy"),
            "collection",
            "install",
            "--offline",
            "-p",
            str(installed),
            str(tarball),
        ],
        REPO,
        ANSIBLE_COLLECTIONS_PATH=str(installed),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    manifest = installed / "ansible_collections" / "retina" / "observability" / "MANIFEST.json"
    assert manifest.is_file(), proc.stdout
    return tarball, installed


def test_tarball_carries_roles_crds_module_and_images(built: tuple[Path, Path]) -> None:
    tarball, _ = built
    with tarfile.open(tarball) as tar:
        members = {m.name: m for m in tar.getmembers()}
        images = tar.extractfile(members["roles/agent/files/images.yaml"])
        assert images is not None
        images_text = images.read().decode()
        manifest = json.loads(tar.extractfile(members["MANIFEST.json"]).read())  # type: ignore[union-attr]
    for role in ("preflight", "agent", "prometheus", "dashboards"):
        assert f"roles/{role}/meta/argument_specs.yml" in members, role
        assert f"roles/{role}/defaults/main.yml" in members, role
        assert f"roles/{role}/tasks/main.yml" in members, role
    assert "plugins/modules/retina_preflight.py" in members
    assert "meta/runtime.yml" in members and "README.md" in members
    crds = sorted(p.name for p in (COLLECTION / "roles/agent/files/crds").glob("*.yaml"))
    assert crds, "no CRD in roles/agent/files/crds"
    for crd in crds:
        assert f"roles/agent/files/crds/{crd}" in members
    dashboards = sorted(p.name for p in (COLLECTION / "roles/dashboards/files/dashboards").glob("*.json"))
    assert dashboards, "no dashboard in roles/dashboards/files/dashboards"
    for dashboard in dashboards:
        assert f"roles/dashboards/files/dashboards/{dashboard}" in members
    # the symlinks to deploy/ are stored as the files themselves, same content
    assert members["roles/agent/files/images.yaml"].isfile()
    assert images_text == (REPO / "deploy" / "images.yaml").read_text()
    assert members["roles/prometheus/files/retina-pods.scrape.yaml"].isfile()
    assert manifest["collection_info"]["namespace"] == "retina"
    assert manifest["collection_info"]["name"] == "observability"


def test_installed_collection_renders_the_manifests(built: tuple[Path, Path], tmp_path: Path) -> None:
    _, installed = built
    proc = run_playbook(
        TEST_PLAYBOOKS / "render.yml",
        tmp_path,
        {"manifest_dir": str(tmp_path / "out")},
        env={"ANSIBLE_COLLECTIONS_PATH": str(installed)},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert str(installed) in proc.stdout, "the run did not use the installed collection"
    docs = list(yaml.safe_load_all((tmp_path / "out" / "agent" / "retina-agent.yaml").read_text()))
    assert "DaemonSet" in {d["kind"] for d in docs}


def test_role_docs_come_from_argument_specs(built: tuple[Path, Path]) -> None:
    _, installed = built
    for role in ("preflight", "agent", "prometheus", "dashboards"):
        env = ansible_env(ANSIBLE_COLLECTIONS_PATH=str(installed))
        proc = subprocess.run(
            [str(VENV_BIN / "ansible-doc"), "-t", "role", "--json", f"retina.observability.{role}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        doc = json.loads(proc.stdout)[f"retina.observability.{role}"]
        assert doc["entry_points"]["main"]["options"], role


def test_ansible_test_sanity_offline_subset(built: tuple[Path, Path]) -> None:
    _, installed = built
    root = installed / "ansible_collections" / "retina" / "observability"
    argv = [str(VENV_BIN / "ansible-test"), "sanity", "--local", "--python", "3.11"]
    for test in OFFLINE_SANITY_TESTS:
        argv += ["--test", test]
    proc = run(argv, root)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


def test_ansible_lint_bare_at_the_root_passes_the_production_profile() -> None:
    """As a contributor (or pre-commit) runs it: no arguments, no ANSIBLE_* variables; the profile
    comes from .ansible-lint and the collection from ansible.cfg."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["NO_COLOR"] = "1"
    proc = subprocess.run(
        [str(VENV_BIN / "ansible-lint")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-4000:]
    assert "Profile 'production' was required, and it passed" in proc.stdout + proc.stderr
