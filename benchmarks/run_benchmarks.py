"""Speed, memory and network-evaluation counts; writes benchmarks/RESULTS.md.

    python benchmarks/run_benchmarks.py            # everything (about 10 min on a 2-core CPU)
    python benchmarks/run_benchmarks.py --skip-full-size

Three parts:
1. **Unit costs of the full-size SD 1.5 architecture** (``model=sd15_random``: the real shapes, random weights) at
   512 px: one UNet call of 1 and 2 rows (a CFG pair), a VAE decode, a VAE encode, a CLIP ViT-L/14 image pass,
   in the networks' dtype (``--dtype``, bfloat16 by default on CPU, float16 on CUDA), plus peak memory.
2. **Operators at 512 px**: ``A``, ``Aᵀ`` and TReg's CG solve (5 iterations) for each task.
3. **Solvers**: each solver config run through the real runner on one 64-px sample photo with its default
   hyperparameters (``model=tiny``; ``model=gaussian`` for the exact oracles); the network evaluations per image are
   counted by the prior, and are the same with the full-size model, so *estimated full-size seconds per image* =
   Σ evaluations × part 1's unit costs (network time only; CG, Adam and I/O are extra, part 2 gives their scale).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "RESULTS.md"
TASKS = ["gauss_deblur", "motion_deblur", "sr4", "sr8", "sr16", "inpaint_box", "inpaint_random", "inpaint_freeform"]
#: (name, overrides) of the solver runs in part 3
SOLVER_RUNS = [
    ("treg (defaults)", ["model=tiny", "solver=treg"]),
    ("treg cfg 0, no AN", ["model=tiny", "solver=treg", "solver.cfg_scale=0", "solver.adaptive_negation=false"]),
    ("treg + DPS", ["model=tiny", "solver=treg", "solver.use_dps=true"]),
    ("ddim", ["model=tiny", "solver=ddim"]),
    ("posterior_mean", ["model=gaussian", "solver=posterior_mean", "task.padding=circular"]),
    ("posterior_sample", ["model=gaussian", "solver=posterior_sample", "task.padding=circular"]),
]


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


def best_time(fn, repeats: int = 2) -> float:
    """Minimum wall time of ``repeats`` calls (after one warm-up call), synchronising CUDA."""
    times = []
    for i in range(repeats + 1):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if i > 0:
            times.append(time.perf_counter() - start)
    return min(times)


def peak_memory_gib() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def full_size_unit_costs(dtype: str, repeats: int) -> dict:
    """Part 1, run in its own process so that its peak memory is its own."""
    from treg_exp.models.tiny import TinyStableDiffusionPrior

    device = "cuda" if torch.cuda.is_available() else "cpu"
    prior = TinyStableDiffusionPrior(architecture="sd15", dtype=dtype).load(device)
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(1, 3, 512, 512, generator=g) * 2 - 1).to(device)
    z = torch.randn(1, 4, 64, 64, generator=g).to(device)
    cond = prior.embed_text(["a photo"])
    costs = {}
    with torch.no_grad():
        costs["unet_1row"] = best_time(lambda: prior.eps(z, 500, cond), repeats)
        costs["unet_2rows"] = best_time(lambda: prior.eps(torch.cat([z, z]), 500, torch.cat([cond, cond])), repeats)
        costs["decode"] = best_time(lambda: prior.decode(z), repeats)
        costs["encode"] = best_time(lambda: prior.encode(x, mode="mean"), repeats)
        costs["clip_image"] = best_time(lambda: prior.embed_image(x), repeats)
    costs["peak_memory_gib"] = peak_memory_gib()
    costs["device"] = device
    costs["dtype"] = dtype
    return costs


def operator_costs(repeats: int) -> list[dict]:
    """Part 2: per-call seconds of A, Aᵀ and a 5-iteration damped CG solve at 512 px, batch 1."""
    from hydra.utils import instantiate

    from treg_exp import seeding

    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    x = torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(0)).to(device) * 2 - 1
    for task, extra in [(t, []) for t in TASKS] + [
        ("gauss_deblur", ["task.impl=direct"]),
        ("gauss_deblur", ["task.impl=svd"]),
        ("sr16", ["task.impl=svd"]),
    ]:
        cfg = compose([f"task={task}", *extra])
        generators = seeding.batch_generators(0, ["x"], seeding.MEASUREMENT)
        op = instantiate(cfg.task).draw(generators, x.shape).to(device)
        y = op(x)
        rows.append(
            {
                "task": " ".join([task, *extra]),
                "forward": best_time(lambda op=op: op(x), repeats),
                "adjoint": best_time(lambda op=op, y=y: op.adjoint(y), repeats),
                "cg5": best_time(lambda op=op, y=y: op.solve_damped(y, x, 1e-4, 5, 0.0), repeats),
            }
        )
    return rows


def solver_runs() -> list[dict]:
    """Part 3: each solver through the real runner on one 64-px photo; seconds and evaluations per image."""
    from treg_exp.app import build_runner

    rows = []
    for name, overrides in SOLVER_RUNS:
        with tempfile.TemporaryDirectory() as run_dir:
            cfg = compose([*overrides, "data.limit=1", "data.resolution=64", "data.prompt=''", "metrics=fast"])
            runner = build_runner(cfg, Path(run_dir))
            runner.progress = False
            runner.run()
            row = json.loads(next((Path(run_dir) / "rows").glob("*.json")).read_text())
        rows.append(
            {"name": name, **{k: v for k, v in row.items() if k == "seconds" or k.endswith(("_rows", "_calls"))}}
        )
    return rows


def write_results(unit: dict | None, operators: list[dict], solvers: list[dict], argv: list[str]) -> None:
    cpu = platform.processor() or platform.machine()
    cuda = f"yes: {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "no"
    lines = [
        "# Benchmarks",
        "",
        f"Written by `{' '.join(['python benchmarks/run_benchmarks.py', *argv])}` on "
        f"{time.strftime('%Y-%m-%d')}: {os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, CUDA {cuda}.",
        "Random weights: the figures are costs, never quality.",
        "",
    ]
    if unit:
        lines += [
            f"## Full-size SD 1.5 architecture at 512 px ({unit['device']}, {unit['dtype']})",
            "",
            "| network pass | seconds |",
            "|---|---|",
            *[f"| {k} | {unit[k]:.3f} |" for k in ("unet_1row", "unet_2rows", "decode", "encode", "clip_image")],
            "",
            f"Peak memory of that process: {unit['peak_memory_gib']:.1f} GiB "
            f"({'CUDA allocated' if unit['device'] == 'cuda' else 'max RSS'}).",
            "",
        ]
    lines += [
        "## Operators at 512 px (batch 1, seconds per call)",
        "",
        "| task | A | Aᵀ | CG, 5 iterations |",
        "|---|---|---|---|",
        *[f"| {r['task']} | {r['forward']:.4f} | {r['adjoint']:.4f} | {r['cg5']:.4f} |" for r in operators],
        "",
        "## Solvers at their defaults (one 64-px photo, gauss_deblur)",
        "",
        "| solver | seconds (small model) | UNet calls | UNet rows | decodes | encodes | CLIP image "
        "| est. full-size s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in solvers:
        estimate = "—"
        if unit and r.get("unet_calls"):
            # every call has 1 row (one branch) or 2 (the CFG pair) per image
            pair_calls = r["unet_rows"] - r["unet_calls"]
            single_calls = r["unet_calls"] - pair_calls
            estimate = (
                pair_calls * unit["unet_2rows"]
                + single_calls * unit["unet_1row"]
                + r.get("decode_rows", 0) * unit["decode"]
                + r.get("encode_rows", 0) * unit["encode"]
                + r.get("clip_image_rows", 0) * unit["clip_image"]
            )
            estimate = f"{estimate:.0f}"
        lines.append(
            f"| {r['name']} | {r['seconds']:.2f} | {r.get('unet_calls', 0):.0f} | {r.get('unet_rows', 0):.0f} | "
            f"{r.get('decode_rows', 0):.0f} | {r.get('encode_rows', 0):.0f} | {r.get('clip_image_rows', 0):.0f} | "
            f"{estimate} |"
        )
    lines += [
        "",
        "Small model: `model=tiny` (toy widths) or `model=gaussian` (exact prior, pixel space, no networks).",
        "Estimated full-size seconds = UNet calls × the per-call cost of their row count + decodes, encodes and CLIP",
        "passes × their unit cost, from the first table: forward passes only (DPS's backward passes through the UNet",
        "and decoder, CG, Adam and I/O come on top).",
    ]
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-full-size", action="store_true", help="skip part 1 (loads 1.3 B random parameters)")
    parser.add_argument("--dtype", default=None, help="network dtype for part 1 (default: bfloat16 CPU, float16 CUDA)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--unit-costs-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    dtype = args.dtype or ("float16" if torch.cuda.is_available() else "bfloat16")
    if args.unit_costs_only:
        print(json.dumps(full_size_unit_costs(dtype, args.repeats)))
        return
    unit = None
    if not args.skip_full_size:
        out = subprocess.run(
            [sys.executable, __file__, "--unit-costs-only", "--dtype", dtype, "--repeats", str(args.repeats)],
            capture_output=True,
            text=True,
            check=True,
        )
        unit = json.loads(out.stdout.strip().splitlines()[-1])
    write_results(unit, operator_costs(args.repeats), solver_runs(), sys.argv[1:])


if __name__ == "__main__":
    main()
