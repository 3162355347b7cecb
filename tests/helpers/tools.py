"""Installed tools the tests need."""

from __future__ import annotations

import shutil

import pytest


def require(binary: str) -> str:
    """The path of ``binary``; fails the test (not skips) when it is missing: setup.sh installs it."""
    path = shutil.which(binary)
    if path is None:
        pytest.fail(f"{binary} is not installed: run ./scripts/setup.sh")
    return path
