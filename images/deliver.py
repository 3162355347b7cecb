"""Get the built images onto nodes: push them to a registry, or save them as OCI archives.

``scripts/build_images.sh --push REGISTRY`` copies every image of ``deploy/images.yaml`` to
``REGISTRY/<images.kind>:<tag>`` (any OCI registry). Credentials come from the environment only,
never from argv: ``REGISTRY_AUTH_FILE`` (containers-auth.json, read by podman itself) or
``RETINA_REGISTRY_USERNAME`` + ``RETINA_REGISTRY_PASSWORD`` (given to ``podman login
--password-stdin`` with a throw-away auth file that is removed afterwards).

``scripts/build_images.sh --save DIR`` writes, for clusters without a registry:

- ``DIR/retina-<kind>-<tag>.oci.tar``: ``podman save --format oci-archive`` of each image;
- ``DIR/SHA256SUMS``: the archives' checksums (``sha256sum -c SHA256SUMS`` checks them);
- ``DIR/images.json``: per kind the reference, the archive and the manifest digest, which is what
  ``ctr images ls`` and ``podman image inspect --format {{.Digest}}`` show once it is imported
  (the Ansible role ``retina.observability.images`` reads this file).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import tarfile
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from images.names import IMAGES_FILE, image_refs
from images.podman import PodmanError, podman, podman_argv

MANIFEST_FILE = "images.json"
CHECKSUMS_FILE = "SHA256SUMS"
USERNAME_ENV = "RETINA_REGISTRY_USERNAME"
PASSWORD_ENV = "RETINA_REGISTRY_PASSWORD"
# host[:port] then optional lowercase path components (no scheme: podman adds docker://).
_REGISTRY = re.compile(r"^[A-Za-z0-9.-]+(?::[0-9]{1,5})?(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$")


class DeliveryError(ValueError):
    """A delivery option or the environment is wrong; the message names it and the fix."""


@dataclass
class SavedImage:
    ref: str
    archive: str
    digest: str  # manifest digest inside the archive: what the node's runtime reports once imported
    sha256: str  # of the archive file
    size: int


@dataclass
class PushedImage:
    ref: str
    target: str
    digest: str

    @property
    def pinned(self) -> str:
        """``REGISTRY/name@sha256:...``: the reference that cannot move."""
        return f"{self.target.rsplit(':', 1)[0]}@{self.digest}"


def archive_name(kind: str, ref: str) -> str:
    return f"retina-{kind}-{ref.rsplit(':', 1)[1]}.oci.tar"


def oci_archive_manifest(path: Path) -> tuple[str, str]:
    """``(manifest digest, ref.name annotation)`` of the single image in an OCI archive."""
    with tarfile.open(path) as tar:
        member = tar.extractfile("index.json")
        if member is None:
            raise DeliveryError(f"{path}: not an OCI archive (no index.json)")
        index = json.load(member)
    manifests = index.get("manifests", [])
    if len(manifests) != 1:
        raise DeliveryError(f"{path}: expected one image in index.json, found {len(manifests)}")
    entry = manifests[0]
    return entry["digest"], entry.get("annotations", {}).get("org.opencontainers.image.ref.name", "")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save(out_dir: Path, refs: dict[str, str] | None = None, *, log=print) -> dict[str, SavedImage]:
    """Write every image as an OCI archive into ``out_dir`` plus SHA256SUMS and images.json."""
    refs = refs or image_refs()
    if out_dir.exists() and not out_dir.is_dir():
        raise DeliveryError(f"--save {out_dir}: exists and is not a directory; give a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    saved: dict[str, SavedImage] = {}
    for kind, ref in refs.items():
        name = archive_name(kind, ref)
        # Into a temporary name first: an interrupted save never leaves a truncated archive that
        # looks complete (podman save also refuses to overwrite an existing file).
        partial = out_dir / f".{name}.partial"
        partial.unlink(missing_ok=True)
        log(f"saving {ref} to {out_dir / name} ...")
        podman("save", "--format", "oci-archive", "-o", str(partial), ref, timeout=1800)
        digest, ref_name = oci_archive_manifest(partial)
        if ref_name != ref:
            raise DeliveryError(f"{partial}: podman saved it as {ref_name!r}, expected {ref!r}")
        os.replace(partial, out_dir / name)
        saved[kind] = SavedImage(
            ref=ref,
            archive=name,
            digest=digest,
            sha256=_sha256(out_dir / name),
            size=(out_dir / name).stat().st_size,
        )
    (out_dir / CHECKSUMS_FILE).write_text("".join(f"{s.sha256}  {s.archive}\n" for s in saved.values()))
    manifest = {"source": IMAGES_FILE.name, "images": {k: asdict(s) for k, s in saved.items()}}
    (out_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    for kind, s in saved.items():
        log(f"{kind}: {s.archive} {s.size / 1e6:.0f} MB, {s.ref}@{s.digest}")
    return saved


def target_ref(ref: str, registry: str) -> str:
    """``ref`` re-homed under ``registry``: ``localhost/retina-onprem/agent:0.1.0`` with
    ``registry.example:5000/retina`` gives ``registry.example:5000/retina/agent:0.1.0``."""
    return f"{registry.rstrip('/')}/{ref.rsplit('/', 1)[1]}"


def check_registry(registry: str) -> str:
    registry = registry.rstrip("/")
    if "://" in registry:
        raise DeliveryError(
            f"--push {registry!r}: give host[:port][/path] without a scheme "
            "(e.g. registry.example:5000/retina-onprem)"
        )
    if not _REGISTRY.match(registry):
        raise DeliveryError(
            f"--push {registry!r} is not a registry reference: host[:port] then "
            "lowercase path components (e.g. registry.example:5000/retina-onprem)"
        )
    return registry


def _login(registry: str, authfile: Path, tls_verify: bool) -> None:
    user, password = os.environ.get(USERNAME_ENV), os.environ.get(PASSWORD_ENV)
    if password is None:
        raise DeliveryError(
            f"{USERNAME_ENV} is set but {PASSWORD_ENV} is not: export both (or use REGISTRY_AUTH_FILE)"
        )
    host = registry.split("/", 1)[0]
    argv = [
        "login",
        "--authfile",
        str(authfile),
        f"--tls-verify={str(tls_verify).lower()}",
        "--username",
        user or "",
        "--password-stdin",
        host,
    ]
    # The password goes to stdin, never to argv (argv is visible in ps to every user).
    proc = subprocess.run(
        podman_argv(*argv), input=password, capture_output=True, text=True, timeout=120, check=False
    )
    if proc.returncode != 0:
        raise PodmanError(f"podman login {host} as {user!r} failed: {proc.stderr.strip()[-2000:]}")


def push(
    registry: str, refs: dict[str, str] | None = None, *, tls_verify: bool = True, log=print
) -> dict[str, PushedImage]:
    """``podman push`` every image to ``registry``; returns the pushed references and digests."""
    registry = check_registry(registry)
    refs = refs or image_refs()
    pushed: dict[str, PushedImage] = {}
    with tempfile.TemporaryDirectory(prefix="retina-push-") as tmp:
        auth: list[str] = []
        if USERNAME_ENV in os.environ or PASSWORD_ENV in os.environ:
            if USERNAME_ENV not in os.environ:
                raise DeliveryError(f"{PASSWORD_ENV} is set but {USERNAME_ENV} is not: export both")
            authfile = Path(tmp) / "auth.json"
            _login(registry, authfile, tls_verify)
            auth = ["--authfile", str(authfile)]
        # Otherwise podman reads REGISTRY_AUTH_FILE (or its default auth.json) itself.
        for kind, ref in refs.items():
            target = target_ref(ref, registry)
            digestfile = Path(tmp) / f"{kind}.digest"
            log(f"pushing {ref} to {target} ...")
            podman(
                "push",
                *auth,
                f"--tls-verify={str(tls_verify).lower()}",
                "--digestfile",
                str(digestfile),
                ref,
                f"docker://{target}",
                timeout=1800,
            )
            pushed[kind] = PushedImage(ref=ref, target=target, digest=digestfile.read_text().strip())
    for kind, p in pushed.items():
        log(f"{kind}: {p.pinned}")
    if {"agent", "operator"} <= pushed.keys():
        log(
            f"installer: -e agent_image={pushed['agent'].pinned} "
            f"-e agent_operator_image={pushed['operator'].pinned}"
        )
    return pushed
