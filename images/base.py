"""The Debian 12 base image, made from Debian's packages with no container registry.

``debootstrap --variant=minbase bookworm ROOTFS`` (essential packages and apt only), a few
files that keep images lean (dpkg skips documentation, apt keeps no caches) and the security
and updates suites in apt's sources, then ``tar -C ROOTFS -c . | podman import -``. An existing
image is kept (``--rebuild-base`` makes a new one), so warm builds skip all of this.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from images.podman import PodmanError, image_exists, podman_argv

BASE_IMAGE = "localhost/debian:bookworm"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"

# deb822 sources: the release plus its updates and security suites (the image gets fixes on rebuild).
SOURCES = f"""\
Types: deb
URIs: {MIRROR}
Suites: {SUITE} {SUITE}-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: {SUITE}-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""
# As Debian's own "slim" images: no manuals, documentation or translations (copyright kept).
DPKG_EXCLUDES = """\
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
"""
# apt: no recommends, no package cache left behind, no translations.
APT_CONF = """\
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
"""


def _require(binary: str, package: str) -> str:
    path = shutil.which(binary)
    if path is None:
        raise PodmanError(f"{binary} is not installed: run ./scripts/setup.sh (Debian package {package})")
    return path


def _configure(rootfs: Path) -> None:
    (rootfs / "etc/dpkg/dpkg.cfg.d/01-retina-slim").write_text(DPKG_EXCLUDES)
    (rootfs / "etc/apt/apt.conf.d/01-retina-slim").write_text(APT_CONF)
    (rootfs / "etc/apt/sources.list").unlink(missing_ok=True)
    (rootfs / "etc/apt/sources.list.d/debian.sources").write_text(SOURCES)
    # What debootstrap leaves behind: downloaded packages, apt lists, logs, documentation.
    for pattern in (
        "var/cache/apt/archives/*.deb",
        "var/cache/apt/*.bin",
        "var/lib/apt/lists/*_*",
        "var/log/*.log",
        "usr/share/man/*",
        "usr/share/info/*",
        "usr/share/locale/*",
        "usr/share/doc/*/*",
    ):
        for path in rootfs.glob(pattern):
            if path.name == "copyright":
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


def build_base(*, rebuild: bool = False, log=print) -> float:
    """Make ``BASE_IMAGE`` unless it exists; returns the seconds spent (0 when cached)."""
    if image_exists(BASE_IMAGE) and not rebuild:
        log(f"base image {BASE_IMAGE}: exists, kept (cached)")
        return 0.0
    debootstrap = _require("debootstrap", "debootstrap")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="retina-rootfs-", dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        log(f"base image {BASE_IMAGE}: debootstrap --variant=minbase {SUITE} (a few minutes)")
        proc = subprocess.run(
            [debootstrap, "--variant=minbase", SUITE, str(rootfs), MIRROR],
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr).strip()[-3000:]
            raise PodmanError(f"debootstrap failed ({proc.returncode}):\n{tail}")
        _configure(rootfs)
        tar = subprocess.Popen(
            ["tar", "--numeric-owner", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE
        )
        imported = subprocess.run(
            podman_argv(
                "import",
                "--change",
                "CMD=/bin/bash",
                "--message",
                f"debootstrap {SUITE} minbase",
                "-",
                BASE_IMAGE,
            ),
            stdin=tar.stdout,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        assert tar.stdout is not None
        tar.stdout.close()
        if tar.wait() != 0 or imported.returncode != 0:
            raise PodmanError(f"podman import of {rootfs} failed: {imported.stderr.strip()[-2000:]}")
    spent = time.monotonic() - started
    log(f"base image {BASE_IMAGE}: built in {spent:.0f}s")
    return spent
