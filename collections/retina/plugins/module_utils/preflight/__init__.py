# Copyright: retina-onprem contributors
# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
"""Retina preflight: the node and control-host checks, shared by the CLI and the Ansible module.

This package is the single source of truth for the checks. It lives in the collection's
module_utils because Ansible ships module_utils to the nodes it manages; the pip package
``retina_preflight`` reaches the same files through ``retina_preflight.core`` (a symlink
inside the repository that setuptools follows). Rules that keep both consumers working:
standard library only (``packaging`` and ``kubernetes`` are optional imports), relative imports
between the modules of this package, and nothing that requires Python newer than 3.6 (the node's
Python on CentOS 7: no ``from __future__ import annotations``, dataclasses, ``list[str]`` or
``X | None`` at run time; tests/preflight/test_preflight_node_python.py checks with vermin).

Entry point: ``run_preflight(PreflightOptions(...))`` returns the report as a JSON-ready dict.
"""

from .model import EXIT_CODES, FAIL, PASS, SKIP, WARN, CheckResult, PreflightInputError  # noqa: F401
from .report import PreflightOptions, render_table, run_preflight  # noqa: F401

__all__ = [
    "CheckResult",
    "EXIT_CODES",
    "FAIL",
    "PASS",
    "PreflightInputError",
    "PreflightOptions",
    "SKIP",
    "WARN",
    "render_table",
    "run_preflight",
]
