"""``treg-exp plan <overrides>``: what ``python run.py -m <overrides>`` would run and cost, without running anything.

It composes the config as Hydra would (presets' table rows and columns, command-line sweeps), expands the jobs as
the table sweeper does (:func:`treg_exp.experiment.sweep.plan_sweep`), and prints one line per job, the total
images and network evaluations, the hours (days) on every benchmarked machine and, as labelled FLOP estimates, on
A100 and H100 GPUs (:mod:`treg_exp.experiment.cost`), then what is missing here (data, weights) once, and the
folder the sweep would write. Nothing is written.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def plan_lines(overrides: Sequence[str]) -> list[str]:
    """The plan of ``overrides`` as printed lines (raises the composition's error on a bad override)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import open_dict

    from treg_exp.experiment import sweep

    overrides = list(overrides)
    parsed = OverridesParser.create().parse_overrides(overrides)
    fixed = [text for text, o in zip(overrides, parsed, strict=True) if not o.is_sweep_override()]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=fixed, return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.overrides.task = overrides
        loader = GlobalHydra.instance().config_loader()
        spec = cfg.hydra.sweeper
        plan = sweep.plan_sweep(cfg, loader, overrides, spec.params, spec.rows, spec.columns, spec.cells)
        sweep_dir = sweep.sweep_dir_of(cfg)
    lines = sweep.plan_lines(plan, sweep_dir)
    lines.append(f"nothing was run; to launch: python run.py -m {shlex.join(overrides)}".rstrip())
    return lines


def main(argv: Sequence[str]) -> int:
    """Print the plan of the overrides ``argv``; 0, or 2 with one line for a bad override."""
    from treg_exp.common.errors import find_user_error

    try:
        lines = plan_lines(argv)
    except Exception as error:  # noqa: BLE001 - Hydra's composition errors: one line, as run.py's
        user_error = find_user_error(error)
        message = str(user_error if user_error is not None else error).strip().splitlines()
        print(f"error: {message[0] if message else type(error).__name__}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0
