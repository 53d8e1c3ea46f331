"""Hydra callbacks (``hydra.callbacks`` in ``conf/config.yaml``): a checked output location, and a multirun that
goes on past failed jobs and says at the end which failed and why.

Hydra's basic launcher runs the jobs of ``python run.py -m ...`` one after another in one process; a job that
exits (as a single run does on a user error) would end the whole sweep. In a multirun
:func:`treg_exp.experiment.app.main` therefore returns each job's outcome (``ok``, ``images_failed``, ``refused``,
``crashed``) instead of exiting, and :class:`JobReport` writes it to ``<sweep dir>/jobs/<num>.json`` at the end of the
job (in the job's own process, so this works the same with the submitit launchers, local or SLURM), then, when every job
has returned, prints one line per failed job and exits with the sweep's status: ``2`` if a job was refused or crashed,
``3`` if only images failed, ``0`` when everything is done. ``fail_fast=true`` keeps the old behaviour: the first job
that fails with a user error stops the sweep.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from treg_exp.common.errors import UserError
from treg_exp.experiment.sweep import sweep_dir_of
from treg_exp.tracking.files import check_output_dir, read_json, write_json

log = logging.getLogger(__name__)

JOBS_FOLDER = "jobs"


def _check_location(config: DictConfig, key: str) -> None:
    """Exit with one line when the output location ``key`` cannot be written (before Hydra creates it)."""
    try:
        path = Path(str(OmegaConf.select(config, key, throw_on_missing=True)))
    except Exception:  # noqa: BLE001 - not resolvable yet here: Hydra and the runner check it later
        return
    try:
        check_output_dir(path)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def _refuse_table_without_multirun(config: DictConfig) -> None:
    """A table preset (``hydra.sweeper.rows``) started without ``-m`` would silently run one default job: exit 2
    with one line, before Hydra creates the run directory."""
    rows = OmegaConf.select(config, "hydra.sweeper.rows", default=None)
    if rows:
        experiment = OmegaConf.select(config, "hydra.runtime.choices.experiment", default=None)
        print(
            f"error: experiment={experiment} is a table ({len(rows)} rows): run it with -m (python run.py -m "
            f"experiment={experiment} ...); `treg-exp plan experiment={experiment}` shows its jobs and cost first",
            file=sys.stderr,
        )
        sys.exit(2)


class JobReport(Callback):
    """Checks the output location; in a multirun records every job's outcome and reports the failed ones."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _refuse_table_without_multirun(config)
        _check_location(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check_location(config, "hydra.sweep.dir")
        folder = sweep_dir_of(config) / JOBS_FOLDER
        for stale in folder.glob("*.json") if folder.is_dir() else []:  # a previous sweep into the same folder
            with contextlib.suppress(OSError):
                stale.unlink()

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if OmegaConf.select(config, "hydra.mode") != RunMode.MULTIRUN:
            return
        value = job_return._return_value  # noqa: SLF001 - .return_value re-raises a failed job's exception
        if job_return.status == JobStatus.COMPLETED and isinstance(value, dict) and "status" in value:
            status, message = value["status"], value.get("message")
        elif job_return.status == JobStatus.COMPLETED:
            status, message = "ok", None
        else:
            status, message = "crashed", f"{type(value).__name__}: {value}"
        record = {
            "num": int(config.hydra.job.num),
            "overrides": " ".join(job_return.overrides or []),
            "run_dir": str(config.hydra.runtime.output_dir),
            "status": status,
            "message": message,
        }
        try:
            write_json(Path(str(config.hydra.sweep.dir)) / JOBS_FOLDER / f"{record['num']}.json", record)
        except UserError as error:
            log.warning("job %s: outcome not recorded: %s", record["num"], error)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        folder = sweep_dir_of(config) / JOBS_FOLDER
        records = [read_json(p) for p in folder.glob("*.json")] if folder.is_dir() else []
        records = sorted((r for r in records if isinstance(r, dict)), key=lambda r: r.get("num", 0))
        failed = [r for r in records if r.get("status") != "ok"]
        if not failed:
            return
        print(f"error: {len(failed)} of {len(records)} jobs did not finish every image:", file=sys.stderr)
        for r in failed:
            print(f"  job {r['num']} ({r['overrides']}): {r['status']}: {r['message']}", file=sys.stderr)
        print(f"  (one record per job in {folder})", file=sys.stderr)
        sys.exit(2 if any(r.get("status") in ("refused", "crashed") for r in failed) else 3)
