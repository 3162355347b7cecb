"""Build the agent and operator images offline and print their sizes and build times.

``python -m images.build`` (what ``scripts/build_images.sh`` runs):

1. the Debian 12 base image from debootstrap (``images.base``; kept when it exists);
2. a wheel of this repository (``pip wheel --no-deps``, from a copy of the sources so the work
   tree gets no ``build/`` directory), with fixed timestamps so an unchanged tree gives the same
   wheel and Podman reuses every layer. Before it, the agent's BPF objects are compiled into the
   copy by ``images/bpf/Containerfile`` (Debian 12's clang and libbpf-dev, whatever the host has),
   so the agent image needs no compiler, bcc, LLVM or kernel headers;
3. for each image a wheelhouse of its PyPI dependencies, made on this host by ``pip wheel``
   (the core dependencies plus the image's extras from pyproject.toml, pinned to the versions in
   this machine's ``.venv``, which the test suite ran with) and cached in ``WHEEL_CACHE`` by
   their hash, so the build itself installs with ``pip --no-index`` and reaches no index;
4. ``podman build`` of ``images/<kind>/Containerfile`` with the wheels as its context.

Image names come from ``deploy/images.yaml`` only (``images.names``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from images.base import BASE_IMAGE, build_base
from images.deliver import DeliveryError, check_registry, push, save
from images.names import REPO, image_refs
from images.podman import ULIMITS, PodmanError, image_exists, image_size, podman

#: Which extras of pyproject.toml each image installs on top of the core dependencies.
IMAGE_EXTRAS: dict[str, tuple[str, ...]] = {
    # retina-agent (with pod-level metrics: the Kubernetes watch, DNS parsing) + retina-capture.
    "agent": ("worker", "podlevel"),
    "operator": ("capture",),  # kopf operator: kubernetes, kopf (and what the capture CLI uses)
}
CONTAINERFILES = {kind: REPO / "images" / kind / "Containerfile" for kind in IMAGE_EXTRAS}
#: The agent image's Debian packages (its Containerfile's ``AGENT_PACKAGES`` build argument; the
#: kernel matrix's guests install the same, kernels/retina_kernels/rootfs.py). No compiler, bcc,
#: LLVM or kernel headers: the BPF objects are compiled at build time and loaded by libbpf1.
AGENT_PACKAGES: tuple[str, ...] = (
    "python3",
    "libbpf1",  # libbpf.so.1: loads the BPF objects, reads their maps (needs libelf1, zlib1g)
    "iproute2",  # ip, ss, tc: the capture worker records the node's network state
    "iptables",
    "nftables",
    "python3-nftables",  # the netfilter plugin reads native nftables counters (libnftables JSON)
    "tcpdump",  # the capture worker
    "ca-certificates",  # uploads to Azure Blob and S3 over TLS
)
#: ``--build-arg`` values per image, beyond BASE_IMAGE.
BUILD_ARGS: dict[str, dict[str, str]] = {"agent": {"AGENT_PACKAGES": " ".join(AGENT_PACKAGES)}}
#: Compiles the agent's BPF objects (``python -m retina_agent.bpf.build``) at build time.
BPF_CONTAINERFILE = REPO / "images" / "bpf" / "Containerfile"
#: Where the build step writes them, relative to the source tree (package data of the wheel).
BPF_OBJECTS = Path("agent/retina_agent/bpf/objects")
#: Wheelhouses of the images' dependencies, one directory per hash of what they hold (also the
#: kernel matrix's guest venv: kernels/retina_kernels/rootfs.py). RETINA_WHEEL_CACHE moves it.
WHEEL_CACHE = Path(os.environ.get("RETINA_WHEEL_CACHE", "/var/cache/retina-onprem/wheelhouses"))
#: Wheel timestamps (1980-01-01, the zip epoch): the same sources give the same wheel bytes.
SOURCE_DATE_EPOCH = "315532800"


@dataclass
class BuildReport:
    refs: dict[str, str]
    seconds: dict[str, float] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)

    def table(self) -> str:
        lines = [f"{'image':<44} {'size':>10} {'build':>8}"]
        for kind, ref in self.refs.items():
            lines.append(f"{ref:<44} {self.sizes[kind] / 1e6:>7.0f} MB {self.seconds[kind]:>7.0f}s")
        lines.append(
            f"{'base ' + BASE_IMAGE:<44} {image_size(BASE_IMAGE) / 1e6:>7.0f} MB "
            f"{self.seconds['base']:>7.0f}s"
        )
        lines.append(
            f"project wheel {self.seconds['wheel']:.0f}s, dependency wheelhouses "
            f"{self.seconds['wheelhouses']:.0f}s; total build time {self.seconds['total']:.0f}s"
        )
        return "\n".join(lines)


def _pyproject() -> dict:
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def requirements(extras: tuple[str, ...], pyproject: dict | None = None) -> list[str]:
    """Core dependencies plus ``extras`` (self-references like ``retina-onprem[x]`` resolved)."""
    project = (pyproject or _pyproject())["project"]
    self_name = project["name"]
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    found: list[str] = list(project.get("dependencies", []))
    pending, seen = list(extras), set()
    while pending:
        extra = pending.pop(0)
        if extra in seen:
            continue
        if extra not in optional:
            raise ValueError(
                f"pyproject.toml has no optional-dependencies extra {extra!r} "
                f"(images.build.IMAGE_EXTRAS names it); known: {sorted(optional)}"
            )
        seen.add(extra)
        for req in optional[extra]:
            if req.startswith(f"{self_name}["):
                pending += [e.strip() for e in req[len(self_name) + 1 :].split("]")[0].split(",")]
            else:
                found.append(req)
    return list(dict.fromkeys(found))


def pinned_closure(reqs: list[str]) -> list[str]:
    """``name==version`` for ``reqs`` and everything they pull in, as installed in this .venv
    (the versions the test suite ran with). Only this closure keys the wheel cache, so other
    packages coming and going in the .venv do not invalidate it."""
    pins: dict[str, str] = {}
    pending = [Requirement(r) for r in reqs]
    while pending:
        req = pending.pop()
        name = canonicalize_name(req.name)
        if name in pins:
            continue
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            raise ValueError(
                f"{req.name} (needed by an image) is not installed in {sys.prefix}: run ./scripts/setup.sh"
            ) from None
        pins[name] = f"{name}=={dist.version}"
        for text in dist.requires or []:
            dep = Requirement(text)
            extras = req.extras or {""}
            if dep.marker is None or any(dep.marker.evaluate({"extra": e}) for e in extras):
                pending.append(dep)
    return sorted(pins.values())


def _build_on_base() -> list[str]:
    """``podman build`` on our Debian base, offline (every stage starts FROM it), as every build here."""
    return ["build", "--pull=never", "--network", "host", *ULIMITS, "--build-arg", f"BASE_IMAGE={BASE_IMAGE}"]


def build_bpf_objects(src: Path, log=print) -> list[Path]:
    """Compile the agent's BPF objects into the source copy ``src`` in the toolchain container
    (``images/bpf/Containerfile``, ``podman build --output``); returns the objects. Objects
    already in the copy (a developer's, built by the host's clang) are replaced."""
    objects = src / BPF_OBJECTS
    shutil.rmtree(objects, ignore_errors=True)
    objects.mkdir(parents=True)
    if not image_exists(BASE_IMAGE):  # the kernel matrix calls build_wheel before any image
        build_base(log=log)
    podman(
        *_build_on_base(),
        "-f",
        str(BPF_CONTAINERFILE),
        "--output",
        f"type=local,dest={objects}",
        str(src / "agent"),
        timeout=1800,
    )
    built = sorted(objects.glob("*.bpf.o"))
    if not built:
        raise PodmanError(f"{BPF_CONTAINERFILE} wrote no *.bpf.o into {objects}")
    log(f"BPF objects: {', '.join(f'{o.name} ({o.stat().st_size} B)' for o in built)}")
    return built


def build_wheel(out_dir: Path, log=print) -> Path:
    """``pip wheel --no-deps`` of a copy of the repository's packages, the BPF objects compiled
    into it first; returns the wheel path."""
    pyproject = _pyproject()
    package_dirs = pyproject["tool"]["setuptools"]["packages"]["find"]["where"]
    with tempfile.TemporaryDirectory(prefix="retina-wheel-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        shutil.copy2(REPO / "pyproject.toml", src / "pyproject.toml")
        for name in package_dirs:
            if (REPO / name).is_dir():
                shutil.copytree(
                    REPO / name,
                    src / name,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"),
                )
        build_bpf_objects(src, log=log)
        env = {**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out_dir), str(src)],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
            check=False,
        )
        if proc.returncode != 0:
            raise PodmanError(f"pip wheel failed: {proc.stderr.strip()[-3000:]}")
    wheels = sorted(out_dir.glob("*.whl"))
    if len(wheels) != 1:
        raise PodmanError(f"expected one wheel in {out_dir}, found {[w.name for w in wheels]}")
    return wheels[0]


def wheelhouse(kind: str, log=print) -> Path:
    """The wheels of ``kind``'s dependencies at the tested versions (cached by their hash)."""
    reqs = requirements(IMAGE_EXTRAS[kind])
    pins = pinned_closure(reqs)
    key = hashlib.sha256("\n".join([sys.version, *reqs, "--", *pins]).encode()).hexdigest()[:16]
    house = WHEEL_CACHE / f"{kind}-{key}"
    if (house / ".complete").exists():
        log(f"{kind} wheelhouse: cached ({house})")
        return house
    shutil.rmtree(house, ignore_errors=True)
    house.mkdir(parents=True)
    (house / "requirements.txt").write_text("\n".join(reqs) + "\n")
    (house / "constraints.txt").write_text("\n".join(pins) + "\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "-w",
            str(house / "wheels"),
            "-r",
            str(house / "requirements.txt"),
            "-c",
            str(house / "constraints.txt"),
        ],
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    if proc.returncode != 0:
        raise PodmanError(
            f"pip wheel of the {kind} image's dependencies failed: {proc.stderr.strip()[-3000:]}"
        )
    (house / ".complete").touch()
    for old in WHEEL_CACHE.glob(f"{kind}-*"):  # keep only the current wheelhouse of this image
        if old != house:
            shutil.rmtree(old, ignore_errors=True)
    log(f"{kind} wheelhouse: {len(list((house / 'wheels').glob('*.whl')))} wheels in {house}")
    return house


