"""deploy/images.yaml is the one place naming the images; a bad file is refused by field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from images.build import IMAGE_EXTRAS, requirements
from images.names import REPO, ImagesFileError, image_refs


def test_refs_from_the_repository_file() -> None:
    # The tag is not pinned here: a worktree may build under its own tag (deploy/images.yaml).
    data = yaml.safe_load((REPO / "deploy" / "images.yaml").read_text())
    assert data["registry"] == "localhost/retina-onprem"
    assert image_refs() == {
        "agent": f"localhost/retina-onprem/agent:{data['tag']}",
        "operator": f"localhost/retina-onprem/operator:{data['tag']}",
    }


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("registry: r\ntag: t\nimages: {agent: a}\n", "images.operator"),
        ("registry: r\nimages: {agent: a, operator: o}\n", "'tag'"),
        ("registry: r\ntag: 'bad tag'\nimages: {agent: a, operator: o}\n", "'tag'"),
        ("registry: Upper/Case\ntag: t\nimages: {agent: a, operator: o}\n", "images.agent"),
        ("[1, 2]\n", "mapping"),
    ],
)
def test_bad_images_file_names_the_field(tmp_path: Path, text: str, field: str) -> None:
    path = tmp_path / "images.yaml"
    path.write_text(text)
    with pytest.raises(ImagesFileError, match=field.replace(".", r"\.")) as err:
        image_refs(path)
    assert str(path) in str(err.value)


def test_agent_image_requirements_hold_the_pod_level_clients() -> None:
    """agent_pod_level needs the Kubernetes watch and dnspython inside the agent image (issue 10:
    without them every pod-level series said ``unknown``); the operator framework stays out."""
    agent = {r.split(">")[0].split("=")[0] for r in requirements(IMAGE_EXTRAS["agent"])}
    operator = {r.split(">")[0].split("=")[0] for r in requirements(IMAGE_EXTRAS["operator"])}
    assert {"boto3", "azure-storage-blob", "pyroute2", "prometheus-client"} <= agent
    assert {"kubernetes", "dnspython", "ijson"} <= agent
    assert "kopf" not in agent
    assert {"kubernetes", "kopf", "boto3"} <= operator
