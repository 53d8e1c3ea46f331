"""What a run or a sweep will cost: network evaluations per image and hours, printed before anything is solved.

Network evaluations per image (:class:`Passes`, the prior's counter names) come from, in this order:

1. a formula for the solver (:data:`FORMULAS`, keyed by the solver's ``_target_``), written from its module
   docstring and tested against the prior's counter (``tests/test_tables.py``);
2. the counts ``benchmarks/run_benchmarks.py`` measured for that solver at its defaults
   (``benchmarks/results.json``, key ``solvers``), scaled by ``num_steps`` when the solver has one — so a solver
   without a formula gets an estimate as soon as the benchmarks have run with it;
3. otherwise the estimate says it does not know.

Seconds per pass come from ``benchmarks/results.json`` (``machines.<key>.networks.<architecture>.seconds``): every
machine the benchmarks ran on (this CPU; GPU rows added by later runs on a GPU) gives its own hours. The passes are
measured at 512 px; a run at another resolution scales UNet and VAE passes by the pixel count (CLIP always sees
224 px). A row whose pass is differentiated (``<network>_grad_rows``: DPS-style guidance, prompt tuning, latent
optimisation) adds that network's measured backward seconds (``<network>_backward``: the backward pass with
gradient checkpointing, recomputation included), or :data:`BACKWARD_FACTOR` × its forward seconds where a machine
has no such figure. These are network figures: CG, Adam on embeddings, I/O and metrics come on top (the benchmarks
measure them: under 5 % of a TReg image on the full-size architecture).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RESULTS_JSON = ROOT / "benchmarks" / "results.json"
#: forward FLOPs per pass of each architecture (``benchmarks/count_flops.py``)
FLOPS_JSON = ROOT / "benchmarks" / "flops.json"
#: GPUs no run of this project has measured: peak dense fp16/bf16 tensor throughput (vendor specification, SXM
#: boards) and the fraction of it assumed reached (:data:`ASSUMED_UTILISATION`); their hours are labelled estimates
GPU_PEAK_TFLOPS = {"A100": 312.0, "H100": 989.0}
ASSUMED_UTILISATION = 0.4
#: priors that stand in for the papers' (no weights): one short cost line, not full-size figures
TOY_PRIORS = ("tiny", "gaussian")
#: the resolution benchmarks/run_benchmarks.py measures the networks at
BENCHMARK_RESOLUTION = 512
#: a backward pass through a network, in units of its forward pass, where no backward seconds were measured
BACKWARD_FACTOR = 2.0
#: the networks whose backward passes are counted (``<network>_grad_rows``) and priced (``<network>_backward``)
GRAD_NETWORKS = ("unet", "decode", "encode")


@dataclass
class Passes:
    """Network evaluations per image, named as :class:`treg_exp.models.base.NetworkCounter` names them.

    ``unet_calls`` is the number of UNet calls, ``unet_rows`` their rows (a CFG pair is one call of 2 rows);
    ``<network>_grad_rows`` the rows whose pass is then differentiated. ``source`` says where they come from.
    """

    unet_calls: float = 0.0
    unet_rows: float = 0.0
    decode_rows: float = 0.0
    encode_rows: float = 0.0
    clip_image_rows: float = 0.0
    unet_grad_rows: float = 0.0
    decode_grad_rows: float = 0.0
    encode_grad_rows: float = 0.0
    source: str = "formula"

    @property
    def total(self) -> float:
        """All network passes per image (UNet rows, decodes, encodes, CLIP passes)."""
        return self.unet_rows + self.decode_rows + self.encode_rows + self.clip_image_rows

    def scaled(self, factor: float, source: str) -> Passes:
        return Passes(
            *(factor * getattr(self, name) for name in COUNT_NAMES),
            source=source,
        )


COUNT_NAMES = (
    "unet_calls",
    "unet_rows",
    "decode_rows",
    "encode_rows",
    "clip_image_rows",
    "unet_grad_rows",
    "decode_grad_rows",
    "encode_grad_rows",
)


def _branch_rows(scale: float) -> int:
    """UNet rows per image of one CFG evaluation: 1 when only one branch runs (ω = 0 or 1), else the pair."""
    return 1 if float(scale) in (0.0, 1.0) else 2


def treg_passes(cfg: Mapping[str, Any]) -> Passes:
    """TReg (``treg_exp.solvers.treg``): per step one CFG call; per DC step a decode, an encode and (AN) a CLIP pass;
    with ``use_dps`` the other steps are 1-row calls with a decode and a backward pass; the output reuses the last
    step's decode when it made one, else decodes once more; ``trajectory_every`` adds decodes on snapshot steps."""
    from treg_exp.solvers.treg import dc_steps

    steps = int(cfg.get("num_steps", 200))
    flags = dc_steps(steps, cfg.get("dc_every", 3), cfg.get("dc_until", 170), cfg.get("dc_grid", 200))
    n_dc = sum(flags)
    rows = _branch_rows(cfg.get("cfg_scale", 5.0))
    use_dps = bool(cfg.get("use_dps", False))
    every = int(cfg.get("trajectory_every", 0) or 0)
    decodes = 0
    for index, dc in enumerate(flags):
        decoded = dc or use_dps
        snapshot = every > 0 and (index % every == 0 or index == steps - 1)
        decodes += int(decoded or snapshot)
    last_decoded = flags[-1] or use_dps or every > 0
    decodes += 0 if last_decoded else 1
    n_other = steps - n_dc
    return Passes(
        unet_calls=steps,
        unet_rows=n_dc * rows + n_other * (1 if use_dps else rows),
        decode_rows=decodes,
        encode_rows=n_dc,
        clip_image_rows=n_dc if cfg.get("adaptive_negation", True) else 0,
        unet_grad_rows=n_other if use_dps else 0,
        decode_grad_rows=n_other if use_dps else 0,
    )


