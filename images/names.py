"""Image references from ``deploy/images.yaml``, the one place naming this project's images.

``image_refs()`` returns ``{"agent": "localhost/retina-onprem/agent:0.1.0", "operator": ...}``
(``<registry>/<images.KIND>:<tag>``, the same composition the Ansible agent role uses).
``python -m images.names`` prints ``KIND=REF`` lines.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
IMAGES_FILE = REPO / "deploy" / "images.yaml"
KINDS = ("agent", "operator")
# Docker/OCI reference grammar, simplified: lowercase path components, a tag of [\w.-].
_REPO_PART = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


class ImagesFileError(ValueError):
    """deploy/images.yaml is missing a field or has a bad value; the message names it."""


def _field(data: dict, dotted: str, path: Path) -> str:
    value: object = data
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            raise ImagesFileError(
                f"{path}: field {dotted!r} is missing (it names the images; "
                "see the comment at the top of the file)"
            )
        value = value[key]
    if not isinstance(value, str | int | float) or not str(value).strip():
        raise ImagesFileError(f"{path}: field {dotted!r} must be a non-empty string, got {value!r}")
    return str(value).strip()


def image_refs(path: Path = IMAGES_FILE) -> dict[str, str]:
    """``{kind: "<registry>/<name>:<tag>"}`` for every kind in ``KINDS``."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ImagesFileError(f"cannot read {path}: {exc.strerror}") from exc
    if not isinstance(data, dict):
        raise ImagesFileError(f"{path}: expected a mapping with registry, tag and images")
    registry = _field(data, "registry", path).rstrip("/")
    tag = _field(data, "tag", path)
    if not _TAG.match(tag):
        raise ImagesFileError(
            f"{path}: field 'tag' {tag!r} is not a valid image tag "
            "(letters, digits, '_', '.', '-'; at most 128)"
        )
    refs = {}
    for kind in KINDS:
        name = _field(data, f"images.{kind}", path)
        repository = f"{registry}/{name}"
        if not all(_REPO_PART.match(part) for part in repository.split("/")):
            raise ImagesFileError(
                f"{path}: registry/images.{kind} gives {repository!r}, not a valid "
                "image name (lowercase letters, digits and . _ - between '/')"
            )
        refs[kind] = f"{repository}:{tag}"
    return refs


def main() -> int:
    for kind, ref in image_refs().items():
        print(f"{kind}={ref}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
