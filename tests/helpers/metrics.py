"""Exact counter checks against a running agent.

A counter that counts each packet twice still passes ``>= N``. ``wait_exact`` waits until every
expected value is reached, then keeps scraping for ``window`` seconds (longer than a harvest
interval) so that a late or double count has time to show, and asserts equality.
"""

from __future__ import annotations

from collections.abc import Callable

Values = dict[str, float]


def wait_exact(
    agent, read: Callable[[object], Values], expected: Values, *, timeout: float = 20, window: float = 2.5
) -> object:
    """Poll ``read(scrape)`` until it reaches ``expected`` (each value ``>=``); then scrape for
    ``window`` more seconds, stopping early if any value overshoots; assert it equals ``expected``.
    Returns the last scrape."""

    def reached(m) -> bool:
        got = read(m)
        return all(got.get(k, 0) >= v for k, v in expected.items())

    def overshot(m) -> bool:
        got = read(m)
        return any(got.get(k, 0) > v for k, v in expected.items()) or set(got) - set(expected) != set()

    m = agent.scrape_until(reached, timeout=timeout)
    if reached(m):
        m = agent.scrape_until(overshot, timeout=window)
    got = read(m)
    assert got == expected, f"expected exactly {expected}, got {got}"
    return m
