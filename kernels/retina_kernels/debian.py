"""Debian packages of other suites, fetched with the host's own apt into a private cache.

apt is pointed at a sources list, lists directory, package cache and (empty) dpkg status of
its own for each suite (``-o Dir::Etc::sourcelist=... -o Dir::State::Lists=...``), so the
host's apt configuration and installed packages are neither read nor changed. Packages are
fetched with ``apt-get download`` (signature-checked against Debian's archive keyring, like
any apt download) and unpacked with ``dpkg-deb -x``.
"""

from __future__ import annotations

import re
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

MIRROR = "http://deb.debian.org/debian"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
#: apt lists older than this are refreshed (kernel ABI bumps land in point releases).
LISTS_MAX_AGE = 7 * 24 * 3600


class FetchError(RuntimeError):
    """A package could not be resolved or downloaded."""


def mirror_unreachable(timeout: float = 15) -> str | None:
    """Why Debian's mirror cannot be reached from here, or None when it answers."""
    url = f"{MIRROR}/dists/bookworm/Release"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return None
    except (OSError, urllib.error.URLError) as exc:
        return f"{url}: {exc}"


class Suite:
    """One Debian suite (bullseye, bookworm, trixie) with apt state under ``cache/apt/<suite>``."""

    def __init__(self, name: str, cache: Path) -> None:
        self.name = name
        self.root = cache / "apt" / name
        self.sources = self.root / "sources.list"
        self.lists = self.root / "lists"
        self.archives = self.root / "archives"
        self.status = self.root / "status"

    def _options(self) -> list[str]:
        return [
            "-o",
            f"Dir::Etc::sourcelist={self.sources}",
            "-o",
            "Dir::Etc::sourceparts=-",
            "-o",
            f"Dir::State::Lists={self.lists}",
            "-o",
            f"Dir::State::status={self.status}",
            "-o",
            f"Dir::Cache={self.root / 'cache'}",
            "-o",
            "Dir::Cache::pkgcache=",
            "-o",
            "Dir::Cache::srcpkgcache=",
            "-o",
            "APT::Architecture=amd64",
            "-o",
            "Acquire::Languages=none",
            "-o",
            "Debug::NoLocking=1",
        ]

    def _apt(self, tool: str, *args: str, cwd: Path | None = None, timeout: float = 900) -> str:
        proc = subprocess.run(
            [tool, *self._options(), *args],
            capture_output=True,
            text=True,
            cwd=cwd,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise FetchError(
                f"{tool} {' '.join(args)} for {self.name} failed ({proc.returncode}): "
                f"{proc.stderr.strip()[-2000:]}"
            )
        return proc.stdout

    @property
    def has_lists(self) -> bool:
        """Package lists were fetched once (offline, the matrix can run from them)."""
        return (self.root / ".updated").exists()

    def update(self, log=print) -> None:
        """Write the sources list and fetch the suite's package lists (kept for a week; older
        lists are used when the mirror cannot be reached, with a line in the log)."""
        for d in (self.lists / "partial", self.archives, self.root / "cache" / "archives" / "partial"):
            d.mkdir(parents=True, exist_ok=True)
        line = f"deb [signed-by={KEYRING}] {MIRROR} {self.name} main\n"
        stamp = self.root / ".updated"
        fresh = (
            stamp.exists()
            and time.time() - stamp.stat().st_mtime < LISTS_MAX_AGE
            and self.sources.exists()
            and self.sources.read_text() == line
        )
        if fresh:
            return
        self.sources.write_text(line)
        self.status.touch()
        log(f"apt: fetching the {self.name} package lists")
        try:
            # Error-Mode=any: a list that failed to download is an error, not a warning
            self._apt("apt-get", "update", "-q", "-o", "APT::Update::Error-Mode=any")
        except FetchError as exc:
            if not stamp.exists():
                raise
            log(
                f"apt: {self.name} lists not refreshed, using those of "
                f"{time.ctime(stamp.stat().st_mtime)}: {exc}"
            )
            return
        stamp.touch()

    def depends_of(self, package: str, pattern: str) -> str:
        """The first dependency of ``package`` whose name matches ``pattern`` (a meta package's target)."""
        shown = self._apt("apt-cache", "show", "--no-all-versions", package)
        for line in shown.splitlines():
            if line.startswith(("Depends:", "Pre-Depends:")):
                for dep in line.split(":", 1)[1].split(","):
                    name = dep.strip().split()[0]
                    if re.fullmatch(pattern, name):
                        return name
        raise FetchError(f"{package} in {self.name} has no dependency matching {pattern}")

    def download(self, package: str, log=print) -> Path:
        """The .deb of ``package`` in this suite (downloaded once, then reused)."""
        found = sorted(self.archives.glob(f"{package}_*.deb"))
        if found:
            return found[-1]
        log(f"apt: downloading {package} ({self.name})")
        self._apt("apt-get", "download", "-q", package, cwd=self.archives)
        found = sorted(self.archives.glob(f"{package}_*.deb"))
        if not found:
            raise FetchError(f"apt-get download {package} left no .deb in {self.archives}")
        return found[-1]


def unpack(deb: Path, target: Path) -> Path:
    """``dpkg-deb -x`` into ``target`` (once: a ``.unpacked`` marker says it is complete)."""
    marker = target / ".unpacked"
    if marker.exists():
        return target
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dpkg-deb", "-x", str(deb), str(target)], check=True, timeout=600)
    marker.write_text(deb.name + "\n")
    return target
