"""Score a finished run again from its files, ``treg-exp score RUN_DIR`` or ``python -m treg_exp.reporting.score``.

Reads ``config.yaml`` (the run's resolved config), ``gt/<id>.png``, ``recon/<id>.png`` and ``measurement/<id>.pt``
(``y``, the operator's per-image ``params``, the ``prompt``), rebuilds each image's operator
(``instantiate(cfg.task).draw(...)`` then ``.with_params(saved)``), and computes every metric of ``cfg.metrics``
— or of ``--metrics NAME`` (``conf/metrics/NAME.yaml``), under ``--protocol`` — per image and over the set.
Several run directories (the shards of one run) are scored as one set.

Writes ``OUT/metrics.csv`` (one row per image) and ``OUT/summary.json`` (``metrics``: mean/std/n of each column,
``dataset_metrics``, ``protocol``, ``protocol_departures``), with ``OUT = RUN_DIR/score`` unless ``--out``, and
``RUN_DIR/comparison.png`` when the run has none.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from treg_exp.common import seeding
from treg_exp.common.devices import resolve_device
from treg_exp.common.errors import UserError
from treg_exp.metrics.base import summary_stats
from treg_exp.models.weights import stage_weights

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def load_png(path: Path) -> torch.Tensor:
    """An 8-bit RGB PNG → ``[3, H, W]`` float32 in [−1, 1] (``level/127.5 − 1``)."""
    array = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    return torch.from_numpy(array / 127.5 - 1.0).permute(2, 0, 1).contiguous()


def metrics_config(name: str) -> Any:
    """The composed ``conf/metrics/<name>.yaml`` (defaults lists included)."""
    from hydra import compose, initialize_config_dir

    if not (CONF_DIR / "metrics" / f"{name}.yaml").is_file():
        options = sorted(p.stem for p in (CONF_DIR / "metrics").glob("*.yaml"))
        raise UserError(f"--metrics {name} is not one of {', '.join(options)}")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(overrides=[f"+metrics={name}"]).metrics


def _merged_folders(run_dirs: Sequence[Path], tmp: Path) -> tuple[Path, Path]:
    """``recon/`` and ``gt/`` of one run, or symlink folders holding every shard's ``<id>.png`` files."""
    if len(run_dirs) == 1:
        return run_dirs[0] / "recon", run_dirs[0] / "gt"
    for folder in ("recon", "gt"):
        (tmp / folder).mkdir(parents=True)
        for run_dir in run_dirs:
            for path in sorted((run_dir / folder).glob("*.png")):
                link = tmp / folder / path.name
                if not link.exists():
                    os.symlink(path.resolve(), link)
    return tmp / "recon", tmp / "gt"


def config_damage(run_dir: Path) -> str | None:
    """What is wrong with ``run_dir/config.yaml`` (missing, unreadable, not a mapping), or ``None``."""
    from omegaconf import OmegaConf

    try:
        config = OmegaConf.load(run_dir / "config.yaml")
    except FileNotFoundError:
        return "config.yaml is missing"
    except Exception as error:  # noqa: BLE001 - YAML, decoding and OS errors all mean the same here
        return f"config.yaml is unreadable ({type(error).__name__})"
    return None if OmegaConf.is_dict(config) else "config.yaml holds no config"


def unscorable(run_dir: Path) -> str | None:
    """What keeps ``run_dir`` from being scored (no ``gt/``; ``config.yaml`` missing, unreadable or not a
    mapping), or ``None``."""
    if not (run_dir / "gt").is_dir():
        return "gt/ is missing (not a run directory, or no image finished)"
    return config_damage(run_dir)


