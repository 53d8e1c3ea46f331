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
The sweep dir (:func:`sweep_dir_of`) is the preset's ``hydra.sweep.dir``, ``<it>+<overrides>`` when the command line
changes what the preset computes (a smoke run never writes into the real run's folder), and for a plain multirun
``outputs/sweeps/<its command line's settings>`` (each sweep its own folder). The sweep writes
``<sweep dir>/sweep.json`` (rows, columns, every job and its folder, the cost estimate, the departures from the
preset), keeping an earlier, different sweep's as ``sweep-<time>.json``; ``scripts/make_table.py`` reads it to lay
the table out as the paper does. It prints the cost and what is missing (data, weights) before any job starts, and
the table at the end (``hydra_plugins/treg_exp_sweeper``).
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from treg_exp.experiment import cost as costs
from treg_exp.tracking.files import read_json, write_json

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
    "threads=",
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


#: folder names longer than this keep their start and end with a hash of the whole in place of the middle
MAX_NAME = 120


def settings_name(overrides: Sequence[str], exclude_keys: Sequence[str] = FOLDER_GROUPS) -> str:
    """The settings of ``overrides`` as one folder name (``""`` when none): ``a=1,b=x`` made safe, a long one cut to
    :data:`MAX_NAME` characters with a hash of the whole, so that different settings never share a name."""
    kept = settings(overrides, exclude_keys)
    name = safe(",".join(kept)) if kept else ""
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    keep = (MAX_NAME - len(digest) - 2) // 2
    return f"{name[:keep]}-{digest}-{name[-keep:]}"


def run_folder_name(command_line: Sequence[str]) -> str:
    """A single run's folder below ``<solver>_<task>/``: its command line's settings (``default`` when none), so
    that the same command run again finds its folder and resumes (the ``settings_folder`` resolver of
    ``conf/config.yaml``'s ``hydra.run.dir``)."""
    return settings_name([str(o) for o in command_line], ("task", "solver")) or "default"


def sweep_dir_of(config: Any) -> Path:
    """Where a table sweep (``config``: the multirun's own) writes: ``hydra.sweep.dir`` when the command line sets
    it or another sweeper runs; else a plain multirun's ``<hydra.sweep.dir>/<its settings>`` (each sweep its own
    folder) and a preset's ``<hydra.sweep.dir>`` — or, when the command line changes what is computed
    (``model=tiny solver.num_steps=2``: a smoke run), ``<hydra.sweep.dir>+<those settings>``, never the folder of
    the real run. Applied to a config whose ``hydra.sweep.dir`` is already that folder, it returns it unchanged."""
    from omegaconf import OmegaConf

    base = Path(str(config.hydra.sweep.dir))
    command_line = command_line_of(config)
    hydra_line = [str(o) for o in OmegaConf.select(config, "hydra.overrides.hydra", default=None) or []]
    sweeper = str(OmegaConf.select(config, "hydra.sweeper._target_", default=""))
    if not sweeper.endswith("TableSweeper") or any(override_key(o) == "hydra.sweep.dir" for o in hydra_line):
        return base
    name = settings_name(command_line, ("experiment",))
    if OmegaConf.select(config, "hydra.runtime.choices.experiment", default=None):
        done = not name or base.name.endswith(f"+{name}")  # the sweeper sets hydra.sweep.dir to this folder
        return base if done else base.with_name(f"{base.name}+{name}")
    return base if base.name == (name or "default") else base / (name or "default")


def command_line_of(config: Any) -> list[str]:
    """The command line's overrides of a Hydra config (``hydra.overrides.task``)."""
    from omegaconf import OmegaConf

    return [str(o) for o in OmegaConf.select(config, "hydra.overrides.task", default=None) or []]


def departures_of(config: Any) -> list[str]:
    """The command line's settings that change what a preset computes (``[]`` without a preset): what a table of
    the sweep must say it departs from the preset by (``model=tiny``, ``solver.num_steps=2`` ...)."""
    from omegaconf import OmegaConf

    if not OmegaConf.select(config, "hydra.runtime.choices.experiment", default=None):
        return []
    return settings(command_line_of(config), ("experiment",))


def folder_for(task: str, solver: str, overrides: Sequence[str], shard_index: int, shard_count: int) -> str:
    """``<task>/<solver>/<settings or "default">[/shard-<i>-of-<n>]`` (relative to the sweep dir)."""
    name = settings_name(overrides)
    parts = [safe(task), safe(solver), name or "default"]
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

    def launch_overrides(self, sweep_dir: Path) -> list[str]:
        """The overrides the launcher gets: the job's own, the sweep's folder and the job's fixed folder in it."""
        return [*self.overrides, f"hydra.sweep.dir='{sweep_dir}'", f"hydra.sweep.subdir='{self.folder}'"]


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
        if job.cost is not None and costs.is_toy(job.cost.model):
            continue  # a toy prior: the one summary line says it all
        images = "?" if job.images is None else str(job.images)
        passes = costs.describe_passes(job.cost.passes if job.cost else None)
        lines.append(f"  {job.folder}: {images} images × {passes}")
    lines += costs.summarise([j.cost for j in run if j.cost is not None], results, at_once)
    lines += missing_inputs(run)
    return lines


def missing_inputs(jobs: Sequence[PlannedJob]) -> list[str]:
    """One line per dataset and per weights that the jobs need and this machine lacks (before any job starts)."""
    from omegaconf import OmegaConf

    problems: dict[str, list[PlannedJob]] = {}
    checked: dict[str, str | None] = {}  # a dataset or model shared by many jobs is looked at once
    for job in jobs:
        if job.config is None:
            continue
        for node, check in ((job.config.data, data_problem), (job.config.model, costs.weights_problem)):
            key = f"{check.__name__}:{OmegaConf.to_yaml(node)}"
            if key not in checked:
                checked[key] = check(node)
            if checked[key]:
                problems.setdefault(checked[key], []).append(job)
    return [f"missing ({len(found)} jobs): {problem}" for problem, found in problems.items()]


def data_problem(data_cfg: Any) -> str | None:
    """Why the images of ``data_cfg`` cannot be read here (its one-line error), or ``None``."""
    from hydra.utils import instantiate

    from treg_exp.common.errors import UserError

    try:
        len(instantiate(data_cfg))
    except UserError as error:
        return str(error)
    except Exception:  # noqa: BLE001 - a bad data config is the job's own error to report
        return None
    return None


def write_sweep_file(
    sweep_dir: Path,
    plan: SweepPlan,
    experiment: str | None,
    reference: Any,
    title: str | None,
    lines: list[str],
    departures: Sequence[str] = (),
) -> Path:
    """``<sweep dir>/sweep.json``: the table layout and every job, for ``make_table`` and the report; ``departures``:
    the command line's settings that differ from the preset ``experiment`` (:func:`departures_of`)."""

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
        "departures": list(departures),
        "title": title,
        "reference": reference,
        "rows": plan.rows,
        "columns": plan.columns,
        "jobs": [job_entry(j) for j in plan.jobs],
        "cost": lines,
    }
    path = Path(sweep_dir) / SWEEP_FILE
    earlier = read_json(path) if path.is_file() else None
    if isinstance(earlier, dict) and job_folders(earlier) != job_folders(data):
        kept = path.with_name(f"sweep-{time.strftime('%Y-%m-%d_%H-%M-%S', time.localtime(path.stat().st_mtime))}.json")
        path.replace(kept)
        print(f"note: {path} held another sweep (other jobs); kept as {kept.name} (make_table tabulates each)")
    write_json(path, data)
    return path


def job_folders(sweep: Mapping[str, Any]) -> list[Any]:
    """What makes two sweep records the same sweep: their jobs' folders (or, for skipped jobs, overrides)."""
    return [job.get("folder") or job.get("overrides") for job in sweep.get("jobs", [])]


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
