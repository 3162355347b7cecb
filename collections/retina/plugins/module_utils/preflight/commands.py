# Copyright: retina-onprem contributors
# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
"""Running a tool for a check: never through a shell, always with a deadline."""

import subprocess
from typing import List, Tuple


def run_command(argv: List[str], timeout: float) -> Tuple[int, str, str]:
    """(exit code, stdout, stderr), stripped; a missing tool or the deadline gives 127 and the reason."""
    try:
        done = subprocess.run(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            universal_newlines=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return 127, "", str(error)
    return done.returncode, done.stdout.strip(), done.stderr.strip()
