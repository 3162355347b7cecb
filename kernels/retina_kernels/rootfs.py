"""The guest's root file system: Debian 12 with what the agent image has, the lab's tools and the project.

Built in two cached layers under ``<cache>/rootfs``:

1. the system: ``debootstrap --variant=minbase bookworm`` (as images/base.py makes the
   container base, with the same slim dpkg/apt settings), then ``apt-get install`` in a chroot of
   exactly the agent image's packages (``images.build.AGENT_PACKAGES``: libbpf1, no compiler, no
   bcc, no kernel headers) plus the lab's tools (python3-venv, dnsmasq-base, kmod, procps).
   Keyed by that package list; minutes, done once per machine.
2. the project: a venv at /opt/retina with the agent image's dependency wheels (the wheelhouse
   images/build.py makes for the agent image, pod-level clients included, at the versions the
   tests ran with) and this repository's wheel (the BPF objects compiled into it by
   images/build.py, as for the image); nftables linked in as the Containerfile does; the test lab
   and the matrix (not in the wheel) copied beside it. Redone (seconds) when the wheel or those
   sources change.

The result is an ext4 image (``mke2fs -d``, no mounting), keyed by both layers; qemu boots it
with ``snapshot=on``, so every boot starts from the same bytes.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from .catalog import ROOTFS_SUITE
from .debian import MIRROR

#: The repository (lab/ and kernels/ are copied into the guest from here).
REPO = Path(__file__).resolve().parents[2]

#: What the lab and the guest program need beyond the agent image's packages.
LAB_PACKAGES = (
    "python3-venv",
    "dnsmasq-base",
    "kmod",
    "procps",
)


def packages() -> tuple[str, ...]:
    """Debian packages of the guest beyond debootstrap's minbase: the agent image's (one list,
    images/build.py) and the lab's. Imported here, not at the top: this module also runs inside
    the guest, which has no ``images`` package."""
    from images.build import AGENT_PACKAGES

    return (*AGENT_PACKAGES, *LAB_PACKAGES)


#: mke2fs features every kernel in the matrix mounts (5.10 knows neither of these).
#: Inode tables and journal written at mke2fs time: the guest's ext4 then starts no lazy
#: init writes, which crawl under emulation on a loaded host.
EXT4_OPTIONS = ("-O", "^orphan_file,^metadata_csum_seed", "-E", "lazy_itable_init=0,lazy_journal_init=0")


class RootfsError(RuntimeError):
    pass


def _run(argv: list[str], *, timeout: float = 1800, what: str = "") -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RootfsError(
            f"{what or argv[0]} failed ({proc.returncode}):\n{(proc.stdout + proc.stderr).strip()[-3000:]}"
        )
    return proc.stdout


def _chroot(rootfs: Path, script: str, *, timeout: float = 1800, what: str = "") -> str:
    """``sh -c script`` chrooted in ``rootfs``, with /proc mounted in a private mount namespace
    (the mount goes away with the namespace, also when the script fails)."""
    inner = f'mount -t proc proc "{rootfs}/proc" && exec chroot "{rootfs}" /bin/sh -ec "$0"'
    return _run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", inner, script],
        timeout=timeout,
        what=what,
    )


def build_system(cache: Path, log=print) -> Path:
    """Layer 1: debootstrap plus the Debian packages (cached by their list)."""
    from images.base import _configure  # the container base's slim dpkg/apt settings

    wanted = packages()
    key = hashlib.sha256(" ".join([ROOTFS_SUITE, *wanted]).encode()).hexdigest()[:12]
    root = cache / "rootfs" / f"system-{key}"
    if (root / ".complete").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    root.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    log(f"rootfs: debootstrap --variant=minbase {ROOTFS_SUITE} (a few minutes, once)")
    _run(["debootstrap", "--variant=minbase", ROOTFS_SUITE, str(root), MIRROR], what="debootstrap")
    _configure(root)
    shutil.copy2("/etc/resolv.conf", root / "etc" / "resolv.conf")
    log(f"rootfs: apt-get install {' '.join(wanted)}")
    _chroot(
        root,
        "export DEBIAN_FRONTEND=noninteractive; apt-get update -q; "
        f"apt-get install -y -q --no-install-recommends {' '.join(wanted)}; "
        "rm -rf /var/lib/apt/lists/* /var/cache/apt/*",
        what="apt-get install in the guest root",
    )
    (root / "etc" / "resolv.conf").write_text("")  # the guest has no network beyond its own
    (root / "etc" / "hostname").write_text("retina-guest\n")
    (root / ".complete").write_text(" ".join(wanted) + "\n")
    for old in root.parent.glob("system-*"):  # the layer this one replaces (900 MB each)
        if old != root:
            shutil.rmtree(old, ignore_errors=True)
    log(f"rootfs: system layer built in {time.monotonic() - started:.0f}s")
    return root


def install_project(system: Path, cache: Path, log=print) -> tuple[Path, str]:
    """Layer 2: the venv with the project; returns (rootfs dir, key of its contents)."""
    from images.build import build_wheel, wheelhouse

    with tempfile.TemporaryDirectory(prefix="retina-kernels-wheel-") as tmp:
        wheel = build_wheel(Path(tmp), log=log)
        house = wheelhouse("agent", log=log)
        # The test lab and the matrix itself are not in the wheel (lab/ and kernels/ are not
        # installed): their sources go into the guest's site-packages beside it.
        sources = hashlib.sha256(wheel.read_bytes())
        for package in (REPO / "lab" / "retina_lab", REPO / "kernels" / "retina_kernels"):
            for path in sorted(package.rglob("*.py")):
                sources.update(path.relative_to(REPO).as_posix().encode() + path.read_bytes())
        digest = sources.hexdigest()[:12]
        deps_key = f"{system.name.removeprefix('system-')}-{house.name}"
        key = f"{deps_key}-{digest}"
        stamp = system / "opt" / "retina" / ".installed"
        installed = stamp.read_text() if stamp.exists() else ""
        if installed == key:
            return system, key
        staging = system / "tmp" / "retina-wheels"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        shutil.copy2(wheel, staging / wheel.name)
        for name, package in (
            ("retina_lab", REPO / "lab" / "retina_lab"),
            ("retina_kernels", REPO / "kernels" / "retina_kernels"),
        ):
            shutil.copytree(package, staging / "src" / name, ignore=shutil.ignore_patterns("__pycache__"))
        script = ""
        if not installed.startswith(deps_key + "-"):  # dependencies changed: a new venv
            log("rootfs: a new /opt/retina venv with the agent image's dependencies")
            shutil.copytree(house / "wheels", staging / "deps")
            shutil.copy2(house / "requirements.txt", staging / "requirements.txt")
            shutil.rmtree(system / "opt" / "retina", ignore_errors=True)
            script = (
                "python3 -m venv /opt/retina; "
                "/opt/retina/bin/pip install -q --no-index --find-links /tmp/retina-wheels/deps "
                "-r /tmp/retina-wheels/requirements.txt; "
                "SITE=$(/opt/retina/bin/python -c "
                "'import sysconfig; print(sysconfig.get_paths()[\"purelib\"])'); "
                'ln -s /usr/lib/python3/dist-packages/nftables "$SITE/nftables"; '
            )
        log(f"rootfs: installing {wheel.name} ({digest}) into /opt/retina")
        _chroot(
            system,
            script
            + f"/opt/retina/bin/pip install -q --no-deps --force-reinstall /tmp/retina-wheels/{wheel.name}; "
            "SITE=$(/opt/retina/bin/python -c "
            "'import sysconfig; print(sysconfig.get_paths()[\"purelib\"])'); "
            'rm -rf "$SITE/retina_lab" "$SITE/retina_kernels"; cp -r /tmp/retina-wheels/src/* "$SITE/"; '
            '/opt/retina/bin/python -c \'import ctypes; ctypes.CDLL("libbpf.so.1"); import nftables, '
            "kubernetes, dns, retina_agent, retina_lab, retina_kernels.guest, retina_agent.demo.cli'; "
            'test -n "$(ls "$SITE"/retina_agent/bpf/objects/*.bpf.o)"',
            timeout=900,
            what="pip install in the guest root",
        )
        shutil.rmtree(staging)
        stamp.write_text(key)
    return system, key


def _size_of(tree: Path) -> int:
    out = _run(["du", "-sb", str(tree)], what="du")
    return int(out.split()[0])


def make_ext4(source: Path, image: Path, *, label: str, spare: int = 256 << 20) -> Path:
    """An ext4 image holding ``source``'s files (``mke2fs -d``), with ``spare`` bytes free."""
    size = (_size_of(source) * 13 // 10 + spare) // (1 << 20)
    tmp = image.with_suffix(".partial")
    tmp.unlink(missing_ok=True)
    _run(
        [
            "mke2fs",
            "-q",
            "-F",
            "-t",
            "ext4",
            *EXT4_OPTIONS,
            "-L",
            label,
            "-d",
            str(source),
            str(tmp),
            f"{size}M",
        ],
        timeout=900,
        what=f"mke2fs {image.name}",
    )
    tmp.rename(image)
    return image


def rootfs_image(cache: Path, log=print) -> Path:
    """The root disk image (built or reused)."""
    system = build_system(cache, log=log)
    root, key = install_project(system, cache, log=log)
    image = cache / "rootfs" / f"rootfs-{key}.ext4"
    if not image.exists():
        for old in (cache / "rootfs").glob("rootfs-*.ext4"):
            old.unlink()
        started = time.monotonic()
        make_ext4(root, image, label="retina-root")
        log(f"rootfs: {image.name} ({image.stat().st_size >> 20} MB) in {time.monotonic() - started:.0f}s")
    return image