def ddim_passes(cfg: Mapping[str, Any]) -> Passes:
    """DDIM (``treg_exp.solvers.ddim``): ``num_steps`` CFG calls and one decode."""
    steps = int(cfg.get("num_steps", 50))
    return Passes(unet_calls=steps, unet_rows=steps * _branch_rows(cfg.get("guidance_scale", 7.5)), decode_rows=1)


def p2l_passes(cfg: Mapping[str, Any]) -> Passes:
    """P2L (``treg_exp.solvers.p2l``, either variant): per tuned step K prompt passes (a 1-row UNet call and a decode,
    both differentiated); per step the likelihood pass (one CFG evaluation and a decode, differentiated); an encode
    per projection step, and a decode where a snapshot or the output follows a projection."""
    from treg_exp.solvers.p2l import P2L

    solver = P2L(**{k: v for k, v in cfg.items() if not str(k).startswith("_")})
    steps = solver.num_steps
    tuned = (steps if solver.prompt_tuning == "every_step" else min(steps, 1)) * solver.prompt_iters
    rows = _branch_rows(solver.cfg_scale)
    projects = [solver.is_projection_step(i) for i in range(steps)]
    every = solver.trajectory_every
    snapshots = [every > 0 and (i % every == 0 or i == steps - 1) for i in range(steps)]
    decodes = tuned + steps + sum(p and s for p, s in zip(projects, snapshots, strict=True))
    decodes += int(projects[-1] and not snapshots[-1])  # the output decodes E(x̄) of a projecting last step
    return Passes(
        unet_calls=tuned + steps,
        unet_rows=tuned + steps * rows,
        decode_rows=decodes,
        encode_rows=sum(projects),
        unet_grad_rows=tuned + steps * rows,
        decode_grad_rows=tuned + steps,
    )


