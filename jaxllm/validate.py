"""Argument checks shared by every module, so that bad input gets one kind of message.

Every check raises *before* any work is done, with a message of one shape:
``"<name> must be <what is allowed>, got <value>"``. A value of the wrong type raises
:class:`ArgumentTypeError`, which is both a ``TypeError`` and a ``ValueError`` (callers that
guard user input with ``except ValueError``, such as the command line, see every bad argument);
a value of the right type but out of range raises ``ValueError``.

``bool`` is never accepted as a number: ``True`` is an ``int`` in Python, but ``steps=True`` is
a mistake, not a request for one step. NumPy integers and floats are accepted and returned as
plain Python numbers.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "ArgumentTypeError", "check_bool", "check_callable", "check_choice", "check_int",
    "check_number", "check_probability", "write_json_atomic", "write_text_atomic",
]


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type (a ``TypeError`` that is also a ``ValueError``)."""


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _range_text(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high}"
    return ""


def check_int(name: str, value: Any, *, min: int | None = None, max: int | None = None,
              none_ok: bool = False) -> int | None:
    """``value`` as an ``int`` in ``[min, max]`` (either bound optional), or ``None`` when
    ``none_ok``."""
    if value is None and none_ok:
        return None
    what = "an int" + (f" {_range_text(min, max, False, False)}" if (min, max) != (None, None)
                       else "")
    if none_ok:
        what = f"None or {what}"
    if not _is_int(value):
        raise ArgumentTypeError(f"{name} must be {what}, got {_show(value)} "
                                f"({type(value).__name__})")
    if (min is not None and value < min) or (max is not None and value > max):
        raise ValueError(f"{name} must be {what}, got {_show(value)}")
    return int(value)


def check_number(name: str, value: Any, *, low: float | None = None,
                 high: float | None = None, low_open: bool = False, high_open: bool = False,
                 none_ok: bool = False) -> float | None:
    """``value`` as a finite ``float`` within the bounds given (open or closed)."""
    if value is None and none_ok:
        return None
    bounds = _range_text(low, high, low_open, high_open)
    what = "a finite number" + (f" {bounds}" if bounds else "")
    if none_ok:
        what = f"None or {what}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(f"{name} must be {what}, got {_show(value)} "
                                f"({type(value).__name__})")
    v = float(value)
    bad = not math.isfinite(v)
    if low is not None:
        bad |= v <= low if low_open else v < low
    if high is not None:
        bad |= v >= high if high_open else v > high
    if bad:
        raise ValueError(f"{name} must be {what}, got {_show(value)}")
    return v


def check_probability(name: str, value: Any, *, none_ok: bool = False) -> float | None:
    """A number in ``(0, 1]`` (e.g. top-p)."""
    return check_number(name, value, low=0.0, high=1.0, low_open=True, none_ok=none_ok)


def check_choice(name: str, value: Any, allowed: Sequence[Any]) -> Any:
    """``value`` if it is one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, "
                         f"got {_show(value)}")
    return value


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ArgumentTypeError(f"{name} must be True or False, got {_show(value)} "
                                f"({type(value).__name__})")
    return value


def check_callable(name: str, value: Any, *, none_ok: bool = False) -> Callable | None:
    if value is None and none_ok:
        return None
    if not callable(value):
        raise ArgumentTypeError(f"{name} must be {'None or ' if none_ok else ''}callable, "
                                f"got {_show(value)} ({type(value).__name__})")
    return value


def write_text_atomic(path: str | os.PathLike, text: str, *, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` so that a reader sees the old file or the new one, never
    half of one: written to a temporary file in the same folder, flushed to disk, renamed."""
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding=encoding) as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates the file private to its owner
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json_atomic(path: str | os.PathLike, obj: Any, *, indent: int | None = 2,
                      sort_keys: bool = True) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (see :func:`write_text_atomic`)."""
    write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=sort_keys,
                                       ensure_ascii=False) + "\n")
