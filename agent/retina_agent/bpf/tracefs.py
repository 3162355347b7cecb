"""Tracepoints as the running kernel describes them in tracefs.

BPF C here may not use kernel-internal layouts, so the offsets of a tracepoint's fields are
read from ``events/<system>/<event>/format`` at run time and given to the program as constants
(``tracepoint.h``), and enum names (drop reasons) are read from the ``print fmt`` line of that
file.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

#: Bytes of a tracepoint's record the programs copy (``tracepoint.h``, given to clang by build.py).
TP_RECORD_MAX = 128
TRACEFS_CANDIDATES = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))

_FIELD = re.compile(r"field:(?P<decl>[^;]+);\s*offset:(?P<offset>\d+);\s*size:(?P<size>\d+);")
_SYMBOL = re.compile(r"\{\s*(0x[0-9a-fA-F]+|\d+)\s*,\s*\"([^\"]+)\"\s*\}")


class TracepointError(Exception):
    """A tracepoint, or a field of it, is missing on this kernel."""


def tracefs_root(mount: bool = True) -> Path:
    """Where tracefs is mounted; mounts it at /sys/kernel/tracing when allowed and needed."""
    for root in TRACEFS_CANDIDATES:
        if (root / "events").is_dir():
            return root
    if mount:
        subprocess.run(
            ["mount", "-t", "tracefs", "nodev", str(TRACEFS_CANDIDATES[0])], capture_output=True, check=False
        )
        if (TRACEFS_CANDIDATES[0] / "events").is_dir():
            return TRACEFS_CANDIDATES[0]
    raise TracepointError(
        "tracefs is not mounted (mount -t tracefs nodev /sys/kernel/tracing, "
        "or mount the host's /sys/kernel/tracing into the container)"
    )


@dataclass(frozen=True)
class Field:
    name: str
    offset: int
    size: int
    is_array: bool


@dataclass(frozen=True)
class TracepointFormat:
    category: str
    event: str
    fields: dict[str, Field]
    print_fmt: str

    @property
    def name(self) -> str:
        return f"{self.category}:{self.event}"

    def require(self, *names: str) -> None:
        missing = [n for n in names if n not in self.fields]
        if missing:
            raise TracepointError(f"tracepoint {self.name} has no field {', '.join(missing)}")

    def symbols(self, field_name: str) -> dict[int, str]:
        """The ``__print_symbolic(REC-><field>, {value, "NAME"}, ...)`` table of a field."""
        start = self.print_fmt.find(f"__print_symbolic(REC->{field_name},")
        if start < 0:
            return {}
        depth, end = 0, start
        for end in range(start, len(self.print_fmt)):
            ch = self.print_fmt[end]
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
                if depth == 0:
                    break
        return {int(v, 0): name for v, name in _SYMBOL.findall(self.print_fmt[start:end])}


def read_format(tracepoint: str, root: Path | None = None) -> TracepointFormat:
    """Parse ``category:event`` from tracefs; raises TracepointError when it does not exist."""
    if ":" not in tracepoint:
        raise TracepointError(f"tracepoint name {tracepoint!r} must look like category:event")
    category, event = tracepoint.split(":", 1)
    root = root or tracefs_root()
    path = root / "events" / category / event / "format"
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise TracepointError(f"tracepoint {tracepoint} does not exist on this kernel (no {path})") from None
    except PermissionError:
        raise TracepointError(f"cannot read {path}: permission denied") from None
    fields: dict[str, Field] = {}
    for m in _FIELD.finditer(text):
        decl = m["decl"].strip()
        if decl.startswith("__data_loc"):
            name = decl.split()[-1].split("[")[0]
            fields[name] = Field(name, int(m["offset"]), int(m["size"]), False)
            continue
        is_array = decl.endswith("]")
        name = decl.split("[")[0].split()[-1].lstrip("*")
        fields[name] = Field(name, int(m["offset"]), int(m["size"]), is_array)
    print_fmt = text.split("print fmt:", 1)[1] if "print fmt:" in text else ""
    return TracepointFormat(category, event, fields, print_fmt)
