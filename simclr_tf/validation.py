"""Argument checks shared by every layer of simclr_tf (no TensorFlow import).

Each check names the argument, says what is allowed and repeats what was received (STYLE.md, 7),
and returns the value in its canonical Python type, so callers can write
`size = check_positive_int("image_size", size)`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable


def _hint(hint: str) -> str:
    return f" {hint}" if hint else ""


def check_positive_int(name: str, value, *, minimum: int = 1, hint: str = "") -> int:
    """`value` as an int if it is an integer (not a bool) of at least `minimum`.

    Raises:
        ValueError: naming `name`, the minimum and the received value.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"`{name}` must be {what}. Received: {name}={value!r}.{_hint(hint)}")
    return int(value)


def check_number(name: str, value, *, low: float = -math.inf, high: float = math.inf,
                 low_inclusive: bool = True, high_inclusive: bool = True, hint: str = "") -> float:
    """`value` as a float if it is a finite real number (not a bool) within the bounds.

    Raises:
        ValueError: naming `name`, the allowed interval and the received value.
    """
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value >= low if low_inclusive else value > low) and (
            value <= high if high_inclusive else value < high
        )
    if not ok:
        if math.isinf(high) and math.isinf(low):
            allowed = "a finite number"
        elif math.isinf(high):
            allowed = f"a number {'>=' if low_inclusive else '>'} {low}"
        else:
            left, right = "[" if low_inclusive else "(", "]" if high_inclusive else ")"
            allowed = f"a number in {left}{low}, {high}{right}"
        raise ValueError(f"`{name}` must be {allowed}. Received: {name}={value!r}.{_hint(hint)}")
    return float(value)


def check_one_of(name: str, value, allowed: Iterable, *, hint: str = ""):
    """`value` unchanged if it is one of `allowed` (bools never match integers).

    Raises:
        ValueError: naming `name`, the allowed values and the received value.
    """
    allowed = tuple(allowed)
    if isinstance(value, bool) and not any(isinstance(a, bool) for a in allowed):
        ok = False
    else:
        ok = value in allowed
    if not ok:
        raise ValueError(
            f"`{name}` must be one of {', '.join(map(repr, allowed))}. Received: {name}={value!r}."
            f"{_hint(hint)}"
        )
    return value
