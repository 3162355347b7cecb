"""Go durations (``30s``, ``1m30s``, ``1.5h``, ``500ms``): the one parser and formatter.

Retina's configuration, the Capture CRD and the worker flags all take durations in Go's
``time.ParseDuration`` syntax, so this module follows Go's rules exactly:

* an optional sign, then one or more ``<number><unit>`` parts: ``1h30m``, ``1.5s``, ``.5s``, ``1.s``;
* units ``ns``, ``us``, ``µs`` (U+00B5), ``μs`` (U+03BC), ``ms``, ``s``, ``m``, ``h``; every number
  needs a unit, except a bare ``0`` (also ``+0``, ``-0``);
* the value is a whole number of nanoseconds (fractions computed and truncated as Go does) and
  must fit Go's ``time.Duration`` (int64 nanoseconds, about 292 years): longer values are refused,
  never rounded to infinity;
* no spaces inside; surrounding whitespace is tolerated (YAML and flags often carry it).

Functions:

``parse_go_duration_ns(text) -> int``
    nanoseconds, Go's rules; raises ``DurationError`` (a ``ValueError``).
``parse_go_duration(text) -> float``
    the same in seconds.
``format_go_duration(seconds) -> str`` and ``format_go_duration_ns(ns) -> str``
    Go's ``Duration.String()``: ``1m30s``, ``1.5s``, ``500ms``, ``100µs``, ``0s``; it parses back
    to the same nanoseconds (seconds are rounded to the nearest nanosecond first).
``bounded_duration(value, *, minimum, maximum, zero_means=None, numbers_are_seconds=False) -> float``
    what configuration validators call: parse a config value (a Go duration string, or with
    ``numbers_are_seconds`` a finite int/float of seconds), then check ``minimum <= v <= maximum``
    (seconds). ``zero_means`` (e.g. ``"never expire"``) allows exactly 0 besides the range. The
    message names the bounds and gives an example; callers prefix the field name.
"""

from __future__ import annotations

import math
import re
from typing import Any

__all__ = [
    "MAX_NANOSECONDS",
    "DurationError",
    "bounded_duration",
    "format_go_duration",
    "format_go_duration_ns",
    "parse_go_duration",
    "parse_go_duration_ns",
]

#: Go's time.Duration is an int64 of nanoseconds.
MAX_NANOSECONDS = 2**63 - 1

_UNIT_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "μs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
# One part: digits with an optional fraction (at least one digit overall), then a unit.
# Longest units first so "ms" is not read as "m" followed by junk.
_PART = re.compile(r"(?P<int>\d*)(?:\.(?P<frac>\d*))?(?P<unit>ns|us|µs|μs|ms|s|m|h)")
_EXAMPLE = "like 30s, 1m30s, 1.5h or 500ms"
_MAX_TEXT = "2562047h47m16.854775807s"
# More integer digits than this overflow whatever the unit. Checked before int(), so a huge
# input costs nothing and never meets Python's limit on int() of long digit strings.
_MAX_INT_DIGITS = 20


def _show(value: Any) -> str:
    """``repr(value)``, shortened so an error message stays one readable line."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:30]}...({len(text)} characters)"


class DurationError(ValueError):
    """A value that is not a usable duration; the message says why and gives an example."""


def parse_go_duration_ns(text: str) -> int:
    """``text`` in Go's duration syntax -> nanoseconds (module doc for the rules)."""
    if not isinstance(text, str):
        raise DurationError(f"{_show(text)} is not a duration string; write one {_EXAMPLE}")
    body = text.strip()
    sign = 1
    if body[:1] in ("+", "-"):
        sign = -1 if body[0] == "-" else 1
        body = body[1:]
    if body == "0":
        return 0
    if not body:
        raise DurationError(f"{_show(text)} is empty; write a duration {_EXAMPLE}")
    total, pos = 0, 0
    while pos < len(body):
        m = _PART.match(body, pos)
        if m is None or not (m["int"] or m["frac"]):
            if body[pos:].lstrip("0123456789.") == "" or re.fullmatch(r"[\d.]+", body[pos:]):
                raise DurationError(f"{_show(text)} has a number without a unit; write it {_EXAMPLE}")
            raise DurationError(f"{_show(text)} is not a duration; write it {_EXAMPLE}")
        unit = _UNIT_NS[m["unit"]]
        digits = m["int"].lstrip("0")
        if len(digits) > _MAX_INT_DIGITS:
            raise DurationError(
                f"{_show(text)} is too long: a duration can be at most {_MAX_TEXT} (about 292 years)"
            )
        total += int(digits or "0") * unit + _fraction_ns(m["frac"] or "", unit)
        if total > MAX_NANOSECONDS + (1 if sign < 0 else 0):
            raise DurationError(
                f"{_show(text)} is too long: a duration can be at most {_MAX_TEXT} (about 292 years)"
            )
        pos = m.end()
    return sign * total


