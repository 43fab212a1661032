"""Checks of the settings that layers and models are built with: a bad value gets a TypeError (wrong
type) or ValueError (wrong value) naming the argument and what was expected, at construction.
Nothing is truncated or coerced: a window of 2.5 or "2" is an error, not a window of 2.
"""
from numbers import Integral, Real
from typing import Tuple

from ..ops.checks import positive_float  # noqa: F401 - the one definition, re-exported


def integer(name: str, value, minimum: int = 1) -> int:
    """An int (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def int_pair(name: str, value, minimum: int = 1) -> Tuple[int, int]:
    """An int or a pair of ints, each >= ``minimum``, as a pair."""
    if isinstance(value, Integral) and not isinstance(value, bool):
        value = (value, value)
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if any(isinstance(v, bool) or not isinstance(v, Integral) for v in value):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(value) < minimum:
        raise ValueError(f"{name} must be >= {minimum} on each axis, got {tuple(value)}")
    return int(value[0]), int(value[1])


def probability(name: str, value, below_one: bool = False) -> float:
    """A real number in [0, 1], or in [0, 1) with ``below_one`` (a drop rate p whose kept branch
    is scaled by 1 / (1 - p))."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a float, got {value!r}")
    if not (0 <= value < 1 if below_one else 0 <= value <= 1):
        raise ValueError(f"{name} must be a probability in [0, {'1)' if below_one else '1]'}, got {value!r}")
    return float(value)


def flag(name: str, value) -> bool:
    """A bool (a string such as "False" would otherwise count as True)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return value


def divisible(name: str, value: int, by_name: str, by: int) -> None:
    """``value`` must be a multiple of ``by``."""
    if value % by:
        raise ValueError(f"{name} ({value}) must be divisible by {by_name} ({by})")