def latino_passes(cfg: Mapping[str, Any]) -> Passes:
    """LATINO (``treg_exp.solvers.latino``): per step one 1-row consistency pass, a decode and an encode; the output's
    decode and (``init: measurement``) the start's encode; ``prompt_opt`` adds per round and round step a pass whose
    graph reaches the embedding (differentiated), a decode and an encode."""
    from treg_exp.solvers.latino import LATINO

    solver = LATINO(**{k: v for k, v in cfg.items() if not str(k).startswith("_")})
    steps = solver.num_steps if solver.timesteps is None else len(solver.timesteps)
    tuned = solver.prompt_opt_iters * len(solver.prompt_opt_timesteps) if solver.prompt_opt else 0
    return Passes(
        unet_calls=steps + tuned,
        unet_rows=steps + tuned,
        unet_grad_rows=tuned,
        decode_rows=steps + 1 + tuned,
        encode_rows=steps + tuned + int(solver.init == "measurement"),
    )


def flowdps_passes(cfg: Mapping[str, Any]) -> Passes:
    """FlowDPS (``treg_exp.solvers.flowdps``): per step one CFG call and K differentiated decodes (FlowChef: one);
    one decode for the output. The transformer is never differentiated, except by ``variant=psld``: per step one
    differentiated CFG call, decode and encode (the gluing term)."""
    from treg_exp.solvers.flowdps import FlowDPS

    solver = FlowDPS(**{k: v for k, v in cfg.items() if not str(k).startswith("_")})
    steps, decodes = solver.num_steps, solver.num_steps * solver.num_dc_steps
    if solver.variant == "psld":
        rows = steps * _branch_rows(solver.cfg_scale)
        return Passes(
            unet_calls=steps,
            unet_rows=rows,
            unet_grad_rows=rows,
            decode_rows=steps + 1,
            decode_grad_rows=steps,
            encode_rows=steps,
            encode_grad_rows=steps,
        )
    return Passes(
        unet_calls=steps,
        unet_rows=steps * _branch_rows(solver.cfg_scale),
        decode_rows=decodes + 1,
        decode_grad_rows=decodes,
    )


def daps_passes(cfg: Mapping[str, Any]) -> Passes:
    """DAPS / LatentDAPS (``treg_exp.solvers.daps``): per annealing level ``ode_steps`` CFG calls; per MCMC step a
    differentiated decode and one decode for the output (LatentDAPS: on pixel priors these decodes are the identity,
    free)."""
    from treg_exp.solvers.daps import DAPS

    solver = DAPS(**{k: v for k, v in cfg.items() if not str(k).startswith("_")})
    calls, decodes = solver.annealing_steps * solver.ode_steps, solver.annealing_steps * solver.mcmc_steps
    return Passes(
        unet_calls=calls,
        unet_rows=calls * _branch_rows(solver.cfg_scale),
        decode_rows=decodes + 1,
        decode_grad_rows=decodes,
    )


def no_network_passes(cfg: Mapping[str, Any]) -> Passes:
    """The exact oracles (``treg_exp.solvers.oracles``) use no network."""
    return Passes()


#: solver ``_target_`` → its per-image network evaluations
FORMULAS: dict[str, Callable[[Mapping[str, Any]], Passes]] = {
    "treg_exp.solvers.treg.TReg": treg_passes,
    "treg_exp.solvers.ddim.DDIMSolver": ddim_passes,
    "treg_exp.solvers.p2l.P2L": p2l_passes,
    "treg_exp.solvers.latino.LATINO": latino_passes,
    "treg_exp.solvers.flowdps.FlowDPS": flowdps_passes,
    "treg_exp.solvers.daps.DAPS": daps_passes,
    "treg_exp.solvers.oracles.PosteriorMean": no_network_passes,
    "treg_exp.solvers.oracles.PosteriorSample": no_network_passes,
}


