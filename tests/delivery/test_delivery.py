"""Images onto nodes with and without a registry: ``build_images.sh --push`` to a real registry
with credentials from the environment, ``--save`` to OCI archives, and the ``images`` role
importing those archives into a real containerd (``ctr``) and a real containers-storage
(``podman``, what CRI-O reads), once: a second run changes nothing."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import tarfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from images.names import image_refs
from tests.delivery.conftest import BUILD_SCRIPT, Containerd, PodmanStore, Registry, Saved, run
from tests.installer.ansible_run import localhost_inventory, run_playbook

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

PLAYBOOK = Path(__file__).resolve().parent / "playbooks" / "images-render.yml"


def _recap(stdout: str) -> dict[str, int]:
    """The PLAY RECAP counters of localhost (ok, changed, failed, ...)."""
    line = next(line for line in stdout.splitlines() if line.startswith("localhost") and "changed=" in line)
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}


def _deliver(
    saved: Saved, tmp_path: Path, runtime_vars: dict
) -> tuple[subprocess.CompletedProcess[str], float]:
    """The images role on this machine as the only node, then the agent role rendering into
    tmp_path/manifests (the same directory each run, so an unchanged render changes nothing)."""
    started = time.monotonic()
    proc = run_playbook(
        PLAYBOOK,
        tmp_path,
        {"images_archive_dir": str(saved.dir), "manifest_dir": str(tmp_path / "manifests"), **runtime_vars},
        inventory=localhost_inventory(tmp_path),
        timeout=1800,
    )
    return proc, time.monotonic() - started


def _daemonset_images(tmp_path: Path) -> set[str]:
    images = set()
    for path in (tmp_path / "manifests").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") in ("DaemonSet", "Deployment"):
                images |= {c["image"] for c in doc["spec"]["template"]["spec"]["containers"]}
    return images


# -- --save ----------------------------------------------------------------------------------
def test_save_writes_oci_archives_checksums_and_digests(saved_images: Saved) -> None:
    refs = image_refs()
    images = saved_images.manifest["images"]
    assert {kind: image["ref"] for kind, image in images.items()} == refs
    check = subprocess.run(
        ["sha256sum", "--check", "--strict", "SHA256SUMS"],
        cwd=saved_images.dir,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert sorted(check.stdout.split()) == sorted([f"{i['archive']}:" for i in images.values()] + ["OK"] * 2)
    for image in images.values():
        with tarfile.open(saved_images.dir / image["archive"]) as tar:
            index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        assert [m["digest"] for m in index["manifests"]] == [image["digest"]]
        assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == image["ref"]
    print(saved_images.output)


# -- --push ----------------------------------------------------------------------------------
def test_push_to_a_registry_with_credentials_from_the_environment(
    built_images: dict[str, str], registry: Registry
) -> None:
    target = f"{registry.address}/retina-onprem"
    push = [str(BUILD_SCRIPT), "--no-build", "--push", target, "--insecure-registry"]
    no_credentials = run(push, timeout=900)
    assert no_credentials.returncode == 1
    assert (
        "unauthorized" in no_credentials.stderr.lower() or "authentication" in no_credentials.stderr.lower()
    )

    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "RETINA_REGISTRY_USERNAME": registry.user,
        "RETINA_REGISTRY_PASSWORD": registry.password,
    }
    started = time.monotonic()
    proc = run(push, timeout=1800, env=env)
    print(f"pushed both images in {time.monotonic() - started:.0f}s\n{proc.stdout}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert registry.password not in proc.stdout + proc.stderr

    auth = base64.b64encode(f"{registry.user}:{registry.password}".encode()).decode()
    for kind, ref in built_images.items():
        name, tag = ref.rsplit("/", 1)[1].split(":")
        printed = re.search(
            rf"^{kind}: {re.escape(target)}/{name}@(sha256:[0-9a-f]{{64}})$", proc.stdout, re.M
        )
        assert printed, proc.stdout
        request = urllib.request.Request(
            f"http://{registry.address}/v2/retina-onprem/{name}/manifests/{tag}",
            method="HEAD",
            headers={
                "Authorization": f"Basic {auth}",
                "Accept": "application/vnd.oci.image.manifest.v1+json, "
                "application/vnd.docker.distribution.manifest.v2+json",
            },
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.headers["Docker-Content-Digest"] == printed.group(1)


def test_push_refuses_a_url_and_half_the_credentials() -> None:
    proc = run([str(BUILD_SCRIPT), "--no-build", "--push", "https://registry.example/retina"], timeout=120)
    assert proc.returncode == 1 and "without a scheme" in proc.stderr
    from images.deliver import DeliveryError, push

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RETINA_REGISTRY_USERNAME", "someone")
        mp.delenv("RETINA_REGISTRY_PASSWORD", raising=False)
        with pytest.raises(DeliveryError, match="RETINA_REGISTRY_PASSWORD"):
            push("registry.example/retina", {"agent": "localhost/retina-onprem/agent:0.1.0"})


# -- the images role -------------------------------------------------------------------------
def test_images_role_imports_into_containers_storage_once(
    saved_images: Saved, podman_store: PodmanStore, tmp_path: Path
) -> None:
    runtime = {
        "images_runtime": "crio",
        "images_storage_root": str(podman_store.root),
        "images_storage_runroot": str(podman_store.runroot),
    }
    first, seconds = _deliver(saved_images, tmp_path, runtime)
    assert first.returncode == 0, first.stdout[-5000:] + first.stderr[-2000:]
    for image in saved_images.manifest["images"].values():
        inspect = podman_store.podman("image", "inspect", image["ref"])
        assert inspect.returncode == 0, inspect.stderr
        assert json.loads(inspect.stdout)[0]["Digest"] == image["digest"]
    delivered = {i["ref"] for i in saved_images.manifest["images"].values()}
    assert _daemonset_images(tmp_path) == delivered

    second, _ = _deliver(saved_images, tmp_path, runtime)
    assert second.returncode == 0, second.stdout[-5000:]
    assert _recap(second.stdout)["changed"] == 0, second.stdout[-5000:]
    assert "Copy the archives" not in second.stdout
    total = sum(i["size"] for i in saved_images.manifest["images"].values())
    print(
        f"images role, CRI-O/containers-storage: {total / 1e6:.0f} MB of archives delivered and imported in "
        f"{seconds:.0f}s; second run {_recap(second.stdout)}"
    )


def test_images_role_imports_into_containerd_once(
    saved_images: Saved, containerd: Containerd, tmp_path: Path
) -> None:
    runtime = {"images_containerd_address": containerd.address}  # images_runtime auto finds the socket
    first, seconds = _deliver(saved_images, tmp_path, runtime)
    assert first.returncode == 0, first.stdout[-5000:] + first.stderr[-2000:]
    listed = containerd.ctr("images", "ls").stdout
    for image in saved_images.manifest["images"].values():
        assert re.search(rf"^{re.escape(image['ref'])}\s+\S+\s+{image['digest']}\s", listed, re.M), listed
    assert _daemonset_images(tmp_path) == {i["ref"] for i in saved_images.manifest["images"].values()}

    second, _ = _deliver(saved_images, tmp_path, runtime)
    assert second.returncode == 0, second.stdout[-5000:]
    assert _recap(second.stdout)["changed"] == 0, second.stdout[-5000:]
    total = sum(i["size"] for i in saved_images.manifest["images"].values())
    print(
        f"images role, containerd: {total / 1e6:.0f} MB of archives delivered and imported "
        f"in {seconds:.0f}s; "
        f"second run {_recap(second.stdout)}"
    )
