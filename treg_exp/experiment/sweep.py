"""Table sweeps: every (row × column × swept value) of a paper table as one Hydra multirun.

A preset (``conf/experiment/p2l_table2_ffhq.yaml`` ...) selects ``hydra/sweeper: table`` and lists, under
``hydra.sweeper``:

- ``rows``: ``{name: overrides}``, one table row each, named as the paper prints it (``DPS: solver=dps
  model=adm_imagenet512``);
- ``columns``: ``{name: overrides}``, one task column each (``Deblur (gauss): task=gauss_deblur
  task.kernel_sigma=3.0``);
- ``cells``: ``{"<row>/<column>": overrides}`` for values a paper tuned per cell;
- ``params``: ordinary Hydra sweep parameters (``{key: "a,b,c"}``), crossed with the rest;
- ``reference``: ``{file: reference/<x>.csv, dataset: <name>}``, the paper's own numbers for ``make_table``.

Each job's overrides are, later winning: ``params``, the column, the row, the cell, then the command line (so
``model=tiny`` on the command line replaces every row's model). A job whose config-group choice does not exist in
this checkout (``solver=dps`` before ``conf/solver/dps.yaml`` is merged) is skipped with a one-line notice, not an
error. Every job runs in a fixed folder ``<sweep dir>/<task>/<solver>/<settings>[/shard-<i>-of-<n>]``, where
``<settings>`` are its other overrides (``default`` when none), so a relaunched sweep finds and resumes its folders.
The sweep writes ``<sweep dir>/sweep.json`` (rows, columns, every job and its folder, the cost estimate), which
``scripts/make_table.py`` reads to lay the table out as the paper does, and prints the cost before any job starts.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from treg_exp.experiment import cost as costs
from treg_exp.tracking.files import write_json

log = logging.getLogger(__name__)

SWEEP_FILE = "sweep.json"
#: override prefixes that do not change what is computed for an image (where it runs, which part of the set); they
#: name neither a run's folder nor its table key. ``data.limit`` only takes more or fewer of the same images.
NEUTRAL_PREFIXES = (
    "shard.",
    "hydra.",
    "hydra/",
    "paths.",
    "logger",
    "device=",
    "batch_size=",
    "fail_fast=",
    "one_gpu_per_job=",
    "objective=",
    "data.limit=",
)
#: groups a run's folder is already named by
FOLDER_GROUPS = ("task", "solver", "experiment")


def clean(override: str) -> str:
    """An override without Hydra's ``+``/``++``/``~`` prefix."""
    return override.lstrip("+~")


def override_key(override: str) -> str:
    return clean(override).split("=", 1)[0]


def is_neutral(override: str) -> bool:
    return clean(override).startswith(NEUTRAL_PREFIXES)


def settings(overrides: Sequence[str], exclude_keys: Sequence[str] = FOLDER_GROUPS) -> list[str]:
    """The overrides that decide results, other than ``exclude_keys``, sorted: a run's settings."""
    return sorted(clean(o) for o in overrides if not is_neutral(o) and override_key(o) not in exclude_keys)


def safe(text: str) -> str:
    """``text`` as one folder name: ``/``, quotes and spaces replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9._=,+@:-]+", "_", text).strip("_") or "_"


def folder_for(task: str, solver: str, overrides: Sequence[str], shard_index: int, shard_count: int) -> str:
    """``<task>/<solver>/<settings or "default">[/shard-<i>-of-<n>]`` (relative to the sweep dir)."""
    name = ",".join(settings(overrides))
    parts = [safe(task), safe(solver), safe(name) if name else "default"]
    if shard_count > 1:
        parts.append(f"shard-{shard_index}-of-{shard_count}")
    return "/".join(parts)


def named(entries: Any) -> list[tuple[str | None, list[str]]]:
    """``rows``/``columns`` config → ``[(name, [overrides])]``.

    Accepted: a list of one-entry mappings ``[{name: "a=1 b=2"}, ...]`` (the presets' form: a list, so that a preset
    inheriting another replaces its rows instead of adding to them), a mapping, or a list of override strings.
    """
    if not entries:
        return [(None, [])]
    if isinstance(entries, Mapping):
        entries = [{name: value} for name, value in entries.items()]
    result = []
    for entry in entries:
        if isinstance(entry, Mapping):
            result += [(str(name), split_overrides(value)) for name, value in entry.items()]
        else:
            result.append((str(entry), split_overrides(entry)))
    return result


def split_overrides(text: Any) -> list[str]:
    """``"a=1 b='x y'"`` → ``["a=1", "b='x y'"]`` (quotes kept: Hydra's override grammar needs them)."""
    return re.findall(r"""(?:[^\s'"]+|'[^']*'|"[^"]*")+""", str(text or ""))


def merge_overrides(*layers: Sequence[str]) -> list[str]:
    """Overrides of all ``layers``, a later layer's value replacing an earlier one's for the same key."""
    merged: OrderedDict[str, str] = OrderedDict()
    for layer in layers:
        for override in layer:
            key = override_key(override)
            merged.pop(key, None)
            merged[key] = override
    return list(merged.values())


@dataclass
class PlannedJob:
    """One job of a sweep: its overrides (without the folder), table position, folder and cost."""

    overrides: list[str]
    row: str | None = None
    column: str | None = None
    folder: str | None = None
    status: str = "run"
    reason: str = ""
    task: str | None = None
    solver: str | None = None
    model: str | None = None
    images: int | None = None
    cost: costs.JobCost | None = None
    config: Any = None  # the composed config (with its hydra node)

    def launch_overrides(self) -> list[str]:
        """The overrides the launcher gets: the job's own and its fixed folder."""
        return [*self.overrides, f"hydra.sweep.subdir='{self.folder}'"]


@dataclass
class SweepPlan:
    jobs: list[PlannedJob] = field(default_factory=list)
    rows: list[str] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)

    @property
    def to_run(self) -> list[PlannedJob]:
        return [j for j in self.jobs if j.status == "run"]