def load_results(path: Path | None = None) -> dict[str, Any]:
    """``benchmarks/results.json`` (``{}`` when the benchmarks have not been run)."""
    path = RESULTS_JSON if path is None else Path(path)
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def solver_passes(solver_cfg: Mapping[str, Any], solver_name: str, results: Mapping[str, Any]) -> Passes | None:
    """Network evaluations per image of one solver config (see the module docstring), or ``None`` if unknown."""
    formula = FORMULAS.get(str(solver_cfg.get("_target_", "")))
    if formula is not None:
        return formula(solver_cfg)
    measured = results.get("solvers", {}).get(solver_name)
    if not measured:
        return None
    counts = measured.get("counts", {})
    base = Passes(*(float(counts.get(name, 0.0)) for name in COUNT_NAMES), source="benchmarks")
    steps, bench_steps = solver_cfg.get("num_steps"), measured.get("num_steps")
    if isinstance(steps, (int, float)) and isinstance(bench_steps, (int, float)) and bench_steps > 0:
        return base.scaled(float(steps) / float(bench_steps), f"benchmarks × {steps}/{bench_steps} steps")
    return base


def load_flops(path: Path | None = None) -> dict[str, dict[str, float]]:
    """``{architecture: {pass: FLOPs, "resolution": px}}`` from ``benchmarks/flops.json`` (``{}`` when absent)."""
    try:
        return json.loads((path or FLOPS_JSON).read_text()).get("architectures", {})
    except (OSError, json.JSONDecodeError):
        return {}


def flop_seconds(flops: Mapping[str, float], flops_per_second: float) -> dict[str, float]:
    """Per-pass seconds (``results.json``'s keys) of an architecture at ``flops_per_second``: a FLOP estimate (a
    2-row UNet call is two rows; backward passes fall back to :data:`BACKWARD_FACTOR`)."""
    seconds = {k: float(v) / flops_per_second for k, v in flops.items() if k != "resolution"}
    seconds.setdefault("decode", 0.0)
    seconds.setdefault("encode", 0.0)
    seconds["unet_2rows"] = 2 * seconds["unet_1row"]
    return seconds


def machine_flop_rate(machine: Mapping[str, Any], flops: Mapping[str, Mapping[str, float]]) -> float | None:
    """FLOPs per second a machine reached on the UNet of an architecture it measured (``None``: none measured)."""
    for arch, figures in machine.get("networks", {}).items():
        measured = figures.get("seconds", {}).get("unet_1row")
        counted = flops.get(arch, {}).get("unet_1row")
        if measured and counted and figures.get("resolution") == flops[arch].get("resolution"):
            return float(counted) / float(measured)
    return None


def architecture(model_name: str) -> str:
    """The benchmark figures a model uses: SD 1.x/2.x-base share SD 1.5's network sizes; ``<name>_random`` its own."""
    name = model_name.removesuffix("_random")
    if name.startswith(("sd1", "sd2", "tiny")):
        return "sd15"
    return name


def seconds_per_image(
    passes: Passes, seconds: Mapping[str, float], resolution: int, measured_at: int = BENCHMARK_RESOLUTION
) -> float:
    """Network seconds of one image at ``resolution`` from per-pass ``seconds`` (benchmark keys) measured at
    ``measured_at`` px: UNet and VAE passes scale with the pixel count, CLIP (224 px) does not."""
    area = (resolution / measured_at) ** 2
    pair_calls = max(passes.unet_rows - passes.unet_calls, 0.0)
    single_calls = max(passes.unet_calls - pair_calls, 0.0)
    unet = pair_calls * seconds["unet_2rows"] + single_calls * seconds["unet_1row"]
    forward = {"unet": seconds["unet_1row"], "decode": seconds["decode"], "encode": seconds["encode"]}
    backward = sum(
        getattr(passes, f"{name}_grad_rows") * seconds.get(f"{name}_backward", BACKWARD_FACTOR * forward[name])
        for name in GRAD_NETWORKS
    )
    vae = passes.decode_rows * seconds["decode"] + passes.encode_rows * seconds["encode"]
    return area * (unet + vae + backward) + passes.clip_image_rows * seconds.get("clip_image", 0.0)


