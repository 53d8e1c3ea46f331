"""Atomic writes of the run directory's files, so a killed job never leaves half a file behind."""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any


def atomic_write(path: Path, write: Callable[[IO], None], mode: str = "w") -> None:
    """Write through ``write(handle)`` into a temporary file beside ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda h: json.dump(data, h, indent=2, sort_keys=False, default=str))


def write_csv(path: Path, rows: Sequence[dict[str, Any]], first_columns: Sequence[str] = ()) -> None:
    """Rows as CSV; columns are ``first_columns`` then the others in order of first appearance."""
    columns = list(first_columns)
    for row in rows:
        columns += [key for key in row if key not in columns]

    def write(handle: IO) -> None:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)

    atomic_write(path, write)
