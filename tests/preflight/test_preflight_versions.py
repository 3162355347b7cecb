"""Kernel and tool versions compare as versions, never as strings."""

from __future__ import annotations

import pytest

from retina_preflight.core.versions import minimum, parse_version


@pytest.mark.parametrize(
    ("release", "at_least_5_4"),
    [
        ("5.14.0-427.el9.x86_64", True),
        ("6.9.3-1.el7.elrepo.x86_64", True),
        ("3.10.0-1160.el7.x86_64", False),
        ("6.18.0", True),
        ("6.18.44-fc-v669", True),
        ("5.4.0-150-generic", True),
        ("5.3.18-150300.59-default", False),
        ("4.19.0-26-amd64", False),
    ],
)
def test_distro_kernel_releases_parse_and_order(release: str, at_least_5_4: bool) -> None:
    assert (parse_version(release) >= minimum("5.4")) is at_least_5_4


def test_numeric_not_lexical_order() -> None:
    # "5.10" < "5.4" as strings; as versions 5.10 is newer.
    assert parse_version("5.10.0-28-amd64") > parse_version("5.4.0")
    assert parse_version("6.18.0") > parse_version("6.9.3-1.el7.elrepo.x86_64")


def test_tool_versions() -> None:
    assert parse_version("v3.14.2+gc309b6f") >= minimum("3.8")
    assert parse_version("v3.7.2+g663a896") < minimum("3.8")
    assert parse_version("v1.32.4-dispatcher") > parse_version("v1.26.4+k3s1")


def test_garbage_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="cannot read a version number"):
        parse_version("generic")