@dataclass
class JobCost:
    """The cost of one job: ``images`` (``None``: unknown), ``passes`` per image, ``hours`` per machine key."""

    images: int | None
    passes: Passes | None
    hours: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: machine keys whose hours are FLOP estimates, not measured seconds
    estimated: set[str] = field(default_factory=set)
    model: str = "?"


def machine_label(key: str, machine: Mapping[str, Any]) -> str:
    return f"{machine.get('name', key)} ({machine.get('device', '?')})"


def job_cost(
    cfg: Any,
    images: int | None,
    choices: Mapping[str, Any] | None = None,
    results: Mapping[str, Any] | None = None,
) -> JobCost:
    """The cost of the run ``cfg`` over ``images`` images; ``choices``: its config-group choices (default: those in
    ``cfg.hydra.runtime.choices``, as a composed sweep config holds them)."""
    from omegaconf import OmegaConf

    results = load_results() if results is None else results
    if choices is None:
        choices = OmegaConf.select(cfg, "hydra.runtime.choices", default=None) or {}
    solver_name = str(choices.get("solver", "?"))
    model_name = str(choices.get("model", "?"))
    solver_cfg = OmegaConf.to_container(cfg.solver, resolve=False)
    passes = solver_passes(solver_cfg, solver_name, results)
    cost = JobCost(images=images, passes=passes)
    samples = int(OmegaConf.select(cfg, "num_samples", default=1) or 1)
    if passes is None:
        cost.notes.append(f"network evaluations of solver={solver_name} unknown (no formula; run make bench)")
        return cost
    if passes.total == 0:
        return cost
    cost.model = model_name
    arch = architecture(model_name)
    resolution = int(OmegaConf.select(cfg, "data.resolution", default=BENCHMARK_RESOLUTION) or BENCHMARK_RESOLUTION)
    flops = load_flops().get(arch)
    if images is None:
        return cost
    machines = results.get("machines", {})
    for key, machine in machines.items():
        figures = machine.get("networks", {}).get(arch)
        rate = machine_flop_rate(machine, load_flops())
        if figures:
            measured_at = int(figures.get("resolution", BENCHMARK_RESOLUTION))
            seconds = seconds_per_image(passes, figures["seconds"], resolution, measured_at)
        elif flops and rate:  # this machine measured another architecture: scale by the FLOPs
            seconds = seconds_per_image(passes, flop_seconds(flops, rate), resolution, int(flops["resolution"]))
            cost.estimated.add(key)
        else:
            continue
        cost.hours[key] = seconds * images * samples / 3600.0
    measured_gpus = " ".join(str(m.get("name", "")) for m in machines.values() if m.get("device") == "cuda")
    for gpu, tflops in GPU_PEAK_TFLOPS.items():
        if flops and gpu not in measured_gpus:
            per_pass = flop_seconds(flops, tflops * 1e12 * ASSUMED_UTILISATION)
            seconds = seconds_per_image(passes, per_pass, resolution, int(flops["resolution"]))
            cost.hours[gpu] = seconds * images * samples / 3600.0
            cost.estimated.add(gpu)
    if not cost.hours:
        cost.notes.append(f"no benchmark or FLOP figures for the {arch} networks (benchmarks/count_flops.py)")
    return cost


def format_count(value: float) -> str:
    if value >= 10_000:
        return f"{value / 1000:.0f}k"
    if value >= 1000:
        return f"{value / 1000:.1f}k"
    return f"{value:.0f}"


def format_hours(hours: float) -> str:
    if not math.isfinite(hours):
        return "?"
    if hours < 1 / 60:
        return f"{hours * 3600:.0f} s"
    if hours < 1:
        return f"{hours * 60:.0f} min"
    if hours < 48:
        return f"{hours:.1f} h"
    return f"{hours:.0f} h = {hours / 24:.1f} days"


