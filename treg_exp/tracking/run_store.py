"""The run directory as a store: claiming it, one atomic row per image, failures, shard records, tables, summary.

Layout::

    gt/<id>.png  measurement/<id>.png  measurement/<id>.pt  recon/<id>.png (recon/<id>_<k>.png for k ≥ 1)
    rows/<id>.json          one row per image, written atomically when the image is finished (or failed)
    metrics.csv             every row on disk, rebuilt after every batch
    failures.jsonl          ``{id, path, stage, error}`` of every image whose row says ``failed`` (empty when none)
    diagnostics/<id>.json   the solver's per-step diagnostics (and trajectory/<id>/ images when asked)
    summary.json            written by :meth:`RunStore.write_summary` (strict JSON: non-finite numbers are ``null``)
    shards/<i>-of-<n>.json  the shards that have run in this directory (which images it is expected to hold)
    config.yaml             the resolved config

Every file is written atomically (:mod:`treg_exp.tracking.files`), so a process killed at any moment leaves whole
files. Several processes may share one directory (shards pointed at one folder, or one job started twice): rows
are per image, and the tables are always rebuilt from every row on disk under the directory's lock, so the last
process to finish leaves complete tables.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from PIL import Image

from treg_exp.tracking.files import (
    check_output_dir,
    ensure_dir,
    locked,
    read_json,
    remove_stale_temps,
    save_image,
    save_torch,
    strict_json,
    write_csv,
    write_json,
    write_jsonl,
    write_text,
)

log = logging.getLogger(__name__)

ROW_FIRST_COLUMNS = ("id", "status", "prompt", "psnr", "ssim", "psnr_measurement", "seconds")
FAILURE_FIELDS = ("id", "path", "stage", "error")
RUN_FOLDERS = ("gt", "measurement", "recon", "rows", "diagnostics", "shards")


class RunStore:
    """One run directory.

    Args:
        run_dir: the directory (created by :meth:`claim`, not before).
        order: every image id of the dataset in dataset order: the row order of ``metrics.csv`` and what a shard
            record's ``k % count == index`` refers to.
        num_samples: reconstructions per image (an ``ok`` image needs ``recon/<id>_<k>.png`` for each ``k ≥ 1``).

    :attr:`sources` maps an image id to the file it comes from (set by the runner as it loads images), for the
    ``path`` of failure records.
    """

    def __init__(self, run_dir: Path, order: Sequence[str] = (), num_samples: int = 1) -> None:
        self.run_dir = Path(run_dir)
        self.order = list(order)
        self.num_samples = num_samples
        self.sources: dict[str, str | None] = {}

    # --- claiming ----------------------------------------------------------------------------------------------
    def check(self) -> None:
        """The location can be written (one :class:`~treg_exp.common.errors.OutputError` line otherwise); writes
        nothing."""
        check_output_dir(self.run_dir, RUN_FOLDERS)

    def claim(self, config: dict[str, Any], shard_index: int, shard_count: int, shard_size: int) -> None:
        """Mark the directory as this run's: remove temporary files of killed processes, write ``config.yaml``
        (when ``config`` is not empty) and this shard's record."""
        ensure_dir(self.run_dir)
        if removed := remove_stale_temps(self.run_dir):
            log.info("removed %d temporary files of killed processes", removed)
        if config:
            write_text(self.run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(config)))
        record = {"index": shard_index, "count": shard_count, "images": shard_size}
        write_json(self.run_dir / "shards" / f"{shard_index}-of-{shard_count}.json", record)

    # --- files of one image ------------------------------------------------------------------------------------
    def path(self, folder: str, name: str, suffix: str = ".png") -> Path:
        """``<run_dir>/<folder>/<name><suffix>``."""
        return self.run_dir / folder / f"{name}{suffix}"

    def row_path(self, image_id: str) -> Path:
        """``rows/<id>.json``."""
        return self.path("rows", image_id, ".json")

    def write_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """Write ``row`` (which has an ``id``) atomically as ``rows/<id>.json``; returns it."""
        write_json(self.row_path(row["id"]), row)
        return row

    def write_failure(self, image_id: str, prompt: str | None, stage: str, error: BaseException) -> dict[str, Any]:
        """Record a failed image: a row ``{id, status: failed, prompt, stage, [path], error}``; returns it. ``path``
        is where the image comes from, when :attr:`sources` knows it."""
        row: dict[str, Any] = {"id": image_id, "status": "failed", "prompt": prompt, "stage": stage}
        if (source := self.sources.get(image_id)) is not None:
            row["path"] = source
        row["error"] = f"{type(error).__name__}: {error}"
        return self.write_row(row)

    def save_png(self, folder: str, name: str, image: Image.Image) -> None:
        """``<folder>/<name>.png``."""
        save_image(self.path(folder, name), image)

    def save_measurement(self, image_id: str, measurement: dict[str, Any]) -> None:
        """``measurement/<id>.pt``: ``y``, the operator's parameters and the prompt of one image."""
        save_torch(self.path("measurement", image_id, ".pt"), measurement)

    def write_diagnostics(
        self, image_id: str, values: dict[str, list], images: Sequence[tuple[int, str, Image.Image]]
    ) -> None:
        """``diagnostics/<id>.json`` (``{name: [[step, value], ...]}``, when any) and ``trajectory/<id>/`` PNGs."""
        if values:
            write_json(self.path("diagnostics", image_id, ".json"), dict(values))
        for step, name, image in images:
            save_image(self.path(f"trajectory/{image_id}", f"{name.replace('/', '_')}_{step:04d}"), image)

    # --- what the directory holds ------------------------------------------------------------------------------
    def finished_ids(self) -> set[str]:
        """Ids whose row says ``ok`` and whose PNGs exist (an unreadable row or a missing PNG: solved again)."""
        done = set()
        rows = self.run_dir / "rows"
        for path in sorted(rows.glob("*.json")) if rows.is_dir() else []:
            row = read_json(path)
            if not isinstance(row, dict) or row.get("status") != "ok":
                continue
            needed = [f"gt/{path.stem}.png", f"recon/{path.stem}.png"]
            needed += [f"recon/{path.stem}_{k}.png" for k in range(1, self.num_samples)]
            missing = [name for name in needed if not (self.run_dir / name).is_file()]
            if missing:
                log.warning("%s says ok but %s is missing: the image is solved again", path, missing[0])
                continue
            done.add(path.stem)
        return done

    def all_rows(self) -> list[dict[str, Any]]:
        """Every readable row in the directory: dataset order first, then rows of other ids (sorted)."""
        found: dict[str, dict[str, Any]] = {}
        rows_dir = self.run_dir / "rows"
        for path in sorted(rows_dir.glob("*.json")) if rows_dir.is_dir() else []:
            row = read_json(path)
            if isinstance(row, dict) and row.get("id") == path.stem:
                found[path.stem] = row
        ordered = [found.pop(i) for i in self.order if i in found]
        return ordered + [found[i] for i in sorted(found)]

    def expected_ids(self) -> tuple[list[str], bool]:
        """The ids of every shard recorded in ``shards/`` (dataset order), and whether they cover the dataset."""
        members: set[int] = set()
        for path in self._shard_records():
            record = read_json(path)
            try:
                index, count = int(record["index"]), int(record["count"])
            except (TypeError, KeyError, ValueError):
                continue
            members.update(k for k in range(len(self.order)) if k % count == index)
        return [self.order[k] for k in sorted(members)], len(members) == len(self.order)

    def shards_in_directory(self) -> list[str]:
        """The names (``<i>-of-<n>``) of the shard records in ``shards/``."""
        return sorted(p.stem for p in self._shard_records())

    def _shard_records(self) -> list[Path]:
        shards_dir = self.run_dir / "shards"
        return sorted(shards_dir.glob("*.json")) if shards_dir.is_dir() else []

    def status_counts(self, ids: Sequence[str]) -> dict[str, int]:
        """``{"images", "ok", "failed"}`` of ``ids`` as their rows on disk say."""
        statuses = [(read_json(self.row_path(i)) or {}).get("status") for i in ids]
        return {"images": len(ids), "ok": statuses.count("ok"), "failed": statuses.count("failed")}

    # --- tables and summary: always from every row on disk, under the lock --------------------------------------
    def write_tables(self) -> None:
        """``metrics.csv`` and ``failures.jsonl`` from every row on disk."""
        with locked(self.run_dir):
            self._write_tables_unlocked()

    def write_summary(self, summarise: Callable[[list[dict[str, Any]]], dict[str, Any]]) -> dict[str, Any]:
        """Rebuild the tables and write ``summary.json`` = ``summarise(every row)`` in one hold of the lock; returns
        the summary as the file says it (non-finite numbers as ``None``)."""
        with locked(self.run_dir):
            rows = self._write_tables_unlocked()
            summary = strict_json(summarise(rows))
            write_json(self.run_dir / "summary.json", summary, strict=True)
        return summary

    def _write_tables_unlocked(self) -> list[dict[str, Any]]:
        rows = self.all_rows()
        write_csv(self.run_dir / "metrics.csv", rows, ROW_FIRST_COLUMNS)
        failures = [{k: r.get(k) for k in FAILURE_FIELDS} for r in rows if r.get("status") == "failed"]
        write_jsonl(self.run_dir / "failures.jsonl", failures)
        return rows
