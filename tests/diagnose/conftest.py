"""One observed lab (``lab.py``) for every test of this folder: each test uses its own pod pair."""

from __future__ import annotations

import pytest

from tests.diagnose.lab import observed_lab


@pytest.fixture(scope="package")
def lab(tmp_path_factory):
    with observed_lab(tmp_path_factory.mktemp("diagnose")) as observed:
        yield observed
