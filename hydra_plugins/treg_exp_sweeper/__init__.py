"""``hydra/sweeper=table``: the paper-table sweeper of treg-exp (see :mod:`treg_exp.experiment.sweep`).

Hydra only instantiates plugins that live in the ``hydra_plugins`` namespace package, so the class sits here; the
work is in :mod:`treg_exp.experiment.sweep`, imported when a sweep starts (plugin discovery imports this module on every
run, so it must stay cheap).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write


def launcher_jobs_at_once(launcher: Any) -> int:
    """Jobs ``launcher`` runs at the same time: the local launcher's bound, SLURM's ``array_parallelism`` (an upper
    bound: the cluster may run fewer), else 1 (Hydra's basic launcher runs jobs one after another)."""
    bound = getattr(launcher, "jobs_at_once", None)
    if bound is None:
        bound = (getattr(launcher, "params", None) or {}).get("array_parallelism")
    return 1 if bound is None else int(bound)


class TableSweeper(Sweeper):
    """Hydra's basic sweeper plus table rows/columns/cells, skip notices for missing options, fixed job folders,
    ``sweep.json`` and a cost estimate printed before the first job (:func:`treg_exp.experiment.sweep.plan_sweep`)."""

    def __init__(
        self,
        max_batch_size: int | None = None,
        params: dict[str, str] | None = None,
        rows: Any = None,
        columns: Any = None,
        cells: dict[str, str] | None = None,
        reference: Any = None,
        title: str | None = None,
        only: list[str] | None = None,
        **others: Any,
    ) -> None:
        super().__init__()
        if others:
            raise ValueError(
                f"hydra.sweeper has settings of another sweeper ({', '.join(sorted(others))}): "
                "add hydra/sweeper=optuna to the command line (pip install -e '.[tune]')"
            )
        self.max_batch_size = max_batch_size
        self.params = dict(params or {})
        self.rows = OmegaConf.to_container(rows) if OmegaConf.is_config(rows) else rows
        self.columns = OmegaConf.to_container(columns) if OmegaConf.is_config(columns) else columns
        self.cells = dict(cells or {})
        self.reference = OmegaConf.to_container(reference) if OmegaConf.is_config(reference) else reference
        self.title = title
        self.only = None if only is None else [str(f) for f in only]
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        from treg_exp.experiment.sweep import sweep_dir_of

        with read_write(config), open_dict(config):  # the launcher's own files (.submitit/) go there too
            config.hydra.sweep.dir = str(sweep_dir_of(config))
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        from treg_exp.experiment import sweep as table

        assert self.config is not None and self.hydra_context is not None and self.launcher is not None
        loader = self.hydra_context.config_loader
        plan = table.plan_sweep(self.config, loader, arguments, self.params, self.rows, self.columns, self.cells)
        to_run = plan.to_run
        if self.only is not None:  # relaunch some jobs (treg-exp status prints which); sweep.json keeps them all
            unknown = sorted(set(self.only) - {j.folder for j in to_run})
            if unknown:
                print(f"error: hydra.sweeper.only names no job of this sweep: {unknown[0]}", file=sys.stderr)
                sys.exit(2)
            to_run = [j for j in to_run if j.folder in self.only]
            print(f"relaunching {len(to_run)} of {len(plan.to_run)} jobs (hydra.sweeper.only)", flush=True)
        sweep_dir = table.sweep_dir_of(self.config)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        lines = table.plan_lines(plan, sweep_dir, at_once=launcher_jobs_at_once(self.launcher))
        print("\n".join(lines), flush=True)
        experiment = OmegaConf.select(self.config, "hydra.runtime.choices.experiment", default=None)
        departures = table.departures_of(self.config)
        table.write_sweep_file(sweep_dir, plan, experiment, self.reference, self.title, lines, departures)
        jobs = [job.launch_overrides(sweep_dir) for job in to_run]
        size = len(jobs) if not self.max_batch_size or self.max_batch_size < 1 else int(self.max_batch_size)
        returns = []
        for start in range(0, len(jobs), size or 1):
            batch = jobs[start : start + size]
            results = self.launcher.launch(batch, initial_job_idx=start)
            for result in results:
                _ = result.return_value  # a failed job raises here, as with Hydra's basic sweeper
            returns.append(results)
        _print_table(sweep_dir)
        return returns


def _print_table(sweep_dir: Path) -> None:
    """The sweep's table (per-image means; FID pooled over shards only by ``treg-exp table``) and where it is."""
    from treg_exp.reporting import make_table

    try:
        code = make_table.main([str(sweep_dir), "--sweep", "sweep.json", "--no-dataset-metrics"])
    except Exception as error:  # noqa: BLE001 - the runs are done and kept; the table can be made again
        print(f"note: no table at the end of the sweep ({type(error).__name__}: {error})")
        print(f"  make it with: treg-exp table {sweep_dir}")
        return
    if code == 0:
        print(f"(FID pooled over shards: treg-exp table {sweep_dir})")