def _fraction_ns(digits: str, unit: int) -> int:
    """The nanoseconds of a fraction ``.digits`` of ``unit``, computed as Go's ParseDuration does
    (its leadingFraction keeps digits while they fit 63 bits, then float64 arithmetic, truncated):
    ``0.3333333333333333333h`` is exactly 20m in Go, so here too."""
    value, scale = 0, 1.0
    for char in digits:
        if value > (2**63 - 1) // 10:
            break
        following = value * 10 + int(char)
        if following > 2**63:
            break
        value, scale = following, scale * 10
    return int(float(value) * (float(unit) / scale)) if value else 0


def parse_go_duration(text: str) -> float:
    """``text`` in Go's duration syntax -> seconds (a float, exact to the nanosecond below ~104 days)."""
    return parse_go_duration_ns(text) / 1e9


def _format_fraction(value: int, digits: int) -> str:
    """``value`` / 10**digits without trailing zeros: (1500, 3) -> "1.5"."""
    whole, frac = divmod(value, 10**digits)
    frac_text = f"{frac:0{digits}d}".rstrip("0") if digits else ""
    return f"{whole}.{frac_text}" if frac_text else str(whole)


def format_go_duration(seconds: float) -> str:
    """Seconds -> Go's ``Duration.String()`` form (``90`` -> ``1m30s``, ``0.0001`` -> ``100µs``).

    Rounds to the nearest nanosecond, like converting to ``time.Duration`` does.
    """
    if not math.isfinite(seconds):
        raise DurationError(f"{_show(seconds)} is not a finite duration")
    ns = round(seconds * 1e9)
    if abs(ns) > MAX_NANOSECONDS + 1:
        raise DurationError(f"{_show(seconds)}s is longer than a duration can be (about 292 years)")
    return format_go_duration_ns(ns)


def format_go_duration_ns(ns: int) -> str:
    """Nanoseconds -> Go's ``Duration.String()`` form (``1_500_000_000`` -> ``1.5s``)."""
    if ns == 0:
        return "0s"
    sign, ns = ("-", -ns) if ns < 0 else ("", ns)
    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{_format_fraction(ns, 3)}µs"
    if ns < 1_000_000_000:
        return f"{sign}{_format_fraction(ns, 6)}ms"
    hours, rest = divmod(ns, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    text = f"{_format_fraction(rest, 9)}s"
    if hours or minutes:
        text = f"{minutes}m{text}"
    if hours:
        text = f"{hours}h{text}"
    return sign + text


def _short(seconds: float) -> str:
    """Go's form without zero trailing parts, for messages: 3600 -> "1h", 90 -> "1m30s"."""
    return re.sub(r"(?<=[hm])0m0s$|(?<=[hm])0s$", "", format_go_duration(seconds))


def bounded_duration(
    value: Any,
    *,
    minimum: float,
    maximum: float,
    zero_means: str | None = None,
    numbers_are_seconds: bool = False,
) -> float:
    """A configuration value -> seconds within ``[minimum, maximum]`` (module doc).

    Refuses booleans, NaN and infinities, numbers when ``numbers_are_seconds`` is false, negative
    values, and anything out of bounds, with a message that names the bounds.
    """
    bounds = f"between {_short(minimum)} and {_short(maximum)}"
    if zero_means:
        bounds += f", or 0 ({zero_means})"
    if isinstance(value, bool) or value is None:
        raise DurationError(f"{_show(value)} is not a duration; write one {_EXAMPLE}")
    if isinstance(value, (int, float)):
        if not numbers_are_seconds:
            raise DurationError(f"{_show(value)} has no unit; write it as a string {_EXAMPLE}")
        if isinstance(value, float) and not math.isfinite(value):
            raise DurationError(f"{_show(value)} is not a finite duration; use one {bounds}")
        if abs(value) > maximum:  # before float(): a huge int would overflow the conversion
            raise DurationError(f"{_show(value)} seconds is too long; use a duration {bounds}")
        seconds = float(value)
    elif isinstance(value, str):
        try:
            seconds = parse_go_duration(value)
        except DurationError as exc:
            raise DurationError(f"{exc}; use one {bounds}") from None
    else:
        raise DurationError(f"a {type(value).__name__} is not a duration; write one {_EXAMPLE}")
    if seconds == 0 and zero_means:
        return 0.0
    if seconds < 0:
        raise DurationError(f"{_show(value)} is negative; use a duration {bounds}")
    if seconds < minimum:
        raise DurationError(f"{_show(value)} is too short; use a duration {bounds}")
    if seconds > maximum:
        raise DurationError(f"{_show(value)} is too long; use a duration {bounds}")
    return seconds
