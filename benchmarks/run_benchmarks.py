"""Speed, memory and network-evaluation counts; writes benchmarks/RESULTS.md and benchmarks/results.json.

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
   Every solver of ``conf/solver/`` is run at its defaults (on ``model=tiny``) besides the named variants.

``benchmarks/results.json`` holds the same figures for programs (``treg_exp.cost`` reads them for the estimate a
run or sweep prints at start). Schema (``"schema": 1``)::

    {"schema": 1,
     "machines": {                       # one entry per machine and device; a run replaces only its own entry
       "<device>:<name>": {              # e.g. "cpu:x86_64 (2 cores)", "cuda:NVIDIA H200"
         "device": "cpu" | "cuda", "name": str, "torch": str, "date": "YYYY-MM-DD", "command": str,
         "networks": {                   # per architecture (treg_exp.cost.architecture maps model names to these)
           "sd15": {"resolution": 512, "dtype": str, "peak_memory_gib": float,
                    "seconds": {"unet_1row": s, "unet_2rows": s, "decode": s, "encode": s, "clip_image": s}}},
         "operators": {"<task [overrides]>": {"forward": s, "adjoint": s, "cg5": s}}}},
     "solvers": {                        # network evaluations per image at the solver's defaults (any machine)
       "<solver>": {"overrides": [...], "num_steps": int | null, "resolution": 64,
                    "counts": {"unet_calls": n, "unet_rows": n, "decode_rows": n, "encode_rows": n,
                               "clip_image_rows": n}, "seconds_small_model": s}}}

A GPU run adds its ``cuda:<name>`` machine beside the CPU one; other architectures (a pixel ADM prior) add their own
``networks`` key with the same five pass names where they apply (``decode``/``encode`` are identity for pixel priors).
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
RESULTS_JSON = ROOT / "benchmarks" / "results.json"
UNIT_KEYS = ("unet_1row", "unet_2rows", "decode", "encode", "clip_image")
TASKS = ["gauss_deblur", "motion_deblur", "sr4", "sr8", "sr16", "inpaint_box", "inpaint_random", "inpaint_freeform"]
#: (name, overrides) of the solver runs in part 3; a name that is a solver's config name is its defaults run
SOLVER_RUNS = [
    ("treg", ["model=tiny", "solver=treg"]),
    ("treg cfg 0, no AN", ["model=tiny", "solver=treg", "solver.cfg_scale=0", "solver.adaptive_negation=false"]),
    ("treg + DPS", ["model=tiny", "solver=treg", "solver.use_dps=true"]),
    ("ddim", ["model=tiny", "solver=ddim"]),
    ("posterior_mean", ["model=gaussian", "solver=posterior_mean", "task.padding=circular"]),
    ("posterior_sample", ["model=gaussian", "solver=posterior_sample", "task.padding=circular"]),
]


def solver_run_list() -> list[tuple[str, list[str]]]:
    """:data:`SOLVER_RUNS` plus every other ``conf/solver/<name>.yaml`` at its defaults on ``model=tiny``."""
    named = {name for name, _ in SOLVER_RUNS}
    extra = [
        (path.stem, ["model=tiny", f"solver={path.stem}"])
        for path in sorted((ROOT / "conf" / "solver").glob("*.yaml"))
        if path.stem not in named
    ]
    return SOLVER_RUNS + extra


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
    for name, overrides in solver_run_list():
        with tempfile.TemporaryDirectory() as run_dir:
            cfg = compose([*overrides, "data.limit=1", "data.resolution=64", "data.prompt=''", "metrics=fast"])
            try:
                runner = build_runner(cfg, Path(run_dir))
                runner.progress = False
                runner.run()
                row = json.loads(next((Path(run_dir) / "rows").glob("*.json")).read_text())
            except Exception as error:  # noqa: BLE001 - a solver that cannot run here is reported, not fatal
                print(f"solver run {name} failed: {type(error).__name__}: {error}", file=sys.stderr)
                continue
            if row.get("status") != "ok":
                print(f"solver run {name} failed: {row.get('error')}", file=sys.stderr)
                continue
        counts = {k: v for k, v in row.items() if k == "seconds" or k.endswith(("_rows", "_calls"))}
        steps = cfg.solver.get("num_steps")
        rows.append({"name": name, "overrides": overrides, "num_steps": steps, **counts})
    return rows


def machine_key(device: str) -> tuple[str, str]:
    """``(key, name)`` of this machine in results.json: the GPU's name, or the CPU's with its core count."""
    if device == "cuda":
        name = torch.cuda.get_device_name()
    else:
        name = f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"
    return f"{device}:{name}", name


def write_results_json(unit: dict | None, operators: list[dict], solvers: list[dict], argv: list[str]) -> dict:
    """Merge this run's figures into benchmarks/results.json (see the module docstring for the schema)."""
    data = json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.is_file() else {}
    data["schema"] = 1
    device = unit["device"] if unit else ("cuda" if torch.cuda.is_available() else "cpu")
    key, name = machine_key(device)
    machines = data.setdefault("machines", {})
    entry = machines.get(key, {})
    entry.update(
        {
            "device": device,
            "name": name,
            "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d"),
            "command": " ".join(["python benchmarks/run_benchmarks.py", *argv]),
        }
    )
    if unit:
        entry.setdefault("networks", {})["sd15"] = {
            "resolution": 512,
            "dtype": unit["dtype"],
            "peak_memory_gib": unit["peak_memory_gib"],
            "seconds": {k: unit[k] for k in UNIT_KEYS},
        }
    entry["operators"] = {r["task"]: {k: r[k] for k in ("forward", "adjoint", "cg5")} for r in operators}
    machines[key] = entry
    known = data.setdefault("solvers", {})
    solver_names = {p.stem for p in (ROOT / "conf" / "solver").glob("*.yaml")}
    for r in solvers:
        if r["name"] not in solver_names:
            continue  # a named variant (cfg 0, + DPS): RESULTS.md only
        counts = {k: v for k, v in r.items() if k.endswith(("_rows", "_calls"))}
        known[r["name"]] = {
            "overrides": r["overrides"],
            "num_steps": r["num_steps"],
            "resolution": 64,
            "counts": counts,
            "seconds_small_model": r["seconds"],
        }
    RESULTS_JSON.write_text(json.dumps(data, indent=2) + "\n")
    return data


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


