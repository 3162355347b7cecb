"""The README's cluster-admin sections as data: their shell blocks (each with the test that runs
it) and their options files. One parser for tests/docs/test_readme.py and the tests that run
the commands."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
#: The sections a cluster admin follows: from the first to the section after the last.
FIRST_SECTION = "## Install on your cluster"
AFTER_LAST_SECTION = "## Dashboards"

_BLOCK = re.compile(r"(?:<!-- tested-by: (?P<test>\S+) -->\n)?```(?P<lang>\w*)\n(?P<body>.*?)```", re.S)


@dataclass(frozen=True)
class Block:
    lang: str
    body: str
    tested_by: str | None  # a test file, relative to the repository
    line: int  # of the opening fence in README.md

    @property
    def commands(self) -> list[str]:
        """Each non-empty line of a shell block is one command, exactly as a user types it."""
        return [line.strip() for line in self.body.splitlines() if line.strip()]


def admin_text(readme: Path = README) -> tuple[str, int]:
    """The admin sections' text and the README line they start on."""
    text = readme.read_text()
    start, end = text.index(FIRST_SECTION), text.index(AFTER_LAST_SECTION)
    return text[start:end], text[:start].count("\n") + 1


def blocks(readme: Path = README) -> list[Block]:
    text, first_line = admin_text(readme)
    found = []
    for match in _BLOCK.finditer(text):
        fence = match.start("lang") - 3
        found.append(
            Block(match["lang"], match["body"], match["test"], first_line + text[:fence].count("\n"))
        )
    return found


def shell_commands(tested_by: str) -> list[str]:
    """The commands of the shell blocks whose marker names this test file."""
    return [c for b in blocks() if b.lang in ("sh", "bash") and b.tested_by == tested_by for c in b.commands]
