"""Compile the BPF C into objects when the package or image is built, not on the node.

``python -m retina_agent.bpf.build`` compiles every ``*.c`` beside this module with
``clang -O2 -g -target bpf`` into ``objects/<name>.bpf.o`` (shipped in the wheel as package
data); at run time the loader opens them with libbpf (``libbpf.so.1``): no compiler, no kernel
headers and no compile at agent start. ``python -m retina_agent.bpf.build DIR ...`` does the
same for other folders of BPF C (the benchmark's and the tests' programs).

Beside each object, ``<name>.bpf.json`` records the sha256 of its inputs (the source, the
local headers it includes, the ``-D`` flags): the loader refuses an object whose source has
changed since (``check``), so a dev tree never runs yesterday's program by mistake. Objects
are rebuilt only when stale; ``--check`` only reports.

Build needs Debian's ``clang`` and ``libbpf-dev`` (bpf_helpers.h) and the UAPI headers of
``linux-libc-dev``; ``llvm-strip``, when present, drops the DWARF (the BTF stays).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
OBJECTS = "objects"
BUILD_COMMAND = "python -m retina_agent.bpf.build"
_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.MULTILINE)
#: clang's flags, part of each object's recorded digest (a change here rebuilds every object).
#: -gembed-source puts the C lines in the object (the verifier quotes them in its errors) and
#: -fdebug-compilation-dir/-fdebug-prefix-map keep absolute paths out: the same bytes from any
#: checkout. The build machine's include paths and prefix maps are not recorded.
CFLAGS = ["-O2", "-g", "-gdwarf-5", "-gembed-source", "-Wall", "-target", "bpf", "-fdebug-compilation-dir=."]


class BuildError(Exception):
    """clang is missing or a source does not compile."""


class StaleObject(Exception):
    """A BPF object is missing or older than its source."""


def _datapath_defines() -> list[str]:
    # The data path's struct sizes and feature bits have one home, datapath.py.
    from retina_agent.bpf.datapath import build_defines

    return build_defines()


def _common_defines() -> list[str]:
    from retina_agent.bpf.tracefs import TP_RECORD_MAX

    return [f"-DTP_RECORD_MAX={TP_RECORD_MAX}"]


#: -D flags of a source, by file name (functions, so the values are read at build time): the
#: sizes the C shares with Python, whose one home is Python. Every source gets ``*``'s.
DEFINES: dict[str, Callable[[], list[str]]] = {"*": _common_defines, "datapath.c": _datapath_defines}


@dataclass(frozen=True)
class Source:
    path: Path

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def object(self) -> Path:
        return self.path.parent / OBJECTS / f"{self.name}.bpf.o"

    @property
    def record(self) -> Path:
        return self.path.parent / OBJECTS / f"{self.name}.bpf.json"

    def defines(self) -> list[str]:
        if self.path.parent != PACKAGE_DIR:
            return []
        make = DEFINES.get(self.path.name)
        return DEFINES["*"]() + (make() if make else [])

    def inputs(self) -> list[Path]:
        """The source and every local header it includes (recursively)."""
        seen: list[Path] = []
        todo = [self.path]
        while todo:
            path = todo.pop()
            if path in seen:
                continue
            seen.append(path)
            for name in _INCLUDE.findall(path.read_text()):
                for folder in (path.parent, PACKAGE_DIR):  # as clang searches: beside, then -I
                    if (folder / name).is_file():
                        todo.append(folder / name)
                        break
        return seen

    def digest(self) -> str:
        h = hashlib.sha256()
        for path in self.inputs():
            h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
        h.update("\0".join(CFLAGS + self.defines()).encode())
        return h.hexdigest()


def sources(folder: Path = PACKAGE_DIR) -> list[Source]:
    # resolved: the agent's folder gets its -D flags however it was named (a relative path)
    return [Source(p) for p in sorted(Path(folder).resolve().glob("*.c"))]


def _uapi_include() -> list[str]:
    # <asm/types.h> lives in the multiarch folder, which clang -target bpf does not search.
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    folder = Path("/usr/include") / multiarch
    return [f"-I{folder}"] if multiarch and folder.is_dir() else []


def compile_one(source: Source, clang: str = "clang") -> Path:
    """Compile one source; returns its object. Raises BuildError with clang's errors."""
    if shutil.which(clang) is None:
        raise BuildError(f"{clang} not found: install Debian's clang and libbpf-dev to build BPF objects")
    source.object.parent.mkdir(exist_ok=True)
    digest = source.digest()
    fd, tmp = tempfile.mkstemp(prefix=f".{source.name}.", suffix=".o", dir=source.object.parent)
    os.close(fd)
    try:
        prefix_maps = {source.path.parent: ".", PACKAGE_DIR: "retina_agent/bpf"}
        cmd = [
            clang, *CFLAGS, *_uapi_include(), f"-I{PACKAGE_DIR}",
            *(f"-fdebug-prefix-map={k}={v}" for k, v in prefix_maps.items()),
            *source.defines(), "-c", str(source.path), "-o", tmp,
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise BuildError(f"{source.path.name} does not compile:\n{done.stderr.strip()}")
        strip = shutil.which("llvm-strip")
        if strip:  # DWARF is only for humans; libbpf needs the .BTF sections, which stay
            subprocess.run([strip, "-g", tmp], check=True, capture_output=True)
        os.chmod(tmp, 0o644)
        os.replace(tmp, source.object)  # atomic: a concurrent loader sees old or new, never half
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    record = {"source": source.path.name, "sha256": digest, "defines": source.defines()}
    tmp_record = source.record.with_suffix(".json.tmp")
    tmp_record.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp_record, source.record)
    return source.object


