"""Bounded retries with exponential backoff for uploads."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_BACKOFF = 30.0


def with_backoff(
    action: Callable[[], T],
    *,
    what: str,
    attempts: int,
    first_delay: float,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``action`` up to ``attempts`` times, waiting first_delay, 2x, 4x ... (max 30 s)."""
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except Exception as exc:
            if attempt == attempts:
                raise
            log.warning(
                "%s failed (attempt %d of %d): %s; retrying in %.1fs", what, attempt, attempts, exc, delay
            )
            sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF)
    raise AssertionError("unreachable")
