"""Image names, from the one place that names them (``deploy/images.yaml``, shipped inside
this package as ``images.yaml``)."""

from __future__ import annotations

from importlib import resources

import yaml


def default_image(kind: str = "agent") -> str:
    """``<registry>/<name>:<tag>`` of an image kind (``agent`` runs the capture worker too)."""
    data = yaml.safe_load(resources.files("retina_capture").joinpath("images.yaml").read_text())
    try:
        return f"{data['registry']}/{data['images'][kind]}:{data['tag']}"
    except KeyError as exc:
        raise ValueError(
            f"images.yaml has no {exc.args[0]!r}: it needs registry, tag and images.{kind}"
        ) from None
