"""Calibration of every solver against the exact posterior on the Gaussian prior; writes benchmarks/CALIBRATION.md.

    make calibration                              # or: python benchmarks/calibration.py [--images 4 --seeds 4]
    python benchmarks/calibration.py --solvers treg ddim --tasks inpaint_random
    python benchmarks/calibration.py --model gaussian_flow   # the flow twin: benchmarks/CALIBRATION_FLOW.md

For each entry of :data:`SOLVERS` and each task of :data:`TASKS` the run config is composed as
``python run.py model=gaussian solver=<name> task=<task> <task overrides> <entry overrides>`` would compose it (so
``conf/solver_task/<name>_<task>.yaml`` and ``conf/solver_model/<name>_gaussian.yaml`` apply), the solver and the task
operator are instantiated from it, and :func:`treg_exp.reporting.calibration.calibrate` scores the solver on
``--images`` prior draws at 64 px with ``--seeds`` runs each: the MSE over an exact posterior sample's, the spread ratio
(reconstructions' covariance trace over the posterior's) and the squared bias of their mean against the exact
posterior mean over the posterior variance, with ``Aᵀy``'s MSE ratio and squared bias beside them. The prior is the
composed ``model=gaussian`` in float64 with ``pixel_std`` 0.3 (so that clamping to [−1, 1] barely matters, see
:mod:`treg_exp.reporting.calibration`). The last rows are the exact sampler's own numbers (≈1, ≈1, ≈0): the check of the
check. A solver whose config or module is not in this branch gets a skip line, not a crash.

To add a solver, add one line to :data:`SOLVERS`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: the exact priors calibrated: the ε prior and its rectified-flow twin, each with its own table
OUTPUTS = {
    "gaussian": ROOT / "benchmarks" / "CALIBRATION.md",
    "gaussian_flow": ROOT / "benchmarks" / "CALIBRATION_FLOW.md",
}

#: (solver config name, extra overrides): one line per solver row. ``conf/solver_model/<name>_gaussian.yaml`` holds
#: the settings that suit this prior (e.g. TReg: AN off, null prompt ""), so most entries need no overrides.
SOLVERS: list[tuple[str, list[str]]] = [
    ("posterior_mean", []),
    ("posterior_sample", []),
    ("treg", []),
    ("ldps", []),
    ("gml_dps", []),
    ("psld", []),
    ("ldir", []),
    ("dps", []),
    ("p2l", []),
    ("dds", []),
    ("diffpir", []),
    ("red", []),  # the Gaussian settings: ADMM, σ annealed 0.5 → 0.03
    ("red", ["solver.method=gd", "solver.sigma_schedule=fixed", "solver.sigma=0.05"]),
    ("resample", ["solver.num_steps=100"]),  # 500 official steps cost minutes per image even here
    ("latino", []),  # the exact consistency map: Gaussian prior's PF-ODE end point
    ("flowdps", []),  # rectified-flow priors only: a row of CALIBRATION_FLOW.md
    ("daps", []),  # the DAPS-100 grid, exact likelihood (conf/solver_model/daps_gaussian.yaml)
    ("ddim", []),
]

#: task name → overrides of conf/task/<name>.yaml. Gaussian deblurring with a 15×15 σ = 2 kernel and circular
#: boundary (the oracles' circulant preconditioner is then exact, so the references are quick and exact); random
#: inpainting as configured (30–70 % of the pixels dropped, drawn per image).
TASKS: dict[str, list[str]] = {
    "gauss_deblur": ["task.kernel_size=15", "task.kernel_sigma=2.0", "task.padding=circular"],
    "inpaint_random": [],
}

RESOLUTION = 64


@dataclass
class Row:
    solver: str
    overrides: list[str]
    task: str
    numbers: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    skipped: str = ""


def compose(overrides: list[str]):
    """The run config for ``overrides`` (as ``python run.py <overrides>`` would compose it)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose("config", overrides=overrides)
    OmegaConf.set_struct(cfg, False)
    cfg.paths.run_dir = "unused"
    return cfg


