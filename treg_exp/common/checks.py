"""Checks of config values where they enter (constructors), each failing with one :class:`UserError` line.

Hydra hands over whatever the command line said: ``seed=abc`` is a string, ``seed=1.5`` a float, ``seed=`` an
empty string, ``seed=null`` ``None``. These helpers accept what a value unambiguously means (``3``, ``3.0``,
``"3"`` for an integer; any finite real for a number) and name the option in the error otherwise.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from treg_exp.common.errors import UserError

_INTEGER = re.compile(r"\s*[+-]?\d+\s*")


def integer(name: str, value: Any, minimum: int | None = None, allow_none: bool = False) -> int | None:
    """``value`` as an ``int`` (``≥ minimum`` when given); ``None`` only with ``allow_none``."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool):
        result = None
    elif isinstance(value, int):
        result = value
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        result = int(value)
    elif isinstance(value, str) and _INTEGER.fullmatch(value):
        result = int(value)
    else:
        result = None
    if result is None:
        shown = "an empty value" if value in ("", None) else repr(value)
        raise UserError(f"{name} must be an integer, got {shown}")
    if minimum is not None and result < minimum:
        raise UserError(f"{name} must be at least {minimum}, got {result}")
    return result


def number(name: str, value: Any, minimum: float | None = None, positive: bool = False) -> float:
    """``value`` as a finite ``float`` (``≥ minimum``, or ``> 0`` with ``positive``)."""
    result = None
    if not isinstance(value, bool):
        try:
            result = float(value)
        except (TypeError, ValueError):
            result = None
    if result is None or not math.isfinite(result):
        shown = "an empty value" if value in ("", None) else repr(value)
        raise UserError(f"{name} must be a finite number, got {shown}")
    if positive and result <= 0:
        raise UserError(f"{name} must be positive, got {result:g}")
    if minimum is not None and result < minimum:
        raise UserError(f"{name} must be at least {minimum:g}, got {result:g}")
    return result


def boolean(name: str, value: Any) -> bool:
    """``value`` as a ``bool`` (``true``/``false``; ``1``/``0``)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise UserError(f"{name} must be true or false, got {value!r}")


def choice(name: str, value: Any, choices: Sequence[str], note: str = "") -> str:
    """``value`` when it is one of ``choices``; otherwise one line naming them (and ``note``, e.g. another place)."""
    if value not in choices:
        raise UserError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}{note}")
    return value


def text(name: str, value: Any) -> str:
    """A non-empty string."""
    if not isinstance(value, str) or not value.strip():
        shown = "an empty value" if value in ("", None) else repr(value)
        raise UserError(f"{name} must be a non-empty string, got {shown}")
    return value


def existing_path(name: str, value: Any, expects: str, folder: bool = False) -> Path:
    """``value`` as a path that exists (a folder with ``folder``, else a file); otherwise one line that says it was
    not found, with the path and what ``name`` expects (a missing file is never reported as something else)."""
    path = Path(str(value)).expanduser()
    found = path.is_dir() if folder else path.is_file()
    if not found:
        kind = "folder" if folder else "file"
        other = " (it is a file)" if folder and path.is_file() else " (it is a folder)" if path.is_dir() else ""
        raise UserError(f"{name}: {kind} not found: {path}{other}; {name} expects {expects}")
    return path


def looks_like_path(value: str) -> bool:
    """Whether a string given where an id or a file is allowed names a file: it has a folder separator or a file
    suffix (ids never do: a subfolder's ``/`` becomes ``__``)."""
    return "/" in value or "\\" in value or Path(value).suffix.lower() in (".txt", ".lst", ".csv", ".json", ".tsv")
