"""Speed, memory and network evaluations of every solver; writes benchmarks/RESULTS.md and benchmarks/results.json.

    python benchmarks/run_benchmarks.py            # everything (make bench: under 20 min on this 2-core CPU)
    python benchmarks/run_benchmarks.py --skip-full-size --skip-memory     # the small-model parts only

Parts (each a section of RESULTS.md):

1. **Full-size passes** (``benchmarks/full_size.py``, its own process): SD 1.5's architecture with random weights
   (``model=sd15_random``) at 512 px in the networks' dtype (``--dtype``: bfloat16 on CPU, float16 on CUDA): forward
   seconds of each pass, backward seconds of UNet/decoder/encoder with checkpointing, ``channels_last`` on/off, and
   the full-size FFHQ ADM UNet at 256 px (the pixel solvers' prior).
2. **Full-size solvers on a few steps**: TReg, DDIM, LDPS and PSLD through the runner at 512 px, under the
   profiler: seconds per step *extrapolated* to the default steps, and where TReg's time goes (per network and
   outside the networks).
3. **Activation memory** (``benchmarks/memory.py``, its own process): one LDPS, PSLD and LatentDAPS step at 512 px in
   float32, with and without gradient checkpointing.
4. **Every solver on the small model** (``model=tiny``, 64 px, one photo, through the runner): seconds per image,
   peak RSS and network evaluations per image at the solver's defaults. Solvers whose default is more than
   :data:`MAX_SMALL_STEPS` steps run :data:`FIT_STEPS` steps and are *extrapolated* along the line through the two
   (labelled). Their full-size cost per image = the counts × part 1's seconds (``treg_exp.experiment.cost``).
5. **Batching**: each solver on 4 photos, batch 1 and batch 4, :data:`BATCH_STEPS` steps (``model=tiny``): seconds
   per image of the solve and of the whole pipeline.
6. **Options**: TReg on ``model=tiny`` eager, with ``channels_last`` and with ``torch.compile``.
7. **Operators at 512 px**: ``A``, ``Aᵀ`` and TReg's 5-iteration CG for each task.

``benchmarks/results.json`` holds the figures for programs (``treg_exp.experiment.cost`` reads it for the estimate a run
or a sweep prints at start). Schema (``"schema": 2``)::

    {"schema": 2,
     "machines": {                       # one entry per machine and device; a run replaces only its own entry
       "<device>:<name>": {              # e.g. "cpu:x86_64 (2 cores)", "cuda:NVIDIA H200"
         "device": "cpu" | "cuda", "name": str, "torch": str, "date": "YYYY-MM-DD", "command": str,
         "networks": {                   # per architecture (experiment.cost.architecture maps model names to these)
           "sd15": {"resolution": 512, "dtype": str, "peak_memory_gib": float,
                    "seconds": {"unet_1row", "unet_2rows", "decode", "encode", "clip_image",
                                "unet_backward", "decode_backward", "encode_backward": s}},
           "adm_ffhq256": {"resolution": 256, "dtype": str, "seconds": {...the same keys where they apply}}},
         "full_size_solvers": {"<name>": {"steps": k, "default_steps": n, "seconds": s, "seconds_per_step": s,
                                          "extrapolated_seconds_per_image": s, "split": {...}, "peak_gib": g}},
         "operators": {"<task [overrides]>": {"forward": s, "adjoint": s, "cg5": s}}}},
     "solvers": {                        # network evaluations per image (any machine), measured on model=tiny
       "<solver>": {"overrides": [...], "num_steps": int | null, "resolution": 64,
                    "counts": {"unet_calls": n, "unet_rows": n, "unet_grad_rows": n, "decode_rows": n, ...},
                    "seconds_small_model": s, "peak_rss_gib_small_model": g}}}
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import ROOT, compose, peak_gib, reset_peak, timed

from treg_exp.experiment import cost

RESULTS = ROOT / "benchmarks" / "RESULTS.md"
RESULTS_JSON = ROOT / "benchmarks" / "results.json"
#: the markers around benchmarks/large_priors.py's section of RESULTS.md, which this script keeps
LARGE_PRIORS_MARK = "<!-- large_priors -->"
TASKS = ["gauss_deblur", "motion_deblur", "sr4", "sr8", "sr16", "inpaint_box", "inpaint_random", "inpaint_freeform"]
#: solvers with more default steps than this run :data:`FIT_STEPS` steps on the small model; seconds and counts are
#: the straight line through the two runs at the default steps (exact for counts of a loop with one kind of step)
MAX_SMALL_STEPS = 200
FIT_STEPS = (20, 40)
#: steps of the batch-1-versus-4 runs (the ratio is per step)
BATCH_STEPS = 10
BATCH_IMAGES = 4
#: batch runs with fewer inner iterations (the same for both batch sizes): ReSample's optimisations do not shrink
#: with the steps, and would take most of the benchmark's time
BATCH_EXTRA = {"resample": ["solver.pixel_iters=200", "solver.latent_iters=50"]}
#: targets of the performance issue, checked in RESULTS.md
ACTIVATION_TARGET_GIB = 3.0
BATCH_TARGET = 0.6
OVERHEAD_TARGET = 0.05
#: (name, overrides) of the small-model runs besides every conf/solver/<name>.yaml at its defaults
VARIANTS = [
    ("treg cfg 0, no AN", ["solver=treg", "solver.cfg_scale=0", "solver.adaptive_negation=false"]),
    ("treg + DPS", ["solver=treg", "solver.use_dps=true"]),
    ("latino + prompt_opt", ["model.lora=random", "solver=latino", "solver.prompt_opt=true"]),
    ("flowdps variant=psld (tiny_sd3)", ["model=tiny_sd3", "solver=flowdps", "solver.variant=psld"]),
]
EXACT_PRIOR = {"posterior_mean", "posterior_sample"}  # no networks: run on the exact Gaussian prior
#: pixel-prior solvers whose defaults exceed the tiny SD table's top level (DAPS's σ_max 100 > σ̄_T 14.6): run on the
#: Gaussian prior (pixel space; its settings of conf/solver_model/<name>_gaussian.yaml)
PIXEL_PRIOR = {"daps"}
#: model options a solver needs on model=tiny: LATINO a consistency model (the tiny UNet with a random LoRA fused)
PRIOR_OPTIONS = {"latino": ["model.lora=random"]}
#: solvers defined on rectified-flow priors only: they run on the tiny SD3 build instead of model=tiny
FLOW_ONLY = {"flowdps"}
#: the key that counts a solver's steps, where it is not ``num_steps`` (DAPS: annealing levels)
STEP_KEYS = {"daps": "annealing_steps", "latent_daps": "annealing_steps"}


def solver_names() -> list[str]:
    return sorted(p.stem for p in (ROOT / "conf" / "solver").glob("*.yaml"))


def small_model_overrides(name: str) -> list[str]:
    if name in EXACT_PRIOR or name in PIXEL_PRIOR:
        return ["model=gaussian", f"solver={name}", "task.padding=circular"]
    model = "tiny_sd3" if name in FLOW_ONLY else "tiny"
    return [f"model={model}", *PRIOR_OPTIONS.get(name, []), f"solver={name}"]


def run_once(overrides: list[str], images: int = 1, batch_size: int = 1, resolution: int = 64) -> dict:
    """One run through the real runner: wall seconds per image (prior loaded beforehand), its rows, peak RSS."""
    from treg_exp.experiment.app import build_runner

    cfg = compose([*overrides, f"data.limit={images}", f"data.resolution={resolution}", "metrics=fast"])
    cfg.batch_size = batch_size
    with tempfile.TemporaryDirectory() as run_dir:
        runner = build_runner(cfg, Path(run_dir))
        runner.progress = False
        runner.prior.load("cpu")
        reset_peak()
        start = time.perf_counter()
        runner.run()
        wall = time.perf_counter() - start
        rows = [json.loads(p.read_text()) for p in sorted((Path(run_dir) / "rows").glob("*.json"))]
    failed = [r for r in rows if r.get("status") != "ok"]
    if failed or len(rows) != images:
        raise RuntimeError(f"{overrides}: {failed[0].get('error') if failed else 'rows missing'}")
    return {"wall_per_image": wall / images, "rows": rows, "peak_rss_gib": peak_gib(), "cfg": cfg}


def small_model_runs() -> list[dict]:
    """Part 4: every solver (and :data:`VARIANTS`) on one 64-px photo at its defaults, steps capped."""
    runs = [(name, small_model_overrides(name)) for name in solver_names()] + [
        (name, ["model=tiny", *overrides]) for name, overrides in VARIANTS
    ]
    run_once(["model=tiny", "solver=treg", "solver.num_steps=2", "solver.use_dps=true"])  # warm-up, not timed
    results = []
    for name, overrides in runs:
        step_key = STEP_KEYS.get(name, "num_steps")
        default_steps = compose(overrides).solver.get(step_key)
        fitted = bool(default_steps and default_steps > MAX_SMALL_STEPS)
        steps_run = FIT_STEPS if fitted else (default_steps,)
        measured = []
        for steps in steps_run:
            run = run_once([*overrides, *([f"solver.{step_key}={steps}"] if fitted else [])])
            values = {k: float(run["rows"][0].get(k, 0.0)) for k in cost.COUNT_NAMES}
            measured.append({"seconds": run["wall_per_image"], **values, "peak": run["peak_rss_gib"]})
        at_defaults = measured[-1]
        if fitted:  # the line through the two runs, at the default steps
            (a, b), (first, second) = FIT_STEPS, measured
            at_defaults = {k: first[k] + (second[k] - first[k]) / (b - a) * (default_steps - a) for k in first}
        counts = {k: v for k, v in at_defaults.items() if k in cost.COUNT_NAMES}
        results.append(
            {
                "name": name,
                "overrides": overrides,
                "default_steps": default_steps,
                "steps": steps_run[-1],
                "extrapolated": fitted,
                "seconds": measured[-1]["seconds"],
                "seconds_at_defaults": at_defaults["seconds"],
                "peak_rss_gib": max(m["peak"] for m in measured),
                "counts": {k: v for k, v in measured[-1].items() if k in cost.COUNT_NAMES},
                "counts_at_defaults": counts,
            }
        )
        print(f"small model: {name} {at_defaults['seconds']:.1f} s at the defaults", file=sys.stderr, flush=True)
    return results


def batch_runs() -> list[dict]:
    """Part 5: seconds per image of :data:`BATCH_IMAGES` photos at batch 1 and at batch 4, :data:`BATCH_STEPS`
    steps (the exact oracles at their own iterations)."""
    results = []
    for name in solver_names():
        overrides = small_model_overrides(name) + BATCH_EXTRA.get(name, [])
        if name not in EXACT_PRIOR:
            overrides.append(f"solver.{STEP_KEYS.get(name, 'num_steps')}={BATCH_STEPS}")
        row = {"name": name, "extra": BATCH_EXTRA.get(name, [])}
        for batch in (1, BATCH_IMAGES):
            run = run_once(overrides, BATCH_IMAGES, batch)
            row[f"wall_{batch}"] = run["wall_per_image"]
            row[f"solve_{batch}"] = sum(r["seconds"] for r in run["rows"]) / BATCH_IMAGES
        row["ratio"] = row[f"wall_{BATCH_IMAGES}"] / row["wall_1"]
        row["solve_ratio"] = row[f"solve_{BATCH_IMAGES}"] / row["solve_1"]
        results.append(row)
        print(f"batch: {name} {row['wall_1']:.2f} → {row[f'wall_{BATCH_IMAGES}']:.2f} s/image", file=sys.stderr)
    return results


def option_runs() -> list[dict]:
    """Part 6: TReg on model=tiny with the prior's options; 2 photos, the first one's extra seconds = compile."""
    results = []
    for label, extra in [
        ("eager", []),
        ("channels_last", ["model.channels_last=true"]),
        ("torch.compile (default)", ["model.compile_mode=default"]),
    ]:
        run = run_once(["model=tiny", "solver=treg", *extra], images=2)
        first, second = (r["seconds"] for r in run["rows"])
        results.append({"option": label, "seconds_per_image": second, "first_image_extra": first - second})
        print(f"option: {label} {second:.2f} s/image", file=sys.stderr, flush=True)
    return results


def operator_costs(repeats: int) -> list[dict]:
    """Part 7: per-call seconds of A, Aᵀ and a 5-iteration damped CG solve at 512 px, batch 1."""
    from hydra.utils import instantiate

    from treg_exp.common import seeding

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
                "forward": timed(lambda op=op: op(x), repeats),
                "adjoint": timed(lambda op=op, y=y: op.adjoint(y), repeats),
                "cg5": timed(lambda op=op, y=y: op.solve_damped(y, x, 1e-4, 5, 0.0), repeats),
            }
        )
    return rows


def child(script: str, *args: str) -> list[dict]:
    """Run ``benchmarks/<script>`` in its own process (its peak memory is its own); its JSON lines."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True, check=False
    )
    if out.returncode:
        raise RuntimeError(f"{script} failed:\n{out.stderr[-3000:]}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def full_size_estimate(counts: dict, seconds: dict, resolution: int, measured_at: int) -> float:
    """Network seconds per image from counts and pass seconds (``treg_exp.experiment.cost``, backward included)."""
    passes = cost.Passes(**{k: float(counts.get(k, 0.0)) for k in cost.COUNT_NAMES})
    return cost.seconds_per_image(passes, seconds, resolution, measured_at)


# --- writing ---------------------------------------------------------------------------------------------------
def machine_key(device: str) -> tuple[str, str]:
    """``(key, name)`` of this machine in results.json: the GPU's name, or the CPU's with its core count."""
    if device == "cuda":
        name = torch.cuda.get_device_name()
    else:
        name = f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"
    return f"{device}:{name}", name


def write_results_json(parts: dict, command: str) -> None:
    """Merge this run's figures into benchmarks/results.json (see the module docstring for the schema)."""
    data = json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.is_file() else {}
    data["schema"] = 2
    device = "cuda" if torch.cuda.is_available() else "cpu"
    key, name = machine_key(device)
    entry = data.setdefault("machines", {}).get(key, {})
    entry.update(device=device, name=name, torch=torch.__version__, date=time.strftime("%Y-%m-%d"), command=command)
    full = parts.get("full_size")
    if full:
        networks = entry.setdefault("networks", {})
        networks["sd15"] = {
            "resolution": 512,
            "dtype": full["dtype"],
            "peak_memory_gib": full["peak_memory_gib"],
            "seconds": full["seconds"],
        }
        if "adm_ffhq256" in full:
            networks["adm_ffhq256"] = full["adm_ffhq256"]
        entry["full_size_solvers"] = {
            r["name"]: {
                "steps": r["steps"],
                "default_steps": r["default_steps"],
                "seconds": r["wall"],
                "seconds_per_step": r["wall"] / r["steps"],
                "extrapolated_seconds_per_image": r["wall"] / r["steps"] * r["default_steps"],
                "split": r["split"],
                "peak_gib": r["peak_rss_gib"],
            }
            for r in full.get("solvers", [])
        }
    if parts.get("operators"):
        entry["operators"] = {r["task"]: {k: r[k] for k in ("forward", "adjoint", "cg5")} for r in parts["operators"]}
    data["machines"][key] = entry
    known = data.setdefault("solvers", {})
    names = set(solver_names())
    for r in parts.get("small", []):
        if r["name"] in names:
            known[r["name"]] = {
                "overrides": r["overrides"],
                "num_steps": r["default_steps"],
                "resolution": 64,
                "counts": r["counts_at_defaults"],
                "seconds_small_model": r["seconds"],
                "peak_rss_gib_small_model": r["peak_rss_gib"],
            }
    RESULTS_JSON.write_text(json.dumps(data, indent=2) + "\n")


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def markdown(parts: dict, command: str, minutes: float) -> list[str]:
    cuda = f"yes: {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "no"
    lines = [
        "# Benchmarks",
        "",
        f"Written by `{command}` on {time.strftime('%Y-%m-%d')} in {minutes:.1f} min: {os.cpu_count()} CPU cores "
        f"({platform.processor() or platform.machine()}), torch {torch.__version__}, {torch.get_num_threads()} "
        f"threads, CUDA {cuda}. Random weights everywhere: the figures are costs, never quality. Timings on this "
        "shared machine vary by ±30 % from run to run.",
        "",
        "Minutes per part: " + ", ".join(f"{k.replace('_', ' ')} {v:.1f}" for k, v in parts["minutes"].items()) + ".",
        "",
    ]
    full, memory, small = parts.get("full_size"), parts.get("memory"), parts.get("small", [])
    seconds = full["seconds"] if full else None
    if full:
        s, cl = full["seconds"], full["channels_last"]
        lines += [
            f"## Full-size SD 1.5 architecture at 512 px ({full['device']}, {full['dtype']})",
            "",
            "| pass | forward s | backward s (checkpointing on) | forward s, channels_last |",
            "|---|---|---|---|",
            f"| UNet, 1 row | {s['unet_1row']:.2f} | {s['unet_backward']:.2f} | |",
            f"| UNet, CFG pair (2 rows) | {s['unet_2rows']:.2f} | | {cl['unet_2rows']:.2f} |",
            f"| VAE decode | {s['decode']:.2f} | {s['decode_backward']:.2f} | {cl['decode']:.2f} |",
            f"| VAE encode | {s['encode']:.2f} | {s['encode_backward']:.2f} | |",
            f"| CLIP ViT-L/14 image | {s['clip_image']:.2f} | | |",
            "",
            f"Weights in RAM: {full['weights_rss_gib']:.1f} GiB; peak of these passes {full['peak_memory_gib']:.1f} "
            f"GiB (max RSS); building the random weights took {full['build_seconds']:.0f} s. Backward = (forward + "
            "backward, one call without warm-up) − forward: the checkpoints' recomputation is in it.",
        ]
        if "adm_ffhq256" in full:
            a = full["adm_ffhq256"]
            lines += [
                f"FFHQ ADM UNet (the pixel solvers' prior) at {a['resolution']} px, {a['dtype']}: "
                f"{a['seconds']['unet_1row']:.2f} s forward (1 row), "
                f"{a['seconds']['unet_backward']:.2f} s backward.",
            ]
        lines.append("")
    if memory:
        lines += [
            "## Activation memory of one backpropagating step (512 px, float32, CPU, batch 1)",
            "",
            "`benchmarks/memory.py`: one step of the latent-DPS gradient ∇_{z_t}‖y − A(D(ẑ0(z_t)))‖ (`ldps`: "
            "UNet + decoder + backward, as LDPS, LDIR, DPS on SD, TReg's DPS steps, P2L) and PSLD's (`psld`: "
            "the encoder of the gluing term too, as PSLD and GML-DPS), through `core.denoiser_gradient`, and one "
            "MCMC step of LatentDAPS (`latent_daps`: decoder + backward, `daps.likelihood_gradient`). "
            "Activation = peak RSS during the step − RSS before it (weights loaded, a no-grad pass done).",
            "",
            "| case | checkpointing | activation GiB | peak RSS GiB | seconds | target ≤ 3 GiB |",
            "|---|---|---|---|---|---|",
        ]
        for r in memory:
            target = verdict(r["activation_gib"] <= ACTIVATION_TARGET_GIB) if r["checkpointing"] == "on" else ""
            lines.append(
                f"| {r['case']} | {r['checkpointing']} | **{r['activation_gib']:.2f}** | {r['peak_gib']:.2f} | "
                f"{r['seconds']:.0f} | {target} |"
            )
        lines.append("")
    if full and full.get("solvers"):
        lines += [
            "## Full-size solvers on a few steps (512 px, one photo, through the runner)",
            "",
            "Measured on the steps shown, **extrapolated per step** to the default steps (labelled: not a full "
            "run). TReg's 7 steps have 2 DC steps (its default: 57 of 200).",
            "",
            "| solver | steps run | seconds | s / step | default steps | extrapolated s / image | peak RSS GiB |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in full["solvers"]:
            per_step = r["wall"] / r["steps"]
            lines.append(
                f"| {r['name']} | {r['steps']} | {r['wall']:.0f} | {per_step:.1f} | {r['default_steps']} | "
                f"{per_step * r['default_steps']:.0f} (extrapolated) | {r['peak_rss_gib']:.1f} |"
            )
        lines += ["", *treg_split(full, small), ""]
    if small:
        lines += [
            "## Every solver: network evaluations per image and cost",
            "",
            f"`model=tiny` (64 px) end to end through the runner, one photo, at the solver's defaults; solvers "
            f"with more than {MAX_SMALL_STEPS} default steps ran {FIT_STEPS[0]} and {FIT_STEPS[1]} steps and their "
            "seconds and counts are **extrapolated** along the line through the two to the default steps (marked "
            "*; exact for counts of a loop whose steps are alike, approximate for ReSample's phases). "
            "Counts are per image at the defaults; "
            "`grad` = rows whose pass is then differentiated. *Full-size s* = those counts × the full-size pass "
            "seconds above (forward and backward), network time only: the price `treg_exp.experiment.cost` quotes "
            "before a run. Pixel solvers on the FFHQ ADM prior: its UNet seconds, no VAE.",
            "",
            "| solver | steps | tiny s / image | tiny peak RSS GiB | UNet rows | UNet grad | decodes | decode grad "
            "| encodes | encode grad | CLIP | full-size s (SD, 512) | full-size s (ADM, 256) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in small:
            c = r["counts_at_defaults"]
            star = "*" if r["extrapolated"] else ""
            sd = adm = "—"
            if seconds and any(c.get(k) for k in ("unet_rows", "decode_rows")):
                sd = f"{full_size_estimate(c, seconds, 512, 512):.0f}"
                if "adm_ffhq256" in full and r["name"] in ("dps", "dds", "diffpir", "red"):
                    a = full["adm_ffhq256"]
                    adm = f"{full_size_estimate(c, a['seconds'], a['resolution'], a['resolution']):.0f}"
            lines.append(
                f"| {r['name']} | {r['default_steps'] or '—'}{star} | {r['seconds_at_defaults']:.1f}{star} | "
                f"{r['peak_rss_gib']:.2f} | {c.get('unet_rows', 0):.0f} | {c.get('unet_grad_rows', 0):.0f} | "
                f"{c.get('decode_rows', 0):.0f} | {c.get('decode_grad_rows', 0):.0f} | {c.get('encode_rows', 0):.0f} "
                f"| {c.get('encode_grad_rows', 0):.0f} | {c.get('clip_image_rows', 0):.0f} | {sd} | {adm} |"
            )
        lines.append("")
    if parts.get("batch"):
        lines += [
            f"## Batching: {BATCH_IMAGES} photos at batch 1 and at batch {BATCH_IMAGES} (`model=tiny`, 64 px, "
            f"{BATCH_STEPS} steps)",
            "",
            f"Seconds per image of the whole pipeline (loading, measuring, solving, metrics, writing) and of the "
            f"solver call alone. Target: batch {BATCH_IMAGES} ≤ {BATCH_TARGET}× batch 1 for the pipeline. "
            "`model=tiny` runs its VAE on the whole batch (`vae_slicing: false`: at 64 px there is no memory to "
            "save); the full-size models slice it by default, one image per VAE pass, which caps a 512-px batch's "
            "VAE memory at one image's while the UNet still runs the whole batch.",
            "",
            f"| solver | pipeline batch 1 | pipeline batch {BATCH_IMAGES} | ratio | solve batch 1 | "
            f"solve batch {BATCH_IMAGES} | ratio | target (pipeline) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in parts["batch"]:
            extra = f" ({' '.join(r['extra'])})" if r["extra"] else ""
            target = "n/a (no network)" if r["name"] in EXACT_PRIOR else verdict(r["ratio"] <= BATCH_TARGET)
            lines.append(
                f"| {r['name']}{extra} | {r['wall_1']:.3f} | {r[f'wall_{BATCH_IMAGES}']:.3f} | {r['ratio']:.2f} | "
                f"{r['solve_1']:.3f} | {r[f'solve_{BATCH_IMAGES}']:.3f} | {r['solve_ratio']:.2f} | {target} |"
            )
        lines.append("")
    if parts.get("options"):
        lines += [
            "## Options: TReg on `model=tiny` (64 px, 200 steps)",
            "",
            "| option | solve s / image | extra s on the first image |",
            "|---|---|---|",
            *[
                f"| {r['option']} | {r['seconds_per_image']:.2f} | {r['first_image_extra']:.1f} |"
                for r in parts["options"]
            ],
            "",
            "The first image's extra seconds are `torch.compile`'s compilation (once per process and shape). "
            "`channels_last` on the full-size networks: the first table.",
            "",
        ]
    if parts.get("operators"):
        lines += [
            "## Operators at 512 px (batch 1, seconds per call)",
            "",
            "| task | A | Aᵀ | CG, 5 iterations |",
            "|---|---|---|---|",
            *[
                f"| {r['task']} | {r['forward']:.4f} | {r['adjoint']:.4f} | {r['cg5']:.4f} |"
                for r in parts["operators"]
            ],
            "",
        ]
    if not torch.cuda.is_available():
        lines += [
            "## GPU",
            "",
            "No GPU on this machine: the GPU rows (SD 1.5 at 512 in bfloat16 and float16: TReg seconds per image and "
            "peak memory, PSLD/LDPS peak memory with checkpointing, images per hour at batch 1 and 4) come from "
            "`make bench` run on one; it adds its own `cuda:<name>` entry to results.json.",
        ]
    return lines


def treg_split(full: dict, small: list[dict]) -> list[str]:
    """Where a TReg image's time goes on the full-size architecture: the profiled few-step run, and the default
    200-step run priced from its counts (small-model run) with the per-call seconds of that profile, the solver's
    own work outside the networks per step, and the runner's work once."""
    run = next((r for r in full["solvers"] if r["name"] == "treg"), None)
    defaults = next((r["counts_at_defaults"] for r in small if r["name"] == "treg"), None)
    if run is None or defaults is None:
        return []
    split, wall, counts, steps = run["split"], run["wall"], run["counts"], run["steps"]
    default_steps = run["default_steps"]
    parts = {"unet": "unet_calls", "decode": "decode_rows", "encode": "encode_rows", "clip_image": "clip_image_rows"}
    rows = []  # (part, profiled s, per call, default calls, default s)
    for part, key in parts.items():
        calls = counts.get(key.replace("_rows", "_calls"), 0) or 0
        per_call = split[part] / calls if calls else 0.0
        default_calls = defaults.get(key, 0.0)
        rows.append((part, split[part], per_call, default_calls, per_call * default_calls))
    networks = sum(r[1] for r in rows)
    solver_outside = max(run["solve_seconds"] - networks, 0.0)  # CG, AN's Adam, text encoding, arithmetic
    runner_outside = max(wall - run["solve_seconds"], 0.0)  # loading, measuring, metrics, writing
    default_solver_outside = solver_outside / steps * default_steps
    total_default = sum(r[4] for r in rows) + default_solver_outside + runner_outside
    lines = [
        f"### TReg: where the time goes ({steps} profiled steps at 512 px, `torch.profiler`)",
        "",
        "| part | profiled s | share | per call s | default run: calls | default run s (extrapolated) | share |",
        "|---|---|---|---|---|---|---|",
    ]
    for part, secs, per_call, default_calls, default_secs in rows:
        lines.append(
            f"| {part} | {secs:.1f} | {secs / wall:.1%} | {per_call:.2f} | {default_calls:.0f} | "
            f"{default_secs:.0f} | {default_secs / total_default:.1%} |"
        )
    lines += [
        f"| solver outside the networks (CG, AN's Adam, text, arithmetic) | {solver_outside:.1f} | "
        f"{solver_outside / wall:.1%} | | {default_steps} steps | {default_solver_outside:.0f} | "
        f"{default_solver_outside / total_default:.1%} |",
        f"| runner (load, measure, metrics, write) | {runner_outside:.1f} | {runner_outside / wall:.1%} | | once | "
        f"{runner_outside:.0f} | {runner_outside / total_default:.1%} |",
        f"| total | {wall:.1f} | | | | {total_default:.0f} | |",
        "",
    ]
    overhead = (default_solver_outside + runner_outside) / total_default
    lines.append(
        f"Outside the networks: {overhead:.1%} of a default TReg image (target ≤ {OVERHEAD_TARGET:.0%}: "
        f"{verdict(overhead <= OVERHEAD_TARGET)}); {(solver_outside + runner_outside) / wall:.1%} of the "
        f"{steps}-step run, whose runner part is not yet spread over 200 steps. The default run's column prices "
        "the default calls at the profile's per-call seconds, the solver's own work per step and the runner's once "
        "(extrapolated)."
    )
    vae = sum(r[4] for r in rows if r[0] in ("decode", "encode"))
    unet = next(r[4] for r in rows if r[0] == "unet")
    lines.append(
        f"VAE passes {vae:.0f} s against the UNet's {unet:.0f} s per default image on this machine"
        + (": the VAE costs more than the 200 UNet calls." if vae > unet else ".")
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-full-size", action="store_true", help="skip parts 1–2 (1.3 B random parameters)")
    parser.add_argument("--skip-memory", action="store_true", help="skip part 3 (≈ 17 GiB of RAM)")
    parser.add_argument(
        "--dtype", default=None, help="network dtype of parts 1–2 (default: bfloat16 CPU, float16 CUDA)"
    )
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    started = time.perf_counter()
    command = " ".join(["python benchmarks/run_benchmarks.py", *sys.argv[1:]])
    dtype = args.dtype or ("float16" if torch.cuda.is_available() else "bfloat16")
    steps = {
        "full_size": None if args.skip_full_size else lambda: child("full_size.py", "--dtype", dtype)[-1],
        "memory": None if args.skip_memory else lambda: child("memory.py"),
        "small": small_model_runs,
        "batch": batch_runs,
        "options": option_runs,
        "operators": lambda: operator_costs(args.repeats),
    }
    parts: dict = {"minutes": {}}
    for name, step in steps.items():
        if step is None:
            continue
        begun = time.perf_counter()
        parts[name] = step()
        parts["minutes"][name] = (time.perf_counter() - begun) / 60
        print(f"part {name}: {parts['minutes'][name]:.1f} min", file=sys.stderr, flush=True)
    lines = markdown(parts, command, (time.perf_counter() - started) / 60)
    # keep the section benchmarks/large_priors.py writes between its markers (make bench-large)
    kept = RESULTS.read_text().split(LARGE_PRIORS_MARK) if RESULTS.is_file() else []
    if len(kept) >= 3:
        lines += ["", LARGE_PRIORS_MARK + kept[1] + LARGE_PRIORS_MARK]
    RESULTS.write_text("\n".join(lines) + "\n")
    write_results_json(parts, command)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
