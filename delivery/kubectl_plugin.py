"""Build ``kubectl-retina`` as one file that kubectl finds on PATH, plus a krew manifest.

``python -m delivery.kubectl_plugin`` (what ``scripts/build_kubectl_plugin.sh`` runs) writes to
``build/kubectl-plugin/`` (or ``--out DIR``):

* ``kubectl-retina``: a PEX (https://docs.pex-tool.org), one zip file with a ``#!/usr/bin/env
  python3`` line that carries the ``retina_capture`` and ``retina_common`` sources and every
  dependency, resolved for each CPython it is built with (by default every CPython 3.9 to 3.13
  found on the build machine), on Linux x86_64. The admin's machine needs one of those Pythons and
  nothing else: no virtual environment, no pip. Compiled wheels (pydantic-core, PyYAML) are
  carried once per Python and picked at run time.
* ``kubectl-retina_<version>.tar.gz``: that file and LICENSE, the archive krew installs;
* ``retina.yaml``: the krew plugin manifest (``kubectl krew install --manifest=retina.yaml
  --archive=kubectl-retina_<version>.tar.gz`` installs it offline), with the archive's sha256.

Why a PEX and not ``zipapp``: ``zipapp`` cannot carry compiled wheels for several Pythons; PEX
resolves them per interpreter at build time and selects at run time.

Why the sources and not the project wheel: the project as a whole needs Python 3.11 (the agent,
the images); the plugin is ``retina_capture`` without the operator (and the stdlib-only
``retina_common`` and ``retina_preflight`` it imports), which runs on 3.9.

Dependencies: the ``kubectl`` extra of pyproject.toml, pinned by
``delivery/kubectl-plugin-constraints.txt`` to releases that still support Python 3.9 (without
pins pip backtracks for minutes through every boto3 release that dropped 3.9).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "build" / "kubectl-plugin"
DEFAULT_URL_BASE = "https://example.invalid/retina-onprem/releases"
PLUGIN_NAME = "kubectl-retina"
CONSTRAINTS = REPO / "delivery" / "kubectl-plugin-constraints.txt"
#: The CPythons the plugin supports; a build takes those it finds (tests: 3.9 and the host's).
PYTHONS = ("3.9", "3.10", "3.11", "3.12", "3.13")
#: krew platforms the file serves: the compiled wheels it carries are manylinux x86_64.
KREW_PLATFORMS = (("linux", "amd64"),)
#: Parts of ``retina_capture`` the plugin does not run: the operator (kopf) lives in its image.
EXCLUDED_PACKAGES = ("operator",)


class BuildError(RuntimeError):
    """The plugin could not be built; the message says which step and why."""


def project_version() -> str:
    return str(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"])


def plugin_requirements() -> list[str]:
    """The ``kubectl`` extra of pyproject.toml (ranges; the constraints file pins them)."""
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    try:
        return [str(Requirement(text)) for text in data["project"]["optional-dependencies"]["kubectl"]]
    except KeyError as exc:
        raise BuildError("pyproject.toml has no [project.optional-dependencies] kubectl extra") from exc


def stage_sources(dest: Path) -> Path:
    """Copy ``retina_capture`` (symlinks resolved, operator left out), ``retina_common`` and
    ``retina_preflight`` (its ``core`` holds the one kubeconfig loader every component uses)."""
    dest.mkdir(parents=True, exist_ok=True)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", *EXCLUDED_PACKAGES)
    shutil.copytree(REPO / "capture" / "retina_capture", dest / "retina_capture", symlinks=False, ignore=skip)
    shutil.copytree(REPO / "common" / "retina_common", dest / "retina_common", symlinks=False, ignore=skip)
    shutil.copytree(
        REPO / "preflight" / "retina_preflight", dest / "retina_preflight", symlinks=False, ignore=skip
    )
    return dest


def find_interpreters(versions: tuple[str, ...] = PYTHONS) -> list[str]:
    """Every CPython of ``versions`` on this machine (``python3.X`` on PATH, or pyenv's)."""
    found = []
    for version in versions:
        candidates = [shutil.which(f"python{version}")]
        candidates += sorted(
            str(p) for p in Path("/root/.pyenv/versions").glob(f"{version}.*/bin/python{version}")
        )
        path = next((c for c in candidates if c), None)
        if path:
            found.append(path)
    return found


def build_pex(out: Path, requirements: list[str], interpreters: list[str]) -> Path:
    """Run pex for ``interpreters``; returns the path of the single-file plugin."""
    pex = Path(sys.executable).with_name("pex")
    if not pex.exists():
        raise BuildError(f"pex is not installed in {pex.parent} (run ./scripts/setup.sh)")
    if not interpreters:
        raise BuildError(f"no CPython {', '.join(PYTHONS)} found to build for (give --python)")
    target = out / PLUGIN_NAME
    with tempfile.TemporaryDirectory(prefix="kubectl-retina-src-") as tmp:
        sources = stage_sources(Path(tmp) / "src")
        argv = [
            str(pex),
            *requirements,
            "--constraints",
            str(CONSTRAINTS),
            "--pip-version",
            "24.2",
            "--resolver-version",
            "pip-2020-resolver",
            "--sources-directory",
            str(sources),
            "--entry-point",
            "retina_capture.cli.main:main",
            "--python-shebang",
            "/usr/bin/env python3",
            "--no-emit-warnings",
            "--output-file",
            str(target),
        ]
        for interpreter in interpreters:
            argv += ["--python", interpreter]
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if "WARNING: Location" not in line]
        raise BuildError("pex failed:\n" + "\n".join(lines[-30:]))
    target.chmod(0o755)
    return target


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_archive(out: Path, plugin: Path, version: str) -> Path:
    """The archive krew installs: the plugin and its licence, with fixed metadata."""
    archive = out / f"{PLUGIN_NAME}_{version}.tar.gz"

    def fixed(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 315532800
        return info

    with tarfile.open(archive, "w:gz") as tar:
        tar.add(plugin, arcname=PLUGIN_NAME, filter=fixed)
        tar.add(REPO / "LICENSE", arcname="LICENSE", filter=fixed)
    return archive


def krew_manifest(version: str, archive: Path, url_base: str) -> str:
    """A krew ``Plugin`` manifest for the archive."""
    digest = sha256(archive)
    uri = f"{url_base.rstrip('/')}/{archive.name}"
    platforms = "".join(
        "  - selector:\n"
        "      matchLabels:\n"
        f"        os: {os_name}\n"
        f"        arch: {arch}\n"
        f"    uri: {uri}\n"
        f"    sha256: {digest}\n"
        "    files:\n"
        f"      - from: {PLUGIN_NAME}\n"
        "        to: .\n"
        "      - from: LICENSE\n"
        "        to: .\n"
        f"    bin: {PLUGIN_NAME}\n"
        for os_name, arch in KREW_PLATFORMS
    )
    return (
        "apiVersion: krew.googlecontainertools.github.com/v1alpha2\n"
        "kind: Plugin\n"
        "metadata:\n"
        "  name: retina\n"
        "spec:\n"
        f"  version: v{version}\n"
        "  homepage: https://retina.sh\n"
        "  shortDescription: Distributed packet capture and network diagnosis for on-prem clusters\n"
        "  description: |\n"
        "    kubectl retina capture create|list|delete|download: tcpdump on the nodes or pods you\n"
        "    select, outputs to the node, a PVC, S3 or Azure Blob, merged into one pcapng;\n"
        "    kubectl retina diagnose|map: why pod A cannot reach pod B, who talks to whom.\n"
        "    Needs python3 (3.9 or newer) on PATH.\n"
        "  platforms:\n" + platforms
    )


def build(
    out: Path = DEFAULT_OUT, url_base: str = DEFAULT_URL_BASE, interpreters: list[str] | None = None
) -> dict:
    """Build the plugin for ``interpreters`` (default: every supported CPython found here)."""
    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    version = project_version()
    chosen = find_interpreters() if interpreters is None else interpreters
    plugin = build_pex(out, plugin_requirements(), chosen)
    archive = build_archive(out, plugin, version)
    manifest = out / "retina.yaml"
    manifest.write_text(krew_manifest(version, archive, url_base))
    return {
        "plugin": plugin,
        "archive": archive,
        "manifest": manifest,
        "pythons": chosen,
        "size": plugin.stat().st_size,
        "seconds": time.monotonic() - started,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="build_kubectl_plugin.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})"
    )
    parser.add_argument(
        "--url-base",
        default=os.environ.get("RETINA_PLUGIN_URL_BASE", DEFAULT_URL_BASE),
        help="where the archive will be published (the krew manifest's uri)",
    )
    parser.add_argument(
        "--python",
        action="append",
        default=None,
        help="a CPython to build for (repeat; default every CPython 3.9-3.13 found)",
    )
    args = parser.parse_args(argv)
    try:
        result = build(args.out.resolve(), args.url_base, args.python)
    except BuildError as exc:
        print(f"build_kubectl_plugin: {exc}", file=sys.stderr)
        return 1
    print(
        f"{result['plugin']}  {result['size'] / 1e6:.1f} MB  ({result['seconds']:.0f} s), "
        f"for {', '.join(result['pythons'])}"
    )
    print(f"{result['archive']}\n{result['manifest']}")
    print(f"install: cp {result['plugin']} /usr/local/bin/ && kubectl plugin list")
    return 0


if __name__ == "__main__":
    sys.exit(main())
