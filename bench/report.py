"""Where every benchmark keeps its figures: ``bench/results/<name>-<UTC time>.json``."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def write_report(name: str, report: Any) -> Path:
    """Write ``report`` as JSON next to the earlier runs, say where, and return the path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {out}")
    return out