def make_problem(task: str, images: int, seeds: int, model: str = "gaussian"):
    """The task's measurements of ``images`` prior draws with the exact posterior references."""
    from hydra.utils import instantiate

    from treg_exp.reporting.calibration import CALIBRATION_PIXEL_STD, make_problem

    cfg = compose([f"model={model}", f"task={task}", *TASKS[task]])
    cfg.model.pixel_std = CALIBRATION_PIXEL_STD
    cfg.model.dtype = "float64"
    prior = instantiate(cfg.model).load("cpu")
    operator = instantiate(cfg.task)
    return make_problem(operator, num_images=images, resolution=RESOLUTION, seeds=seeds, prior=prior)


def instantiate_solver(name: str, overrides: list[str], task: str, model: str = "gaussian"):
    """``(solver, None)`` or ``(None, reason)`` when the solver's config or module is not in this branch."""
    from hydra.utils import instantiate

    if not (ROOT / "conf" / "solver" / f"{name}.yaml").exists():
        return None, f"no conf/solver/{name}.yaml in this branch"
    cfg = compose([f"model={model}", f"solver={name}", f"task={task}", *TASKS[task], *overrides])
    try:
        return instantiate(cfg.solver), ""
    except Exception as error:  # Hydra wraps the ImportError of a missing module
        cause: BaseException | None = error
        while cause is not None and not isinstance(cause, ImportError):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        return None, f"{cfg.solver._target_} cannot be imported ({cause})"


def run(
    solver_names: list[str] | None, tasks: list[str], images: int, seeds: int, model: str = "gaussian"
) -> list[Row]:
    from treg_exp.common.errors import UserError
    from treg_exp.reporting.calibration import calibrate, exact_sampler_check

    rows: list[Row] = []
    entries = [(n, o) for n, o in SOLVERS if solver_names is None or n in solver_names]
    for task in tasks:
        start = time.perf_counter()
        problem = make_problem(task, images, seeds, model)
        print(f"{task}: references in {time.perf_counter() - start:.1f} s", flush=True)
        for name, overrides in entries:
            row = Row(name, overrides, task)
            solver, row.skipped = instantiate_solver(name, overrides, task, model)
            if solver is not None:
                try:  # a method not defined on this prior (a flow prior) says so in one line
                    solver.check_prior(problem.prior)
                except UserError as error:
                    solver, row.skipped = None, str(error)
            if solver is None:
                print(f"  skip {name}: {row.skipped}", flush=True)
                rows.append(row)
                continue
            start = time.perf_counter()
            row.numbers = calibrate(solver, problem).as_dict()
            row.seconds = time.perf_counter() - start
            print(f"  {name} {' '.join(overrides)}: {_fmt(row.numbers)} ({row.seconds:.1f} s)", flush=True)
            rows.append(row)
        start = time.perf_counter()
        check = Row("exact sampler check", [], task, exact_sampler_check(problem).as_dict())
        check.seconds = time.perf_counter() - start
        print(f"  exact sampler check: {_fmt(check.numbers)}", flush=True)
        rows.append(check)
    return rows


def _fmt(numbers: dict[str, float]) -> str:
    return ", ".join(f"{k} {numbers[k]:.3f}" for k in ("mse_ratio", "spread_ratio", "bias2"))


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = f", load average {os.getloadavg()[0]:.1f} at the start" if hasattr(os, "getloadavg") else ""
    return f"{os.cpu_count()} CPU cores ({cpu}){load}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)"