def build_image(kind: str, ref: str, wheel: Path, house: Path, *, no_cache: bool = False, log=print) -> float:
    """``podman build`` one image from its Containerfile; returns the seconds it took."""
    with tempfile.TemporaryDirectory(prefix=f"retina-{kind}-context-") as tmp:
        context = Path(tmp)
        shutil.copy2(wheel, context / wheel.name)
        shutil.copy2(house / "requirements.txt", context / "requirements.txt")
        shutil.copytree(house / "wheels", context / "wheels")
        argv = [
            *_build_on_base(),
            *(f"--build-arg={name}={value}" for name, value in BUILD_ARGS.get(kind, {}).items()),
            "-f",
            str(CONTAINERFILES[kind]),
            "-t",
            ref,
        ]
        if no_cache:
            argv.append("--no-cache")
        log(f"building {ref} ...")
        started = time.monotonic()
        podman(*argv, str(context), timeout=1800)
        spent = time.monotonic() - started
    log(f"built {ref} in {spent:.0f}s")
    return spent


def build_all(*, rebuild_base: bool = False, no_cache: bool = False, log=print) -> BuildReport:
    report = BuildReport(refs=image_refs())
    begun = time.monotonic()
    report.seconds["wheelhouses"] = 0.0
    report.seconds["base"] = build_base(rebuild=rebuild_base, log=log)
    with tempfile.TemporaryDirectory(prefix="retina-wheelhouse-") as tmp:
        started = time.monotonic()
        wheel = build_wheel(Path(tmp), log=log)
        report.seconds["wheel"] = time.monotonic() - started
        log(f"wheel {wheel.name} in {report.seconds['wheel']:.0f}s")
        for kind, ref in report.refs.items():
            started = time.monotonic()
            house = wheelhouse(kind, log=log)
            report.seconds["wheelhouses"] += time.monotonic() - started
            report.seconds[kind] = build_image(kind, ref, wheel, house, no_cache=no_cache, log=log)
            report.sizes[kind] = image_size(ref)
    report.seconds["total"] = time.monotonic() - begun
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="build_images.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rebuild-base",
        action="store_true",
        help=f"make {BASE_IMAGE} again with debootstrap even if it exists",
    )
    parser.add_argument(
        "--no-cache", action="store_true", help="rebuild every layer (podman build --no-cache)"
    )
    # Delivery (images/deliver.py): after the build, or of the images already built (--no-build).
    parser.add_argument(
        "--push",
        metavar="REGISTRY",
        help="push the images to REGISTRY/<name>:<tag> (host[:port][/path]); credentials "
        "from REGISTRY_AUTH_FILE or RETINA_REGISTRY_USERNAME/RETINA_REGISTRY_PASSWORD",
    )
    parser.add_argument(
        "--insecure-registry",
        action="store_true",
        help="with --push: plain HTTP or an unverified certificate (a lab registry)",
    )
    parser.add_argument(
        "--save",
        metavar="DIR",
        type=Path,
        help="write OCI archives, SHA256SUMS and images.json into DIR (for nodes without "
        "a registry: the retina.observability.images role imports them)",
    )
    parser.add_argument(
        "--no-build",
        action="store_true",
        help="skip the build: deliver (--push/--save) the images already built",
    )
    args = parser.parse_args(argv)
    if args.insecure_registry and not args.push:
        parser.error("--insecure-registry needs --push REGISTRY")
    if args.no_build and not (args.push or args.save):
        parser.error("--no-build needs --push REGISTRY or --save DIR")
    try:
        if args.push:
            check_registry(args.push)  # a typo fails before a long build
        if args.no_build:
            refs = image_refs()
            for kind, ref in refs.items():
                if not image_exists(ref):
                    raise DeliveryError(
                        f"--no-build: the {kind} image {ref} is not built; "
                        "run build_images.sh without --no-build"
                    )
        else:
            report = build_all(rebuild_base=args.rebuild_base, no_cache=args.no_cache)
            print(report.table())
            for ref in (*report.refs.values(), BASE_IMAGE):
                print(podman("image", "ls", "--noheading", ref).stdout, end="")
        if args.save:
            started = time.monotonic()
            save(args.save)
            print(f"saved in {time.monotonic() - started:.0f}s to {args.save}")
        if args.push:
            started = time.monotonic()
            push(args.push, tls_verify=not args.insecure_registry)
            print(f"pushed in {time.monotonic() - started:.0f}s to {args.push}")
    except (PodmanError, ValueError, subprocess.SubprocessError) as exc:
        print(f"build_images.sh: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
