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


def no_network_passes(cfg: Mapping[str, Any]) -> Passes:
    """The exact oracles (``treg_exp.solvers.oracles``) use no network."""
    return Passes()


#: solver ``_target_`` → its per-image network evaluations
FORMULAS: dict[str, Callable[[Mapping[str, Any]], Passes]] = {
    "treg_exp.solvers.treg.TReg": treg_passes,
    "treg_exp.solvers.ddim.DDIMSolver": ddim_passes,
    "treg_exp.solvers.p2l.P2L": p2l_passes,
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
    arch = architecture(model_name)
    resolution = int(OmegaConf.select(cfg, "data.resolution", default=BENCHMARK_RESOLUTION) or BENCHMARK_RESOLUTION)
    for key, machine in results.get("machines", {}).items():
        figures = machine.get("networks", {}).get(arch)
        if figures and images is not None:
            measured_at = int(figures.get("resolution", BENCHMARK_RESOLUTION))
            seconds = seconds_per_image(passes, figures["seconds"], resolution, measured_at)
            cost.hours[key] = seconds * images * samples / 3600.0
    if not any(arch in m.get("networks", {}) for m in results.get("machines", {}).values()):
        cost.notes.append(f"no benchmark figures for the {arch} networks in benchmarks/results.json")
    if model_name.startswith(("tiny", "gaussian")):
        cost.notes.append(f"model={model_name}: hours are those of the full-size {arch} networks")
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
    return f"{hours:.1f} h"


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


def wall_hours(job_hours: list[float], at_once: int) -> float:
    """The wall time of jobs taking ``job_hours`` each, started in order on ``at_once`` slots, each job on the slot
    that frees first (what the local launcher and a SLURM array with ``array_parallelism`` do)."""
    slots = [0.0] * max(min(at_once, len(job_hours)), 1)
    for hours in job_hours:
        slots[slots.index(min(slots))] += hours
    return max(slots)


def summarise(costs: list[JobCost], results: Mapping[str, Any] | None = None, at_once: int | None = None) -> list[str]:
    """Lines of the total: jobs, images, network evaluations, and hours on each benchmarked machine; with
    ``at_once`` (jobs the launcher runs at the same time) how many run at once and the wall time that gives."""
    results = load_results() if results is None else results
    images = [c.images for c in costs]
    known = [i for i in images if i is not None]
    evaluations = sum((c.passes.total * c.images) for c in costs if c.passes is not None and c.images is not None)
    lines = [
        f"cost: {len(costs)} jobs, {sum(known)} images"
        + (f" (+{images.count(None)} jobs with an unknown image count)" if None in images else "")
        + f", {format_count(evaluations)} network evaluations"
    ]
    machines = results.get("machines", {})
    for key, machine in machines.items():
        hours = [c.hours.get(key) for c in costs if c.passes is not None and c.passes.total > 0]
        if not hours:
            continue
        missing = hours.count(None)
        total = sum(h for h in hours if h is not None)
        note = f" ({missing} jobs without figures)" if missing else ""
        if at_once is not None:
            wall = wall_hours([h for h in hours if h is not None], at_once)
            note += f"; {min(at_once, len(costs))} jobs at once: ≈ {format_hours(wall)} wall time"
        lines.append(
            f"  ≈ {format_hours(total)} of network time on {machine_label(key, machine)}{note}, "
            f"from benchmarks/results.json ({machine.get('date', '?')})"
        )
    if not machines:
        lines.append("  hours unknown: no benchmarks/results.json (run `make bench`)")
    if at_once is not None:
        lines.insert(1, f"  launcher: {min(at_once, len(costs))} of {len(costs)} jobs at once")
    notes = sorted({n for c in costs for n in c.notes})
    lines += [f"  note: {n}" for n in notes]
    return lines


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
        lines = [*caption_cost(cfg, images), f"cost per image: {describe_passes(cost.passes)}", *summarise([cost])]
    except Exception as error:  # noqa: BLE001 - an estimate must never stop a run
        lines = [f"cost estimate unavailable ({type(error).__name__}: {error})"]
    for line in lines:
        print(line)
    return lines