def write(
    rows: list[Row], argv: list[str], images: int, seeds: int, total: float, host: str, model: str = "gaussian"
) -> None:
    output = OUTPUTS[model]
    flow = model == "gaussian_flow"
    date = datetime.date.today().isoformat()
    command = "python benchmarks/calibration.py" + ("" if not argv else " " + " ".join(argv))
    lines = [
        "# Calibration against the exact posterior (Gaussian prior"
        + (", rectified-flow twin: `model=gaussian_flow`, exact velocity, SD3's shift 3)" if flow else ")"),
        "",
        f"Written by `{command}` (`make calibration`) on {date}: {host}; {total:.0f} s in all.",
        "",
        f"{images} images drawn from the exact Gaussian prior (`model={model}`, float64, `pixel_std` 0.3) at "
        f"{RESOLUTION} px, each measured once (σ_y = 0.01) and reconstructed with {seeds} seeds. Tasks: "
        "`gauss_deblur` with a 15×15 σ = 2 kernel and **circular** boundary, `inpaint_random` as in "
        "`conf/task/inpaint_random.yaml` (30–70 % of pixels dropped). Each solver runs with its config composed as "
        f"`python run.py model={model} solver=<name> task=<task>` would (its "
        f"`conf/solver_model/<name>_{model}.yaml` "
        'applies: for TReg, adaptive negation off, null prompt "", ω = 1).'
        + (
            " The posterior is the ε prior's; only the path differs (x_σ = (1−σ)x0 + σε, the solvers' steps from "
            "`solvers.core.split_prediction` / `sampler_step`). Methods not defined for flow priors say why."
            if flow
            else ""
        ),
        "",
        "- **mse_ratio**: Σ‖x̂ − x‖² over an exact posterior sample's Σ‖s − x‖²: 1 for an exact sampler, about 0.5 for "
        "the posterior mean.",
        "- **spread_ratio**: the trace of the reconstructions' covariance (over seeds) over the posterior's: 1 for an "
        "exact sampler, 0 for a deterministic method.",
        "- **bias2**: ‖mean of the reconstructions − exact posterior mean‖² (finite-seed part removed) over the "
        "posterior variance: 0 for an exact sampler or the posterior mean.",
        "- **Aᵀy**: the same MSE ratio and squared bias of the naive reconstruction `Aᵀy` (clamped). An exact "
        "sample's MSE can exceed `Aᵀy`'s on this smooth prior; its bias cannot.",
        "- The *exact sampler check* rows score fresh exact posterior samples (other seeds) like a solver: they should "
        "read ≈ 1, ≈ 1, ≈ 0, and show the noise of these numbers at this many images and seeds.",
        "",
        "| solver | task | mse_ratio | spread_ratio | bias2 | Aᵀy mse_ratio | Aᵀy bias2 | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        label = row.solver + ("" if not row.overrides else " " + " ".join(row.overrides))
        if row.skipped:
            lines.append(f"| {label} | {row.task} | skipped: {row.skipped} | | | | | |")
            continue
        n = row.numbers
        lines.append(
            f"| {label} | {row.task} | {n['mse_ratio']:.3f} | {n['spread_ratio']:.3f} | {n['bias2']:.3f} | "
            f"{n['adjoint_mse_ratio']:.3f} | {n['adjoint_bias2']:.3f} | {row.seconds:.1f} |"
        )
    output.write_text("\n".join(lines) + "\n")
    payload = {
        "date": date,
        "machine": host,
        "command": command,
        "images": images,
        "seeds": seeds,
        "resolution": RESOLUTION,
        "tasks": TASKS,
        "rows": [
            {
                "solver": r.solver,
                "overrides": r.overrides,
                "task": r.task,
                **r.numbers,
                "seconds": r.seconds,
                **({"skipped": r.skipped} if r.skipped else {}),
            }
            for r in rows
        ],
    }
    output.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {output.relative_to(ROOT)} and {output.with_suffix('.json').relative_to(ROOT)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4, help="prior draws per task (default 4)")
    parser.add_argument("--seeds", type=int, default=4, help="reconstructions per measurement, ≥ 2 (default 4)")
    parser.add_argument("--solvers", nargs="*", default=None, help="a subset of SOLVERS by name (default: all)")
    parser.add_argument("--tasks", nargs="*", default=list(TASKS), choices=list(TASKS))
    parser.add_argument(
        "--model", default="gaussian", choices=list(OUTPUTS), help="the exact prior: gaussian or its flow twin"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: these are many small FFTs and CG steps, where on a shared 2-core "
        "CPU 2 threads ran the Gaussian prior's ε 10× slower than 1)",
    )
    args = parser.parse_args()
    if args.seeds < 2:
        parser.error("--seeds must be at least 2 (the spread needs two reconstructions)")
    torch.set_num_threads(args.threads)
    start, host = time.perf_counter(), machine()
    rows = run(args.solvers, args.tasks, args.images, args.seeds, args.model)
    write(rows, sys.argv[1:], args.images, args.seeds, time.perf_counter() - start, host, args.model)


if __name__ == "__main__":
    main()
