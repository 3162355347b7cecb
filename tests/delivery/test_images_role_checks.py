"""The images role refuses bad input before it imports anything, with a message naming the option
and the fix: a directory without images.json, a kind it does not hold, an archive whose SHA-256
is not the one ``build_images.sh --save`` recorded (a corrupted or swapped file)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tests.delivery.conftest import PodmanStore
from tests.delivery.test_delivery import PLAYBOOK
from tests.installer.ansible_run import localhost_inventory, run_playbook


def _run(tmp_path: Path, archive_dir: Path, **extra: object):
    return run_playbook(
        PLAYBOOK,
        tmp_path,
        {"images_archive_dir": str(archive_dir), "manifest_dir": str(tmp_path / "manifests"), **extra},
        inventory=localhost_inventory(tmp_path),
    )


def _fake_save(directory: Path, recorded_sha256: str | None = None) -> Path:
    directory.mkdir()
    archive = directory / "retina-agent-0.1.0.oci.tar"
    archive.write_bytes(b"not the archive that was saved")
    sha = recorded_sha256 or hashlib.sha256(archive.read_bytes()).hexdigest()
    (directory / "images.json").write_text(
        json.dumps(
            {
                "images": {
                    "agent": {
                        "ref": "localhost/retina-onprem/agent:0.1.0",
                        "archive": archive.name,
                        "digest": "sha256:" + "0" * 64,
                        "sha256": sha,
                        "size": archive.stat().st_size,
                    }
                }
            }
        )
    )
    return directory


def test_directory_without_images_json_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    proc = _run(tmp_path, tmp_path / "empty", images_runtime="crio")
    assert proc.returncode != 0
    assert "images_archive_dir" in proc.stdout and "build_images.sh --save" in proc.stdout


def test_kind_missing_from_images_json_is_refused(tmp_path: Path) -> None:
    proc = _run(tmp_path, _fake_save(tmp_path / "saved"), images_runtime="crio")
    assert proc.returncode != 0
    assert 'images_kinds: ["operator"]' in proc.stdout, proc.stdout[-3000:]


def test_archive_with_another_sha256_is_not_imported(tmp_path: Path, podman_store: PodmanStore) -> None:
    saved = _fake_save(tmp_path / "saved", recorded_sha256="f" * 64)
    proc = _run(
        tmp_path,
        saved,
        images_runtime="crio",
        images_kinds=["agent"],
        images_storage_root=str(podman_store.root),
        images_storage_runroot=str(podman_store.runroot),
        images_node_dir=str(tmp_path / "node"),
    )
    assert proc.returncode != 0
    assert "changed after --save" in proc.stdout, proc.stdout[-3000:]
    assert "Import into containers-storage" not in proc.stdout.split("changed after --save")[1]


def test_no_runtime_found_names_the_option(tmp_path: Path) -> None:
    proc = _run(
        tmp_path,
        _fake_save(tmp_path / "saved"),
        images_kinds=["agent"],
        images_containerd_address=str(tmp_path / "no.sock"),
    )
    assert not Path("/run/crio/crio.sock").exists(), "this test expects a machine without CRI-O"
    assert proc.returncode != 0
    assert "found neither containerd" in proc.stdout and "set images_runtime" in proc.stdout, proc.stdout[
        -3000:
    ]