def combinations(arguments: Sequence[str], params: Mapping[str, str] | None, config_loader: Any) -> list[list[str]]:
    """The cartesian product of ``params`` and the command line's sweeps, as Hydra's basic sweeper builds it."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params_conf = [f"{key}={value}" for key, value in (params or {}).items()]
    parser = OverridesParser.create(config_loader=config_loader)
    parsed = parser.parse_overrides([*params_conf, *arguments])
    return BasicSweeper.split_arguments(parsed, None)[0]


def missing_choice(overrides: Sequence[str], config_loader: Any) -> str | None:
    """The first ``group=option`` override whose option is not in this checkout (``None`` if all exist)."""
    for override in overrides:
        if "=" not in override or override.startswith(("hydra", "~", "+")):
            continue
        key, value = override.split("=", 1)
        if "." in key or "," in value or value in ("null", ""):
            continue
        options = config_loader.get_group_options(key)
        if options and value not in options:
            return f"{key}={value}: conf/{key}/{value}.yaml is not in this checkout"
    return None


def dataset_size(data_cfg: Any) -> int | None:
    """How many images ``data_cfg`` holds (from its list file when the images are not staged); ``None``: unknown."""
    from hydra.utils import instantiate

    try:
        dataset = instantiate(data_cfg)
    except Exception:  # noqa: BLE001 - the job itself will report a bad data config
        return None
    planned = getattr(dataset, "planned_size", None)
    try:
        return int(planned()) if callable(planned) else len(dataset)
    except Exception:  # noqa: BLE001 - not staged here: unknown
        return None


def plan_sweep(
    master_config: Any,
    config_loader: Any,
    arguments: Sequence[str],
    params: Mapping[str, str] | None = None,
    rows: Any = None,
    columns: Any = None,
    cells: Mapping[str, str] | None = None,
    results: Mapping[str, Any] | None = None,
) -> SweepPlan:
    """Expand a sweep into jobs: skip those whose config-group choices are missing, compose the others for their
    folder and cost (a composition error of a job that exists is raised, as Hydra's own sweeper would)."""
    from omegaconf import OmegaConf

    results = costs.load_results() if results is None else results
    row_list, column_list = named(rows), named(columns)
    combos = combinations(arguments, params, config_loader)
    cli_keys = {override_key(a) for a in arguments}
    plan = SweepPlan(rows=[n for n, _ in row_list if n], columns=[n for n, _ in column_list if n])
    for column, column_overrides in column_list:
        for row, row_overrides in row_list:
            cell = split_overrides((cells or {}).get(f"{row}/{column}", ""))
            for combo in combos:
                # the preset's params, then the column, the row, the cell, then the command line (its sweeps too)
                overrides = merge_overrides(
                    [o for o in combo if override_key(o) not in cli_keys],
                    column_overrides,
                    row_overrides,
                    cell,
                    [o for o in combo if override_key(o) in cli_keys],
                )
                job = PlannedJob(overrides=overrides, row=row, column=column)
                reason = missing_choice(overrides, config_loader)
                if reason is not None:
                    job.status, job.reason = "skipped", reason
                    job.task = next((o.split("=", 1)[1] for o in overrides if override_key(o) == "task"), None)
                    plan.jobs.append(job)
                    continue
                cfg = config_loader.load_sweep_config(master_config, list(overrides))
                job.config = cfg
                choices = OmegaConf.to_container(cfg.hydra.runtime.choices)
                job.task, job.solver, job.model = (str(choices.get(k)) for k in ("task", "solver", "model"))
                shard_index, shard_count = int(cfg.shard.index), int(cfg.shard.count)
                job.folder = folder_for(job.task, job.solver, overrides, shard_index, shard_count)
                total = dataset_size(cfg.data)
                job.images = None if total is None else costs.shard_size(total, shard_index, shard_count)
                job.cost = costs.job_cost(cfg, job.images, choices, results)
                plan.jobs.append(job)
    folders = [j.folder for j in plan.to_run]
    duplicates = sorted({f for f in folders if folders.count(f) > 1})
    if duplicates:
        from treg_exp.common.errors import UserError

        raise UserError(f"two jobs of this sweep would share the folder {duplicates[0]}; give them different settings")
    return plan


def plan_lines(
    plan: SweepPlan, sweep_dir: Path, results: Mapping[str, Any] | None = None, at_once: int | None = None
) -> list[str]:
    """What the sweep prints before it starts: skipped rows, one line per job, the total cost (with ``at_once``,
    the jobs the launcher runs at the same time, and the wall time that gives)."""
    run, skipped = plan.to_run, [j for j in plan.jobs if j.status == "skipped"]
    lines = [f"sweep: {len(plan.jobs)} jobs, {len(run)} to run, {len(skipped)} skipped → {sweep_dir}"]
    seen = set()
    for job in skipped:
        notice = f"skipped: {job.row or ''}{' / ' + job.column if job.column else ''} ({job.reason})".replace(
            "skipped:  (", "skipped: ("
        )
        key = (job.row, job.reason)
        if key not in seen:  # one line per missing row, not per cell
            seen.add(key)
            lines.append(notice.replace(f" / {job.column}", "") if job.row else notice)
    for job in run:
        images = "?" if job.images is None else str(job.images)
        passes = costs.describe_passes(job.cost.passes if job.cost else None)
        lines.append(f"  {job.folder}: {images} images × {passes}")
    lines += costs.summarise([j.cost for j in run if j.cost is not None], results, at_once)
    return lines


def write_sweep_file(
    sweep_dir: Path, plan: SweepPlan, experiment: str | None, reference: Any, title: str | None, lines: list[str]
) -> Path:
    """``<sweep dir>/sweep.json``: the table layout and every job, for ``make_table`` and the report."""

    def job_entry(job: PlannedJob) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "row": job.row,
            "column": job.column,
            "status": job.status,
            "overrides": job.overrides,
        }
        if job.status == "skipped":
            entry.update({"reason": job.reason, "task": job.task})
        else:
            entry.update({"folder": job.folder, "task": job.task, "solver": job.solver, "model": job.model})
            entry["images"] = job.images
            if job.cost is not None and job.cost.passes is not None:
                entry["passes_per_image"] = {k: getattr(job.cost.passes, k) for k in costs.COUNT_NAMES}
                entry["hours"] = job.cost.hours
        return entry

    data = {
        "experiment": experiment,
        "title": title,
        "reference": reference,
        "rows": plan.rows,
        "columns": plan.columns,
        "jobs": [job_entry(j) for j in plan.jobs],
        "cost": lines,
    }
    path = Path(sweep_dir) / SWEEP_FILE
    write_json(path, data)
    return path


def pin_gpu_of_job(enabled: bool, job_num: int | None) -> str | None:
    """With ``one_gpu_per_job=true``, keep job ``n``'s process on GPU ``n mod len(visible)`` of the GPUs
    ``CUDA_VISIBLE_DEVICES`` lists (the local launcher sets it to ``0..gpus_per_node-1`` for every job), before
    anything initialises CUDA. Returns the device it kept, or ``None`` when nothing changed."""
    import os

    if not enabled or job_num is None:
        return None
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if not visible:
        from treg_exp.common.errors import UserError

        raise UserError(
            "one_gpu_per_job=true needs CUDA_VISIBLE_DEVICES listing the node's GPUs "
            "(hydra/launcher=local sets it from hydra.launcher.gpus_per_node)"
        )
    chosen = visible[int(job_num) % len(visible)]
    os.environ["CUDA_VISIBLE_DEVICES"] = chosen
    return chosen
