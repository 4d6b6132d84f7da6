"""Field readers: take one field out of a parsed JSON object, or raise a ProtocolError that names
the field, where it was, and what was expected (the painter reads these messages).

Also :class:`Region`, the one value type that travels in both directions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .constants import E_BAD_MESSAGE, MAX_SIDE, ProtocolError


def _missing(obj: dict[str, Any], key: str, required: bool, where: str) -> bool:
    """True when the field is absent (or null) and optional; raises when it is required."""
    if obj.get(key) is not None:
        return False
    if required:
        raise ProtocolError(E_BAD_MESSAGE, f"{where}: missing field '{key}'.")
    return True


def read_int(obj: dict[str, Any], key: str, *, lo: int, hi: int, default: int | None = None,
             required: bool = False, where: str = "message") -> Any:
    if _missing(obj, key, required, where):
        return default
    value = obj[key]
    # bool is an int in Python; a painter's 'true' is not a step count.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(E_BAD_MESSAGE, f"{where}: '{key}' must be an integer, "
                                           f"got {type(value).__name__}.")
    if not lo <= value <= hi:
        raise ProtocolError(E_BAD_MESSAGE, f"{where}: '{key}' = {value} is out of range "
                                           f"[{lo}, {hi}].")
    return value


def read_float(obj: dict[str, Any], key: str, *, lo: float, hi: float,
               default: float | None = None, required: bool = False,
               where: str = "message") -> Any:
    if _missing(obj, key, required, where):
        return default
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProtocolError(E_BAD_MESSAGE, f"{where}: '{key}' must be a number, "
                                           f"got {type(value).__name__}.")
    number = finite_number(value)
    if number is None:
        raise ProtocolError(E_BAD_MESSAGE, f"{where}: '{key}' is not a finite number in range "
                                           f"[{lo}, {hi}].")
    if not lo <= number <= hi:
        raise ProtocolError(E_BAD_MESSAGE, f"{where}: '{key}' = {number} is out of range "
                                           f"[{lo}, {hi}].")
    return number


def finite_number(value: int | float) -> float | None:
    """``value`` as a finite float, or None: JSON has integers of any length (1e999 written
    out), which no float holds."""
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def is_text(value: str) -> bool:
    """Whether ``value`` is text that can be sent on as UTF-8. JSON lets a string escape half a
    surrogate pair (``"\\ud800"``), which no encoder, tokenizer or log file takes."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def not_text(where: str, what: str) -> ProtocolError:
    return ProtocolError(E_BAD_MESSAGE, f"{where}: {what} is not valid text (it holds an "
                                        f"unpaired UTF-16 surrogate escape such as \\ud800).")


def read_str(obj: dict[str, Any], key: str, *, max_len: int, default: str | None = None,
             required: bool = False, where: str = "message") -> Any:
    if _missing(obj, key, required, where):
        return default
    value = obj[key]
    if not isinstance(value, str):
        raise ProtocolError(E_BAD_MESSAGE, f"{where}: '{key}' must be a string, "
                                           f"got {type(value).__name__}.")
    if not is_text(value):
        raise not_text(where, f"'{key}'")
    if len(value) > max_len:
        raise ProtocolError(E_BAD_MESSAGE, f"{where}: '{key}' is {len(value)} characters; "
                                           f"the limit is {max_len}.")
    return value


def read_bool(obj: dict[str, Any], key: str, *, default: bool, where: str = "message") -> bool:
    if _missing(obj, key, False, where):
        return default
    value = obj[key]
    if not isinstance(value, bool):
        raise ProtocolError(E_BAD_MESSAGE, f"{where}: '{key}' must be true or false, "
                                           f"got {type(value).__name__}.")
    return value


def read_obj(obj: dict[str, Any], key: str, *, required: bool = False,
             where: str = "message") -> Any:
    if _missing(obj, key, required, where):
        return None
    value = obj[key]
    if not isinstance(value, dict):
        raise ProtocolError(E_BAD_MESSAGE, f"{where}: '{key}' must be an object, "
                                           f"got {type(value).__name__}.")
    return value


def read_str_list(obj: dict[str, Any], key: str, where: str) -> list[str]:
    """A list of strings; absent means empty."""
    value = obj.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ProtocolError(E_BAD_MESSAGE, f"{where}: '{key}' must be a list of strings.")
    return value


def read_timings(obj: dict[str, Any]) -> dict[str, float]:
    """``timings``: seconds by name. Lenient: the painter never acts on them, so entries that are
    not numbers are dropped rather than failing the message."""
    data = obj.get("timings") or {}
    if not isinstance(data, dict):
        return {}
    return {str(k): float(v) for k, v in data.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def json_type(value: Any) -> str:
    """What a JSON value is, in words (for messages about a value of the wrong type)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else "an object"


@dataclass(frozen=True)
class Region:
    """A rectangle in canvas pixels; changes are confined to it."""

    x: int
    y: int
    width: int
    height: int

    def to_dict(self) -> dict[str, int]:
        return {"x": self.x, "y": self.y, "width": self.width, "height": self.height}


def read_region(obj: dict[str, Any], where: str) -> Region:
    """The required ``region`` of a server message (any rectangle on a canvas of legal size; a
    submit's region is checked against its image instead, in ``submit``)."""
    data = read_obj(obj, "region", required=True, where=where)
    rw = f"{where}.region"
    return Region(*(read_int(data, k, lo=0, hi=MAX_SIDE, required=True, where=rw)
                    for k in ("x", "y", "width", "height")))
