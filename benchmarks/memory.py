"""Activation memory of one backpropagating solver step at 512 px on the full-size SD 1.5 architecture.

    python benchmarks/memory.py                 # every case, one child process each; writes benchmarks/MEMORY.md
    python benchmarks/memory.py --case ldps --checkpointing on      # one case, prints a JSON line

A case is one step of a solver that differentiates through the networks: the latent-DPS gradient
``∇_{z_t}‖y − A(D(ẑ0(z_t)))‖`` (``ldps``: UNet + decoder + backward) and PSLD's, which adds the gluing term
``γ‖E(Aᵀy + (I − AᵀA)D(ẑ0)) − ẑ0‖`` (``psld``: UNet + decoder + encoder + backward), both through the shared
:func:`treg_exp.solvers.core.denoiser_gradient` that the solvers use, on ``model=sd15_random`` (the real shapes,
random weights) in float32 on the CPU, batch 1, ``gauss_deblur``.

Activation memory = peak RSS of the step (``VmHWM``) minus RSS once the weights are loaded and one no-grad pass
has run (``VmRSS``), so weights, the allocator's warm-up and the libraries are not counted. Each case runs in its
own process so that the peak belongs to it alone. ``checkpointing``: ``off``; ``on`` = the prior's gradient
checkpointing (:meth:`StableDiffusionPrior.set_gradient_checkpointing`, diffusers' per-block checkpoints of the UNet
and the VAE encoder/decoder plus our per-ResNet checkpoints of the VAE).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "MEMORY.md"
CASES = ("ldps", "psld")
CHECKPOINTING = ("off", "on")


def rss_gib(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process in GiB, from ``/proc/self/status``."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**20
    raise RuntimeError(f"{field} not in /proc/self/status")


def one_case(case: str, checkpointing: bool, resolution: int) -> dict:
    """Run one step of ``case`` in this process and return its memory and time."""
    from treg_exp import seeding
    from treg_exp.models.tiny import TinyStableDiffusionPrior
    from treg_exp.operators.blur import gaussian_deblur
    from treg_exp.solvers.core import denoiser_gradient, residual_norm

    torch.manual_seed(0)
    prior = TinyStableDiffusionPrior(architecture="sd15", dtype="float32").load("cpu")
    prior.set_gradient_checkpointing(checkpointing)
    generators = seeding.batch_generators(0, ["x"], seeding.SOLVER)
    x = torch.rand(1, 3, resolution, resolution) * 2 - 1
    operator = gaussian_deblur()
    y = operator.measure(x, generators)
    cond = prior.embed_text([""])
    z_t = seeding.randn(prior.latent_shape(x.shape)[1:], generators)
    t, alpha_bar = 500, float(prior.schedule.alphas_cumprod[500])
    with torch.no_grad():  # warm the allocator and the kernels with the same shapes, without a graph
        prior.encode(prior.decode(prior.eps(z_t, t, cond)), mode="mean")
    base = rss_gib("VmRSS")
    gluing_target = operator.adjoint(y)

    def loss(z0: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        value = residual_norm(y, operator, x0)
        if case == "psld":  # Aᵀy + (I − AᵀA)x0 = x0 + Aᵀ(y − A x0), encoded and compared with ẑ0
            glued = x0 + gluing_target - operator.normal(x0)
            value = value + 0.1 * (prior.encode(glued, mode="mean") - z0).flatten(1).norm(dim=1)
        return value

    start = time.perf_counter()
    result = denoiser_gradient(prior, z_t, alpha_bar, lambda z: prior.eps(z, t, cond), loss)
    seconds = time.perf_counter() - start
    assert torch.isfinite(result.grad).all()
    peak = rss_gib("VmHWM")
    return {
        "case": case,
        "checkpointing": "on" if checkpointing else "off",
        "resolution": resolution,
        "weights_and_runtime_gib": round(base, 2),
        "peak_gib": round(peak, 2),
        "activation_gib": round(peak - base, 2),
        "seconds": round(seconds, 1),
        "counts": dict(prior.counter),
    }


def write_results(rows: list[dict], argv: list[str]) -> None:
    lines = [
        "# Activation memory of one backpropagating step",
        "",
        f"Written by `python benchmarks/memory.py {' '.join(argv)}`".rstrip() + f" on {time.strftime('%Y-%m-%d')}: "
        f"{platform.machine()}, torch {torch.__version__}, CPU, float32, batch 1, full-size SD 1.5 architecture "
        "(random weights). Activation = peak RSS of the step minus RSS after loading and a no-grad warm-up pass.",
        "",
        "| case | checkpointing | px | activation GiB | peak GiB | weights + runtime GiB | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['checkpointing']} | {r['resolution']} | **{r['activation_gib']:.2f}** | "
            f"{r['peak_gib']:.2f} | {r['weights_and_runtime_gib']:.2f} | {r['seconds']:.1f} |"
        )
    lines += [
        "",
        "`ldps`: UNet + VAE decoder + backward to z_t (LDPS, GML-DPS without its encoder term, LDIR, DPS on SD, "
        "TReg's DPS steps, P2L's prompt tuning). `psld`: the same plus the VAE encoder in the graph (PSLD, GML-DPS).",
    ]
    RESULTS.write_text("\n".join(lines) + "\n")
    (RESULTS.with_suffix(".json")).write_text(json.dumps(rows, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", choices=CASES)
    parser.add_argument("--checkpointing", choices=CHECKPOINTING)
    parser.add_argument("--resolution", type=int, default=512)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(one_case(args.case, args.checkpointing == "on", args.resolution)))
        return
    rows = []
    for case in CASES:
        for mode in CHECKPOINTING:
            command = [sys.executable, __file__, "--case", case, "--checkpointing", mode]
            command += ["--resolution", str(args.resolution)]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    write_results(rows, sys.argv[1:])


if __name__ == "__main__":
    main()