def describe_passes(passes: Passes | None) -> str:
    """``200 UNet calls (400 rows), 58 decodes, 57 encodes, 57 CLIP`` or ``unknown``."""
    if passes is None:
        return "unknown"
    if passes.total == 0:
        return "no network"
    parts = [f"{format_count(passes.unet_calls)} UNet calls ({format_count(passes.unet_rows)} rows)"]
    for name, label in (("decode_rows", "decodes"), ("encode_rows", "encodes"), ("clip_image_rows", "CLIP")):
        if getattr(passes, name):
            parts.append(f"{format_count(getattr(passes, name))} {label}")
    backward = max(getattr(passes, f"{name}_grad_rows") for name in GRAD_NETWORKS)
    if backward:
        parts.append(f"{format_count(backward)} backward")
    return ", ".join(parts)


def is_toy(model_name: str) -> bool:
    return model_name in TOY_PRIORS


def wall_hours(job_hours: list[float], at_once: int) -> float:
    """The wall time of jobs taking ``job_hours`` each, started in order on ``at_once`` slots, each job on the slot
    that frees first (what the local launcher and a SLURM array with ``array_parallelism`` do)."""
    slots = [0.0] * max(min(at_once, len(job_hours)), 1)
    for hours in job_hours:
        slots[slots.index(min(slots))] += hours
    return max(slots)


def launcher_line(at_once: int, jobs: int) -> str:
    return f"  launcher: {min(at_once, jobs)} of {jobs} jobs at once"


def summarise(costs: list[JobCost], results: Mapping[str, Any] | None = None, at_once: int | None = None) -> list[str]:
    """Lines of the total: jobs, images, network evaluations, and hours on each benchmarked machine and on the
    GPUs of :data:`GPU_PEAK_TFLOPS` (FLOP estimates, labelled); one line for toy priors. With ``at_once`` (jobs the
    launcher runs at the same time): how many run at once and the wall time that gives."""
    results = load_results() if results is None else results
    images = [c.images for c in costs]
    known = [i for i in images if i is not None]
    evaluations = sum((c.passes.total * c.images) for c in costs if c.passes is not None and c.images is not None)
    head = (
        f"cost: {len(costs)} jobs, {sum(known)} images"
        + (f" (+{images.count(None)} jobs with an unknown image count)" if None in images else "")
        + f", {format_count(evaluations)} network evaluations"
    )
    toys = sorted({c.model for c in costs if is_toy(c.model)})
    if costs and len(toys) == len({c.model for c in costs}):
        toy = [f"{head} (model={','.join(toys)}: a toy prior, seconds to minutes here)"]
        return toy + ([launcher_line(at_once, len(costs))] if at_once is not None else [])
    lines = [head]
    machines = {key: machine_label(key, m) for key, m in results.get("machines", {}).items()}
    machines.update({gpu: f"NVIDIA {gpu}" for gpu in GPU_PEAK_TFLOPS})
    priced = [c for c in costs if c.passes is not None and c.passes.total > 0 and not is_toy(c.model)]
    for key, label in machines.items():
        hours = [c.hours.get(key) for c in priced]
        if not any(h is not None for h in hours):
            continue
        missing = hours.count(None)
        total = sum(h for h in hours if h is not None)
        estimated = sum(1 for c in priced if key in c.estimated)
        if key in GPU_PEAK_TFLOPS:
            source = f"FLOP estimate at {ASSUMED_UTILISATION:.0%} of its {GPU_PEAK_TFLOPS[key]:.0f} TFLOPS fp16 peak"
        else:
            date = results.get("machines", {}).get(key, {}).get("date", "?")
            source = f"measured ({date})" + (f"; {estimated} jobs FLOP-scaled estimates" if estimated else "")
        note = f", {missing} jobs without figures" if missing else ""
        wall = ""
        if at_once is not None:
            wall_time = format_hours(wall_hours([h for h in hours if h is not None], at_once))
            wall = f"; {min(at_once, len(costs))} jobs at once: ≈ {wall_time} wall time"
        lines.append(f"  ≈ {format_hours(total)} of network time on {label}{wall} ({source}{note})")
    if len(lines) == 1:
        lines.append("  hours unknown: no benchmarks/results.json nor benchmarks/flops.json")
    if at_once is not None:
        lines.insert(1, launcher_line(at_once, len(costs)))
    notes = sorted({n for c in costs for n in c.notes})
    lines += [f"  note: {n}" for n in notes]
    if toys:
        lines.append(f"  note: jobs with model={','.join(toys)} (toy priors) are counted but not priced")
    return lines


