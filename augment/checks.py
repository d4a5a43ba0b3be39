"""The one set of argument checks used by every package: ``"<field> must be <rule>, got <value>"``.

Library code checks its own argument names (``padding``, ``alpha``); a config layer wraps the call in
:func:`field_prefix` so the same error names the YAML path once (``data.padding``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

__all__ = [
    "CheckError",
    "require",
    "is_int",
    "is_real",
    "check_int",
    "check_real",
    "check_probability",
    "check_choice",
    "check_bool",
    "field_prefix",
]


class CheckError(ValueError):
    """A bad argument: ``field`` must be ``rule``, got ``value``."""

    def __init__(self, field: str, rule: str, value: Any) -> None:
        self.field, self.rule, self.value = field, rule, value
        super().__init__(f"{field} must be {rule}, got {shown(value)}")

    def with_field(self, field: str) -> CheckError:
        """The same error for another field name (keeps the rule and the value)."""
        return CheckError(field, self.rule, self.value)


def shown(value: Any, limit: int = 300) -> str:
    """``repr(value)`` when it is one short line, else its type (and length): an error message stays one line."""
    text = repr(value)
    if len(text) <= limit and "\n" not in text:
        return text
    size = f" of {len(value)} items" if isinstance(value, (list, tuple, dict, set)) else ""
    return f"a {type(value).__name__}{size}"


def require(ok: bool, field: str, rule: str, value: Any) -> None:
    """Raise :class:`CheckError` unless ``ok``."""
    if not ok:
        raise CheckError(field, rule, value)


def is_int(value: Any) -> bool:
    """An ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """An ``int`` or ``float`` that is not a ``bool``."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _num(value: float) -> str:
    """1.0 -> '1', 0.25 -> '0.25'."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _bounds_rule(kind: str, low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"{kind}in {'(' if low_open else '['}{_num(low)}, {_num(high)}{')' if high_open else ']'}"
    if low is not None:
        return f"{kind}{'>' if low_open else '>='} {_num(low)}"
    if high is not None:
        return f"{kind}{'<' if high_open else '<='} {_num(high)}"
    return kind.strip() or "a number"


def _in_bounds(value: float, low: float | None, high: float | None, low_open: bool, high_open: bool) -> bool:
    if low is not None and not (value > low if low_open else value >= low):
        return False
    return high is None or (value < high if high_open else value <= high)


def check_int(field: str, value: Any, low: int | None = None, high: int | None = None) -> int:
    """Return ``value`` if it is an int in [low, high] (either bound optional)."""
    rule = _bounds_rule("an int ", low, high, False, False) if (low, high) != (None, None) else "an int"
    require(is_int(value) and _in_bounds(value, low, high, False, False), field, rule, value)
    return int(value)


def check_real(
    field: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Return ``value`` as a float if it is a finite number within the bounds (open or closed)."""
    rule = _bounds_rule("", low, high, low_open, high_open)
    if (low, high) == (None, None):
        rule = "a finite number"
    ok = is_real(value) and math.isfinite(value) and _in_bounds(value, low, high, low_open, high_open)
    require(ok, field, rule, value)
    return float(value)


def check_probability(field: str, value: Any) -> float:
    """Return ``value`` as a float if it lies in [0, 1]."""
    return check_real(field, value, 0.0, 1.0)


def check_choice(field: str, value: Any, choices: Sequence[Any]) -> Any:
    """Return ``value`` if it is one of ``choices``."""
    ok = isinstance(value, (str, int, float, type(None))) and not isinstance(value, bool) and value in choices
    require(ok, field, "one of " + ", ".join(map(str, choices)), value)
    return value


def check_bool(field: str, value: Any) -> bool:
    """Return ``value`` if it is a bool (true / false)."""
    require(isinstance(value, bool), field, "true or false", value)
    return value


@contextmanager
def field_prefix(prefix: str) -> Iterator[None]:
    """Re-raise a :class:`CheckError` from inside with ``prefix.`` before its field name."""
    try:
        yield
    except CheckError as err:
        field = err.field if err.field.startswith(prefix + ".") else f"{prefix}.{err.field}"
        raise err.with_field(field) from None
