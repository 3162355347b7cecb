# Copyright: retina-onprem contributors
# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
"""The result of one check, and how verdicts roll up into an exit code."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

PASS = "pass"
WARN = "warn"
FAIL = "fail"
SKIP = "skip"

VERDICTS = (PASS, WARN, FAIL, SKIP)

# Exit codes of the CLI, and the summary's exit_code: 0 all passed, 1 a required check failed,
# 2 warnings only. Skipped checks (not verifiable in --root mode) do not count.
EXIT_CODES = {PASS: 0, FAIL: 1, WARN: 2}


class PreflightInputError(ValueError):
    """Bad input (an option, a host tree, a probes file): the message names the field and the fix."""


@dataclass
class CheckResult:
    """One line of the report: what was checked, the verdict, what was found and how to fix it."""

    id: str
    title: str
    verdict: str
    value: str
    fix: str | None = None
    scope: str = "node"
    detail: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError("verdict must be one of {}, got {!r}".format(", ".join(VERDICTS), self.verdict))
        if self.verdict in (PASS, SKIP):
            self.fix = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "scope": self.scope,
            "verdict": self.verdict,
            "value": self.value,
            "fix": self.fix,
            "detail": self.detail,
        }


def overall_verdict(verdicts: Iterable[str]) -> str:
    """fail beats warn beats pass; skip is neutral."""
    seen = set(verdicts)
    if FAIL in seen:
        return FAIL
    if WARN in seen:
        return WARN
    return PASS
