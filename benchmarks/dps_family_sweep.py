"""Step sizes of the DPS family (ldps, gml_dps, psld, ldir, dps) on the exact Gaussian prior, against its posterior.

    python benchmarks/dps_family_sweep.py                          # each solver as model=gaussian composes it
    python benchmarks/dps_family_sweep.py --sweep --images 2 --seeds 3   # the sweep behind conf/solver_model/*_gaussian

Each solver's config is composed as ``python run.py model=gaussian solver=<name> task=<task>`` would compose it (so
``conf/solver_model/<name>_gaussian.yaml`` applies), with ``solver.step_size`` overridden by each value of the sweep
(``--sweep``), and scored by :func:`treg_exp.reporting.calibration.calibrate` on prior draws at ``--resolution`` px with
the calibration benchmark's tasks (``gauss_deblur`` 15×15 σ = 2 circular, ``inpaint_random``). Prints one line per run:
the MSE over an exact posterior sample's, the spread ratio, the squared bias over the posterior variance, and Aᵀy's.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TASKS = {
    "gauss_deblur": ["task.kernel_size=15", "task.kernel_sigma=2.0", "task.padding=circular"],
    "inpaint_random": [],
}
#: the step sizes swept (the composed value is the chosen one)
SWEEP = {
    "ldps": [2.0, 4.0, 8.0, 16.0],
    "gml_dps": [2.0, 4.0, 8.0],
    "psld": [2.0, 4.0, 8.0],
    "ldir": [0.01, 0.03, 0.05, 0.1],
    "dps": [2.0, 4.0, 8.0, 16.0],
}


def compose(overrides: list[str]):
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


def main() -> None:
    from hydra.utils import instantiate

    from treg_exp.reporting.calibration import CALIBRATION_PIXEL_STD, calibrate, make_problem

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--solvers", nargs="*", default=list(SWEEP))
    parser.add_argument("--tasks", nargs="*", default=list(TASKS))
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--sweep", action="store_true", help="run every step size of SWEEP, not only the config's")
    args = parser.parse_args()

    for task in args.tasks:
        cfg = compose(["model=gaussian", f"task={task}", *TASKS[task]])
        cfg.model.pixel_std, cfg.model.dtype = CALIBRATION_PIXEL_STD, "float64"
        prior = instantiate(cfg.model).load("cpu")
        problem = make_problem(
            instantiate(cfg.task), num_images=args.images, resolution=args.resolution, seeds=args.seeds, prior=prior
        )
        for name in args.solvers:
            base = compose(["model=gaussian", f"solver={name}", f"task={task}", *TASKS[task]])
            values = SWEEP[name] if args.sweep else [base.solver.step_size]
            for value in values:
                base.solver.step_size = value
                start = time.perf_counter()
                n = calibrate(instantiate(base.solver), problem)
                print(
                    f"{name:8s} {task:15s} step_size={value:<6g} mse_ratio {n.mse_ratio:.3f}  spread_ratio "
                    f"{n.spread_ratio:.3f}  bias2 {n.bias2:.3f}  | Aᵀy mse_ratio {n.adjoint_mse_ratio:.3f} "
                    f"bias2 {n.adjoint_bias2:.3f}  ({time.perf_counter() - start:.0f} s)",
                    flush=True,
                )
    print(f"{args.images} images × {args.seeds} seeds at {args.resolution} px; torch {torch.__version__}")


if __name__ == "__main__":
    main()
