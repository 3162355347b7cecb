# Copyright: retina-onprem contributors
# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
"""The result of one check, and how verdicts roll up into an exit code."""

from typing import Any, Dict, Iterable, Optional

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


class CheckResult:
    """One line of the report: what was checked, the verdict, what was found and how to fix it.

    A plain class, not a dataclass: module_utils runs on the node's Python, 3.6 at the oldest.
    """

    __slots__ = ("id", "title", "verdict", "value", "fix", "scope", "detail")

    def __init__(
        self,
        id: str,
        title: str,
        verdict: str,
        value: str,
        fix: Optional[str] = None,
        scope: str = "node",
        detail: Optional[Dict[str, Any]] = None,
    ) -> None:
        if verdict not in VERDICTS:
            raise ValueError("verdict must be one of {}, got {!r}".format(", ".join(VERDICTS), verdict))
        self.id = id
        self.title = title
        self.verdict = verdict
        self.value = value
        self.fix = None if verdict in (PASS, SKIP) else fix
        self.scope = scope
        self.detail = {} if detail is None else detail

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CheckResult) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return "CheckResult({})".format(", ".join(f"{k}={v!r}" for k, v in self.to_dict().items()))

    def to_dict(self) -> Dict[str, Any]:
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
