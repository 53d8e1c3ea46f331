"""Whether two run directories hold the same results: the check that a refactor changed no output.

    python scripts/compare_runs.py outputs/before outputs/after     # exit 0: same results; 1: the differences

Every PNG must be byte-equal; ``metrics.csv``, the rows, ``summary.json``, the shard records and diagnostics must
be equal once wall-clock values (the ``seconds`` columns and keys) are left out; the measurements ``.pt`` must hold
equal tensors. Files that name the run's own place or time (``config.yaml``, ``run.log``, ``table.md`` with its
seconds column, Hydra's ``.hydra/``) are not compared.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import torch

#: keys and columns that hold wall-clock time
WALL_CLOCK = frozenset({"seconds"})
NOT_COMPARED = frozenset({"config.yaml", "run.log", "table.md"})


def _without(value: Any, ignore: frozenset[str]) -> Any:
    if isinstance(value, dict):
        return {k: _without(v, ignore) for k, v in value.items() if k not in ignore}
    if isinstance(value, list):
        return [_without(v, ignore) for v in value]
    return value


def _csv_rows(path: Path, ignore: frozenset[str]) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return [_without(row, ignore) for row in csv.DictReader(handle)]


def _json(path: Path, ignore: frozenset[str]) -> Any:
    if path.suffix == ".jsonl":
        return [_without(json.loads(line), ignore) for line in path.read_text().splitlines() if line.strip()]
    return _without(json.loads(path.read_text()), ignore)


def _tensors_equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_tensors_equal(a[k], b[k]) for k in a)
    return a == b


def _same(a: Path, b: Path, ignore: frozenset[str]) -> bool:
    if a.name == "metrics.csv":
        return _csv_rows(a, ignore) == _csv_rows(b, ignore)
    if a.suffix in (".json", ".jsonl"):
        return _json(a, ignore) == _json(b, ignore)
    if a.suffix == ".pt":
        return _tensors_equal(torch.load(a, weights_only=True), torch.load(b, weights_only=True))
    return a.read_bytes() == b.read_bytes()


def differences(before: Path, after: Path, ignore: frozenset[str] = WALL_CLOCK) -> list[str]:
    """One line per file that is missing on one side or differs (empty: the same results)."""

    def files(root: Path) -> set[Path]:
        return {
            p.relative_to(root)
            for p in root.rglob("*")
            if p.is_file() and p.name not in NOT_COMPARED and ".hydra" not in p.relative_to(root).parts
        }

    in_before, in_after = files(Path(before)), files(Path(after))
    lines = [f"only in {before}: {p}" for p in sorted(in_before - in_after)]
    lines += [f"only in {after}: {p}" for p in sorted(in_after - in_before)]
    lines += [f"differs: {p}" for p in sorted(in_before & in_after) if not _same(before / p, after / p, ignore)]
    return lines