def score(
    run_dirs: Sequence[Path | str],
    metrics: str | None = None,
    protocol: str | None = None,
    weights: str | None = None,
    device: str = "auto",
    out: Path | str | None = None,
    grid: bool = True,
) -> dict[str, Any]:
    """Recompute the metrics of the finished run(s) ``run_dirs`` (see the module docstring); returns the summary."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from treg_exp.metrics.base import MetricContext
    from treg_exp.tracking.comparison import write_comparison
    from treg_exp.tracking.files import write_csv, write_json

    given = [Path(d) for d in run_dirs]
    if not given:
        raise UserError("score needs at least one run directory")
    problems = {d: unscorable(d) for d in given}
    dirs = [d for d in given if problems[d] is None]
    if not dirs:
        many = f"none of {len(given)} is readable; the first: " if len(given) > 1 else ""
        raise UserError(f"{many}{given[0]} is not a finished run directory ({problems[given[0]]})")
    for d, problem in problems.items():
        if problem is not None:
            print(f"warning: {d}: {problem}; left out", file=sys.stderr)
    cfg = OmegaConf.load(dirs[0] / "config.yaml")
    metrics_cfg = metrics_config(metrics) if metrics else cfg.metrics
    if protocol is not None:
        metrics_cfg = OmegaConf.merge(metrics_cfg, {"protocol": protocol})
    stage_weights(weights if weights is not None else OmegaConf.select(cfg, "paths.weights"))
    suite = instantiate(metrics_cfg)
    torch_device = resolve_device(device)
    suite.prepare(torch_device)  # missing weights: one line before any image is read
    operator = instantiate(cfg.task) if "task" in cfg else None
    seed = int(OmegaConf.select(cfg, "seed", default=0))

    rows: list[dict[str, Any]] = []
    for run_dir in dirs:
        for gt_path in sorted((run_dir / "gt").glob("*.png")):
            image_id = gt_path.stem
            recon_path = run_dir / "recon" / f"{image_id}.png"
            saved_path = run_dir / "measurement" / f"{image_id}.pt"
            if not recon_path.is_file() or not saved_path.is_file():
                continue  # a failed or unfinished image
            try:
                gt = load_png(gt_path)[None].to(torch_device)
                recon = load_png(recon_path)[None].to(torch_device)
                saved = torch.load(saved_path, map_location="cpu", weights_only=False)
            except Exception as error:  # noqa: BLE001 - PIL, zip and pickle errors of a file cut short
                print(
                    f"warning: {run_dir}: image {image_id} unreadable ({type(error).__name__}); left out",
                    file=sys.stderr,
                )
                continue
            y = saved["y"][None].to(torch_device)
            image_operator = operator
            if operator is not None:
                generators = seeding.batch_generators(seed, [image_id], seeding.MEASUREMENT)
                image_operator = operator.draw(generators, gt.shape)
                params = {k: v[None] for k, v in saved.get("params", {}).items()}
                if params:
                    image_operator = image_operator.with_params(params)
                image_operator = image_operator.to(torch_device)
            prompt = str(saved.get("prompt", ""))
            values = suite.per_image(recon, gt, MetricContext(y=y, operator=image_operator, prompts=[prompt]))
            row = {"id": image_id, "prompt": prompt}
            row.update({k: float(v.reshape(-1)[0]) for k, v in values.items()})
            rows.append(row)
    if not rows:
        raise UserError(f"{', '.join(map(str, dirs))} holds no finished image to score")

    columns = [k for k in rows[0] if k not in ("id", "prompt")]
    summary: dict[str, Any] = {
        "counts": {"images": len(rows)},
        "metrics": {k: summary_stats([r[k] for r in rows if k in r]) for k in columns},
        **suite.describe(),
        "run_dirs": [str(d) for d in dirs],
    }
    if suite.dataset:
        with tempfile.TemporaryDirectory() as tmp:
            recon_dir, gt_dir = _merged_folders(dirs, Path(tmp))
            summary["dataset_metrics"] = suite.per_dataset(recon_dir, gt_dir)
    out_dir = Path(out) if out is not None else dirs[0] / "score"
    write_csv(out_dir / "metrics.csv", rows, ("id", "prompt"))
    write_json(out_dir / "summary.json", summary)
    if grid and not (dirs[0] / "comparison.png").is_file():
        write_comparison(dirs[0])
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """One line per column: ``name  mean ± std (n)``, then the dataset metrics."""
    lines = [f"{k:>16}  {v['mean']:.4f} ± {v['std']:.4f}  (n={v['n']})" for k, v in summary["metrics"].items()]
    lines += [f"{k:>16}  {v:.4f}" for k, v in summary.get("dataset_metrics", {}).items()]
    lines.append(f"{'protocol':>16}  {summary['protocol']}")
    return "\n".join(lines)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="treg-exp score", description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, help="finished run directories (shards of one run)")
    parser.add_argument("--metrics", help="conf/metrics/<NAME>.yaml instead of the run's own metrics")
    parser.add_argument("--protocol", choices=["standard", "treg"], help="override metrics.protocol")
    parser.add_argument(
        "--weights", help="a folder staged by scripts/fetch_weights.py (default: the run's paths.weights)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 …")
    parser.add_argument("--out", type=Path, help="output folder (default RUN_DIR/score)")
    parser.add_argument("--no-grid", action="store_true", help="do not draw RUN_DIR/comparison.png")
    return parser


def run_from_args(args: argparse.Namespace) -> int:
    try:
        summary = score(
            args.run_dirs, args.metrics, args.protocol, args.weights, args.device, args.out, grid=not args.no_grid
        )
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m treg_exp.reporting.score RUN_DIR [...]``."""
    return run_from_args(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