def is_fresh(source: Source) -> bool:
    try:
        record = json.loads(source.record.read_text())
    except (OSError, ValueError):
        return False
    return source.object.is_file() and record.get("sha256") == source.digest()


def build(folder: Path = PACKAGE_DIR, force: bool = False) -> list[Path]:
    """Compile every stale (or, with ``force``, every) source of ``folder``; returns the
    objects compiled."""
    return [compile_one(s) for s in sources(folder) if force or not is_fresh(s)]


def check(obj: Path) -> None:
    """Refuse a missing object, or one older than its source (when the source is there to
    compare with: in a dev tree, or a wheel that ships the C beside the objects)."""
    source = Source((obj.parent.parent / (obj.name.removesuffix(".bpf.o") + ".c")).resolve())
    if not obj.is_file():
        raise StaleObject(f"BPF object {obj} does not exist: run {BUILD_COMMAND}")
    if not source.path.is_file():
        return
    if not is_fresh(source):
        raise StaleObject(
            f"BPF object {obj} is older than its source {source.path.name}: run {BUILD_COMMAND}"
        )


def object_path(name: str) -> Path:
    """A built object by name (``dropreason`` -> objects/dropreason.bpf.o), or a path to one."""
    if "/" in name:
        return Path(name)
    return PACKAGE_DIR / OBJECTS / f"{name}.bpf.o"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=BUILD_COMMAND, description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="*", type=Path, help="folders of BPF C (default: the agent's)")
    parser.add_argument("--force", action="store_true", help="rebuild every object")
    parser.add_argument("--check", action="store_true", help="only report stale objects (exit 1 if any)")
    args = parser.parse_args(argv)
    folders = args.folders or [PACKAGE_DIR]
    if args.check:
        stale = [s.object for f in folders for s in sources(f) if not is_fresh(s)]
        for obj in stale:
            print(f"stale: {obj}")
        return 1 if stale else 0
    try:
        for folder in folders:
            for obj in build(folder, force=args.force):
                print(f"built {obj} ({obj.stat().st_size} bytes)")
    except BuildError as exc:
        print(f"{BUILD_COMMAND}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
