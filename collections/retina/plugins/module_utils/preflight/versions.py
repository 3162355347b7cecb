# Copyright: retina-onprem contributors
# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
"""Version parsing for kernels and tools, compared as versions and never as strings.

Distro kernel releases are not PEP 440 (``5.14.0-427.el9.x86_64``, ``6.9.3-1.el7.elrepo.x86_64``,
``5.15.0-91-generic``), so the distro suffix after the first ``-`` becomes a PEP 440 *local*
version (``5.14.0+427.el9.x86_64``) that ``packaging`` parses and orders by the upstream part.
Nodes managed by Ansible may lack ``packaging``; there an integer tuple of the upstream part
is compared instead (same ordering for the upstream numbers).
"""

import re
from typing import Any, Tuple

try:
    from packaging.version import InvalidVersion, Version

    HAS_PACKAGING = True
except ImportError:  # a bare node: fall back to integer tuples
    HAS_PACKAGING = False

_NUMERIC_PREFIX = re.compile(r"^\s*v?(\d+)(?:\.(\d+))?(?:\.(\d+))?")


class TupleVersion:
    """Fallback ordering by (major, minor, patch) when ``packaging`` is not installed."""

    def __init__(self, numbers: Tuple[int, int, int], text: str) -> None:
        self.release = numbers
        self.public = ".".join(str(n) for n in numbers)
        self._text = text

    def _key(self, other: Any) -> Tuple[int, int, int]:
        return other.release if isinstance(other, TupleVersion) else tuple(other.release[:3])

    def __lt__(self, other: Any) -> bool:
        return self.release < self._key(other)

    def __le__(self, other: Any) -> bool:
        return self.release <= self._key(other)

    def __gt__(self, other: Any) -> bool:
        return self.release > self._key(other)

    def __ge__(self, other: Any) -> bool:
        return self.release >= self._key(other)

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, TupleVersion) and self.release == other.release

    def __hash__(self) -> int:
        return hash(self.release)

    def __str__(self) -> str:
        return self._text


def _numbers(text: str) -> Tuple[int, int, int]:
    match = _NUMERIC_PREFIX.match(text or "")
    if not match:
        raise ValueError(f"cannot read a version number from {text!r} (expected something like 5.15.0)")
    return tuple(int(part) if part else 0 for part in match.groups())  # type: ignore[return-value]


def parse_version(text: str) -> Any:
    """Parse a tool or kernel version: ``v3.14.2+gc309b6f``, ``1.32.4``, ``5.14.0-427.el9.x86_64``.

    Returns a ``packaging.version.Version`` when ``packaging`` is importable, else a
    ``TupleVersion``; both order correctly against ``minimum(...)`` of the same kind.
    Raises ValueError when the text has no leading version number.
    """
    numbers = _numbers(text)
    if not HAS_PACKAGING:
        return TupleVersion(numbers, text.strip())
    cleaned = text.strip()
    if cleaned[:1] in ("v", "V"):
        cleaned = cleaned[1:]
    # Distro suffix -> PEP 440 local version; keeps the whole string while ordering by upstream.
    candidate = cleaned.replace("-", "+", 1) if "-" in cleaned and "+" not in cleaned else cleaned
    try:
        return Version(candidate)
    except InvalidVersion:
        return Version(".".join(str(n) for n in numbers))


def minimum(text: str) -> Any:
    """A minimum such as ``5.4`` in the same representation parse_version returns."""
    return parse_version(text)


def kernel_upstream(release: str) -> str:
    """``5.14.0-427.el9.x86_64`` -> ``5.14.0`` (for messages)."""
    return ".".join(str(n) for n in _numbers(release))