def import_results_md(path: Path = RESULTS) -> dict:
    """results.json from a RESULTS.md this script wrote earlier (its tables parsed back): for a machine whose
    figures were measured before results.json existed. The machine entry's ``command`` says where they came from."""
    import re

    text = path.read_text()
    header = re.search(
        r"on (\d{4}-\d{2}-\d{2}): (\d+) CPU cores \(([^)]*)\), torch (\S+), .*CUDA (no|yes: ([^.]*))", text
    )
    unit_section = re.search(r"## Full-size SD 1.5 architecture at 512 px \((\w+), (\w+)\)(.*?)\n## ", text, re.S)
    unit = None
    if unit_section:
        rows = dict(re.findall(r"\| (\w+) \| ([\d.]+) \|", unit_section.group(3)))
        memory = re.search(r"Peak memory of that process: ([\d.]+) GiB", unit_section.group(3))
        unit = {k: float(rows[k]) for k in UNIT_KEYS}
        unit.update(
            device=unit_section.group(1),
            dtype=unit_section.group(2),
            peak_memory_gib=float(memory.group(1)) if memory else float("nan"),
        )
    operators = [
        {"task": m[0], "forward": float(m[1]), "adjoint": float(m[2]), "cg5": float(m[3])}
        for m in re.findall(r"^\| ([a-z_0-9]+(?: task\.\S+)?) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", text, re.M)
    ]
    solvers = []
    for m in re.findall(
        r"^\| ([^|]+) \| ([\d.]+) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \| [^|]+ \|$", text, re.M
    ):
        name = m[0].strip().replace(" (defaults)", "")
        overrides = next((o for n, o in SOLVER_RUNS if n == name), [])
        solvers.append(
            {
                "name": name,
                "overrides": overrides,
                "num_steps": None,
                "seconds": float(m[1]),
                "unet_calls": float(m[2]),
                "unet_rows": float(m[3]),
                "decode_rows": float(m[4]),
                "encode_rows": float(m[5]),
                "clip_image_rows": float(m[6]),
            }
        )
    defaults = {"treg": 200, "ddim": 50}
    for r in solvers:
        r["num_steps"] = defaults.get(r["name"])
    date = header.group(1) if header else "?"
    data = write_results_json(unit, operators, solvers, [f"--import-md (figures of {path.name}, {date})"])
    if header:
        key = next(iter(k for k in data["machines"] if k.startswith("cpu:")), None)
        if key:
            data["machines"][key]["date"] = date
            data["machines"][key]["torch"] = header.group(4)
            RESULTS_JSON.write_text(json.dumps(data, indent=2) + "\n")
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-full-size", action="store_true", help="skip part 1 (loads 1.3 B random parameters)")
    parser.add_argument("--dtype", default=None, help="network dtype for part 1 (default: bfloat16 CPU, float16 CUDA)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--unit-costs-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--import-md", action="store_true", help="write results.json from the figures already in RESULTS.md, no timing"
    )
    args = parser.parse_args()
    if args.import_md:
        print(json.dumps(import_results_md(), indent=2))
        return
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
    operators, solvers = operator_costs(args.repeats), solver_runs()
    write_results(unit, operators, solvers, sys.argv[1:])
    write_results_json(unit, operators, solvers, sys.argv[1:])


if __name__ == "__main__":
    main()