def weights_problem(model_cfg: Any) -> str | None:
    """Why the weights of ``model_cfg`` are not on this machine (looked up in the caches, never downloaded), or
    ``None`` (found, or a prior without downloaded weights)."""
    target = str(model_cfg.get("_target_", ""))
    if model_cfg.get("weights") == "random" or not target.endswith(("AdmPrior", "StableDiffusionPrior")):
        return None
    cache_dir = model_cfg.get("cache_dir")
    hint = "stage them with scripts/fetch_weights.py on a machine with network, then paths.weights=DIR"
    if target.endswith("AdmPrior"):
        import torch

        from treg_exp.models.adm import RELEASES

        if model_cfg.get("checkpoint"):
            path = Path(str(model_cfg.checkpoint)).expanduser()
            return None if path.is_file() else f"model.checkpoint={path} is not a file"
        release = RELEASES.get(str(model_cfg.get("name")))
        folders = [Path(torch.hub.get_dir()) / "checkpoints"]
        if cache_dir:
            folders.insert(0, Path(str(cache_dir)).expanduser() / "torch" / "hub" / "checkpoints")
        if release is None or any((f / release.file).is_file() for f in folders):
            return None
        return f"weights of model {model_cfg.get('name')} ({release.file}): {hint}"
    from huggingface_hub import try_to_load_from_cache

    from treg_exp.models.loading import hf_cache_dir, resolve_source

    model_id = str(model_cfg.get("model_id"))
    if resolve_source(model_id, cache_dir)[1]:
        return None
    cached = try_to_load_from_cache(model_id, "model_index.json", cache_dir=hf_cache_dir(cache_dir))
    return None if isinstance(cached, str) else f"weights of {model_id} (not in the Hugging Face cache): {hint}"


def shard_size(total: int, index: int, count: int) -> int:
    """Images of shard ``index`` of ``count`` (image k belongs to shard k mod count)."""
    return len(range(index, total, max(count, 1))) if 0 <= index < max(count, 1) else 0


def caption_cost(cfg: Any, images: int) -> list[str]:
    """The captioning line of ``prompt=caption`` (``[]`` for other prompt sources): how many generate calls at most,
    before the solves; captions already in the cache are not made again."""
    captioner = (cfg.get("prompt") or {}).get("captioner")
    if not captioner:
        return []
    batch = int(captioner.batch_size)
    return [
        f"captions first: at most {images} images with {captioner.name} in {-(-images // batch)} generate calls "
        f"(≤ {batch} images, ≤ {captioner.max_new_tokens} new tokens each); cached captions are reused"
    ]


def log_run_cost(cfg: Any, dataset: Any, choices: Mapping[str, Any]) -> list[str]:
    """Print the cost lines of one run (the app calls it before anything is solved); never raises."""
    try:
        images = shard_size(len(dataset), int(cfg.shard.index), int(cfg.shard.count))
        cost = job_cost(cfg, images, choices)
        per_image = [] if is_toy(cost.model) else [f"cost per image: {describe_passes(cost.passes)}"]
        lines = [*caption_cost(cfg, images), *per_image, *summarise([cost])]
    except Exception as error:  # noqa: BLE001 - an estimate must never stop a run
        lines = [f"cost estimate unavailable ({type(error).__name__}: {error})"]
    for line in lines:
        print(line)
    return lines
