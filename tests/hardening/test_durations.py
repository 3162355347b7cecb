"""The one Go-duration parser (retina_common.durations): Go's rules, exact nanoseconds, bounds."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from retina_common.durations import (
    MAX_NANOSECONDS,
    DurationError,
    bounded_duration,
    format_go_duration,
    format_go_duration_ns,
    parse_go_duration,
    parse_go_duration_ns,
)

# Values checked against Go's time.ParseDuration / Duration.String() documentation and tests.
GO_CASES = [
    ("0", 0),
    ("+0", 0),
    ("-0", 0),
    ("5s", 5_000_000_000),
    ("30s", 30_000_000_000),
    ("1478s", 1_478_000_000_000),
    ("-5s", -5_000_000_000),
    ("+5s", 5_000_000_000),
    ("5.0s", 5_000_000_000),
    ("5.6s", 5_600_000_000),
    ("5.s", 5_000_000_000),
    (".5s", 500_000_000),
    ("1.0s", 1_000_000_000),
    ("1.004s", 1_004_000_000),
    ("100.00100s", 100_001_000_000),
    ("10ns", 10),
    ("11us", 11_000),
    ("12µs", 12_000),  # U+00B5
    ("12μs", 12_000),  # U+03BC
    ("13ms", 13_000_000),
    ("14s", 14_000_000_000),
    ("15m", 900_000_000_000),
    ("16h", 57_600_000_000_000),
    ("3h30m", 12_600_000_000_000),
    ("10.5s4m", 250_500_000_000),
    ("-2m3.4s", -123_400_000_000),
    ("1h2m3s4ms5us6ns", 3_723_004_005_006),
    ("39h9m14.425s", 140_954_425_000_000),
    ("52763797000ns", 52_763_797_000),
    ("0.3333333333333333333h", 1_200_000_000_000),
    ("9007199254740993ns", 9_007_199_254_740_993),  # exact beyond float precision
    ("9223372036854775807ns", MAX_NANOSECONDS),
    ("2562047h47m16.854775807s", MAX_NANOSECONDS),
    ("-9223372036854775808ns", -MAX_NANOSECONDS - 1),
]


@pytest.mark.parametrize(("text", "ns"), GO_CASES)
def test_parses_like_go(text: str, ns: int) -> None:
    assert parse_go_duration_ns(text) == ns
    assert parse_go_duration(text) == ns / 1e9


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        ("3", "without a unit"),
        ("-", "empty"),
        ("s", "not a duration"),
        (".", "without a unit"),
        ("-.", "without a unit"),
        (".s", "not a duration"),
        ("+.s", "not a duration"),
        ("1d", "not a duration"),
        ("1s2", "without a unit"),
        ("1 s", "not a duration"),
        ("1e3s", "not a duration"),
        ("1S", "not a duration"),
        ("9223372036854775808ns", "too long"),
        ("2562047h47m16.854775808s", "too long"),
        ("9223372036854775.808us", "too long"),
        ("1" + "0" * 400 + "s", "too long"),
        ("1" + "0" * 5000 + "s", "too long"),  # past Python's int() digit limit: still our error
    ],
)
def test_refuses_what_go_refuses(text: str, why: str) -> None:
    with pytest.raises(DurationError, match=why) as info:
        parse_go_duration_ns(text)
    assert len(str(info.value)) < 200, "the message must stay one readable line"


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (0, "0s"),
        (1, "1ns"),
        (1_100, "1.1µs"),
        (2_200_000, "2.2ms"),
        (3_300_000_000, "3.3s"),
        (240_000_000_000, "4m0s"),
        (305_000_000_000, "5m5s"),
        (18_001_000_000_000, "5h0m1s"),
        (-1_000_000_000, "-1s"),
        (MAX_NANOSECONDS, "2562047h47m16.854775807s"),
        (-MAX_NANOSECONDS - 1, "-2562047h47m16.854775808s"),
    ],
)
def test_formats_like_go(ns: int, text: str) -> None:
    assert format_go_duration_ns(ns) == text


def test_format_rounds_seconds_to_the_nanosecond() -> None:
    # The capture CLI once turned 0.0001s into "0ms", which the worker refused.
    assert format_go_duration(0.0001) == "100µs"
    assert format_go_duration(90) == "1m30s"
    assert format_go_duration(1.5) == "1.5s"
    with pytest.raises(DurationError):
        format_go_duration(math.inf)


@given(st.integers(min_value=-MAX_NANOSECONDS - 1, max_value=MAX_NANOSECONDS))
def test_format_parses_back(ns: int) -> None:
    assert parse_go_duration_ns(format_go_duration_ns(ns)) == ns


@given(st.text(max_size=30))
def test_any_text_parses_or_raises_duration_error(text: str) -> None:
    try:
        ns = parse_go_duration_ns(text)
    except DurationError:
        return
    assert -MAX_NANOSECONDS - 1 <= ns <= MAX_NANOSECONDS


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (math.nan, "not a finite"),
        (math.inf, "not a finite"),
        (-math.inf, "not a finite"),
        (10**400, "too long"),
        ("1" + "0" * 400 + "s", "too long"),
        (True, "not a duration"),
        (None, "not a duration"),
        ([1], "not a duration"),
        ("-1s", "negative"),
        (-1, "negative"),
        ("50ms", "too short"),
        (0, "too short"),
        ("2h", "too long"),
        (3601, "too long"),
    ],
)
def test_bounded_refuses(value: object, why: str) -> None:
    with pytest.raises(DurationError, match=why) as info:
        bounded_duration(value, minimum=0.1, maximum=3600, numbers_are_seconds=True)
    assert "between 100ms and 1h" in str(info.value) or why in ("not a duration",)


def test_bounded_zero_and_numbers() -> None:
    assert bounded_duration("0", minimum=1, maximum=10, zero_means="never") == 0.0
    assert bounded_duration("10s", minimum=1, maximum=10) == 10.0
    assert bounded_duration(2.5, minimum=1, maximum=10, numbers_are_seconds=True) == 2.5
    with pytest.raises(DurationError, match="no unit"):
        bounded_duration(5, minimum=1, maximum=10)
    with pytest.raises(DurationError, match=r"or 0 \(never\)"):
        bounded_duration("0.5s", minimum=1, maximum=10, zero_means="never")
