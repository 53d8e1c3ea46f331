"""Costs of a full-size random-weight SDXL- or SD3.5-class prior at 1024 px, written into RESULTS.md and results.json.

    python benchmarks/large_priors.py                      # model=sdxl_random, bfloat16, 1024 px
    python benchmarks/large_priors.py --model sd35_medium_random --resolution 1024 --dtype bfloat16

One process builds the prior once (random weights drawn in the dtype) and measures, in the networks' dtype:

- seconds of one denoiser pass of 1 row and of 2 (a CFG pair), and of one VAE decode and encode (no gradients; no
  warm-up: on a CPU one pass at 1024 px takes tens of seconds, and the first call's allocation is part of what a run
  pays once);
- the memory of one TReg data-consistency step (``x̂ = D(ẑ0)``, 5 CG iterations of super-resolution ×16, ``E(x̂(y))``,
  no gradients: TReg's DC step has no backward pass), as peak RSS minus RSS before it, with the prior's gradient
  checkpointing on (it changes nothing without gradients: the figure is what the step needs either way);
- the seconds and memory of one LDPS step (``ε̂``/velocity with gradients to ``z_t``, ``D(ẑ0)``, ``‖A x − y‖²``, the
  backward pass to ``z_t``) with gradient checkpointing on: the activation memory a gradient-based latent solver
  pays per step.

RESULTS.md gets (or replaces) this model's ``## <model>`` block in the section between ``<!-- large_priors -->``
markers (the other models' blocks stay); results.json gets
``machines[<this machine>].networks[<architecture>]`` (``sdxl``), which ``treg_exp.experiment.cost`` prices
``model=sdxl`` runs with. ``make bench`` keeps both (this script runs on its own, ``make bench-large``:
it needs about 10 GiB of RAM and about 8 minutes on two cores).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from common import compose, peak_gib, reset_peak

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from run_benchmarks import LARGE_PRIORS_MARK as MARK  # noqa: E402 - after the path insert
from run_benchmarks import RESULTS, RESULTS_JSON, machine_key  # noqa: E402

from treg_exp.experiment.cost import architecture  # noqa: E402
from treg_exp.operators.sr import super_resolution  # noqa: E402
from treg_exp.solvers.core import Step, split_prediction  # noqa: E402


def seconds(fn) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        fn()
    return time.perf_counter() - start


def measure(model: str, resolution: int, dtype: str) -> dict:
    from hydra.utils import instantiate

    started = time.perf_counter()
    prior = instantiate(compose([f"model={model}", f"model.dtype={dtype}"]).model).load("cpu")
    build = time.perf_counter() - started
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, resolution, resolution, generator=g) * 2 - 1
    z = torch.randn(prior.latent_shape(x.shape), generator=g)
    cond = prior.embed_text(["a photo"])
    figures = {
        "unet_1row": seconds(lambda: prior.predict(z, 500, cond)),
        "unet_2rows": seconds(lambda: prior.predict(torch.cat([z, z]), 500, torch.cat([cond, cond]))),
        "decode": seconds(lambda: prior.decode(z)),
        "encode": seconds(lambda: prior.encode(x, mode="mean")),
    }
    operator = super_resolution(factor=16)
    y = operator(x)
    prior.set_gradient_checkpointing(True)
    before = reset_peak()

    def dc_step() -> None:
        x_hat = prior.decode(z)
        x_y, _ = operator.solve_damped(y, x_hat, 1e-4, 5, 1e-4)  # TReg's defaults: λ, iterations, tolerance
        prior.encode(x_y.to(x.dtype), mode="mean")

    figures["treg_dc_step"] = seconds(dc_step)
    dc_memory = peak_gib() - before
    before = reset_peak()
    # t = 500 of 1000: ᾱ = 0.5 and, on a flow prior, σ = 0.5 (the same signal-to-noise ratio); costs do not depend on it
    step = Step(index=0, t=500, t_prev=-1, alpha_bar=0.5, alpha_bar_prev=1.0, sigma=0.5)

    def ldps_step() -> None:
        z_t = z.clone().requires_grad_(True)
        with torch.enable_grad():
            z0, _ = split_prediction(prior, z_t, prior.predict(z_t, 500, cond).float(), step)
            loss = (operator(prior.decode(z0).float()) - y).pow(2).sum()
            loss.backward()

    figures["ldps_step"] = seconds(ldps_step)
    return {
        "model": model,
        "resolution": resolution,
        "dtype": dtype,
        "build_seconds": build,
        "seconds": figures,
        "treg_dc_step_memory_gib": dc_memory,
        "ldps_step_memory_gib": peak_gib() - before,
    }


def section(result: dict, machine: str) -> list[str]:
    """This model's ``## <model>`` block of RESULTS.md's large-priors section (``—`` for a figure not measured)."""
    s = result["seconds"]

    def cell(value: float | None, digits: int) -> str:
        return "—" if value is None else f"{value:.{digits}f}"

    return [
        f"## {result['model']} at {result['resolution']} px ({result['dtype']}, {machine})",
        "",
        f"`benchmarks/large_priors.py --model {result['model']}`: random weights (built in "
        f"{result['build_seconds']:.0f} s), seconds per pass without gradients, and the memory above the loaded prior "
        "of one TReg data-consistency step (decode, 5 CG iterations of SR ×16, encode; no backward) and of one LDPS "
        "step (denoiser, decode, ‖A x − y‖², backward to z_t; gradient checkpointing on).",
        "",
        "| denoiser, 1 row (s) | denoiser, CFG pair (s) | VAE decode (s) | VAE encode (s) | TReg DC step (s) "
        "| TReg DC step memory (GiB) | LDPS step (s) | LDPS step memory (GiB) |",
        "|---|---|---|---|---|---|---|---|",
        f"| {s['unet_1row']:.1f} | {s['unet_2rows']:.1f} | {s['decode']:.1f} | {s['encode']:.1f} "
        f"| {s['treg_dc_step']:.1f} | {result['treg_dc_step_memory_gib']:.2f} | {cell(s.get('ldps_step'), 1)} "
        f"| {cell(result.get('ldps_step_memory_gib'), 2)} |",
        "",
    ]


def write(result: dict) -> None:
    key, name = machine_key("cpu")
    data = json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.is_file() else {}
    entry = data.setdefault("machines", {}).setdefault(key, {"device": "cpu", "name": name})
    entry.setdefault("networks", {})[architecture(result["model"])] = {
        "resolution": result["resolution"],
        "dtype": result["dtype"],
        "seconds": result["seconds"],
        "treg_dc_step_memory_gib": result["treg_dc_step_memory_gib"],
        "ldps_step_memory_gib": result["ldps_step_memory_gib"],
    }
    RESULTS_JSON.write_text(json.dumps(data, indent=2) + "\n")
    text = RESULTS.read_text() if RESULTS.is_file() else ""
    head, _, rest = text.partition(MARK + "\n")
    inside, _, tail = rest.partition(MARK + "\n")
    # one block per model, each from its "## <model> at" line; this model's is replaced, the others kept in order
    blocks = ["## " + b for b in ("\n" + inside).split("\n## ")[1:]]
    blocks = [b.rstrip("\n") + "\n" for b in blocks if not b.startswith(f"## {result['model']} at ")]
    blocks.append("\n".join(section(result, name)))
    RESULTS.write_text(head.rstrip("\n") + "\n\n" + MARK + "\n" + "\n".join(blocks) + MARK + "\n" + tail)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sdxl_random", choices=["sdxl_random", "sd35_medium_random"])
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()
    result = measure(args.model, args.resolution, args.dtype)
    print(json.dumps(result))
    write(result)


if __name__ == "__main__":
    main()
