"""Activation memory of one backpropagating solver step at 512 px on the full-size SD 1.5 architecture.

    python benchmarks/memory.py                  # every case in one process; prints one JSON line per case

``run_benchmarks.py`` runs it in its own process and writes the table into ``RESULTS.md``.

A case is one step of a solver that differentiates through the networks: the latent-DPS gradient
``∇_{z_t}‖y − A(D(ẑ0(z_t)))‖`` (``ldps``: UNet + decoder + backward) and PSLD's, which adds the gluing term
``γ‖E(Aᵀy + (I − AᵀA)D(ẑ0)) − ẑ0‖`` (``psld``: UNet + decoder + encoder + backward), both through the shared
:func:`treg_exp.solvers.core.denoiser_gradient` that the solvers use, and one MCMC step of LatentDAPS
(``latent_daps``: decoder + backward, no UNet, through :func:`treg_exp.solvers.daps.likelihood_gradient`), on
``model=sd15_random`` (the real shapes, random weights) in float32 on the CPU, batch 1, ``gauss_deblur``; each with
the prior's gradient checkpointing (:meth:`StableDiffusionPrior.set_gradient_checkpointing`: diffusers' per-block
checkpoints of UNet and VAE plus our per-ResNet checkpoints of the VAE) on and off.

Activation memory = peak RSS during the step (``VmHWM``) minus RSS just before it (``VmRSS``, after the weights are
loaded, a no-grad pass with the same shapes has run, and freed memory has been handed back with ``malloc_trim``).
The peak is reset between cases (``/proc/self/clear_refs``), so every case has its own peak in one process; the
small cases run first.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from common import reset_peak, rss_gib

#: (case, checkpointing) in the order they run: checkpointed (small) cases first
CASES = (
    ("latent_daps", True),
    ("ldps", True),
    ("psld", True),
    ("latent_daps", False),
    ("ldps", False),
    ("psld", False),
)
#: PSLD's γ (only the graph matters here, not the value)
GLUING_WEIGHT = 0.1


def measure(resolution: int = 512, only: list[str] | None = None) -> list[dict]:
    """Every case of :data:`CASES` (or those named in ``only``) in this process; one dict per case (memory in GiB,
    seconds of the step)."""
    from treg_exp.common import seeding
    from treg_exp.models.tiny import TinyStableDiffusionPrior
    from treg_exp.operators.blur import gaussian_deblur
    from treg_exp.solvers.core import Step, denoiser_gradient, residual_norm
    from treg_exp.solvers.daps import likelihood_gradient

    torch.manual_seed(0)
    prior = TinyStableDiffusionPrior(architecture="sd15", dtype="float32").load("cpu")
    generators = seeding.batch_generators(0, ["x"], seeding.SOLVER)
    x = torch.rand(1, 3, resolution, resolution) * 2 - 1
    operator = gaussian_deblur()
    y = operator.measure(x, generators)
    cond = prior.embed_text([""])
    z_t = seeding.randn(prior.latent_shape(x.shape)[1:], generators)
    t, alpha_bar = 500, float(prior.schedule.alphas_cumprod[500])
    step = Step(index=0, t=t, t_prev=t - 1, alpha_bar=alpha_bar, alpha_bar_prev=alpha_bar)
    gluing_target = operator.adjoint(y)
    with torch.no_grad():  # warm the allocator and the kernels with the same shapes, without a graph
        prior.encode(prior.decode(prior.eps(z_t, t, cond)), mode="mean")
    weights = rss_gib("VmRSS")

    rows = []
    for case, checkpointing in CASES:
        if only and case not in only:
            continue
        prior.set_gradient_checkpointing(checkpointing)

        def loss(z0: torch.Tensor, x0: torch.Tensor, case: str = case) -> torch.Tensor:
            value = residual_norm(y, operator, x0)
            if case == "psld":  # Aᵀy + (I − AᵀA)x0 = x0 + Aᵀ(y − A x0), encoded and compared with ẑ0
                glued = x0 + gluing_target - operator.normal(x0)
                value = value + GLUING_WEIGHT * (prior.encode(glued, mode="mean") - z0).flatten(1).norm(dim=1)
            return value

        base = reset_peak()
        prior.reset_counter()
        start = time.perf_counter()
        if case == "latent_daps":
            grad = likelihood_gradient(prior, operator, y, z_t, latent=True, gradient_clip=1.0)[0]
        else:
            grad = denoiser_gradient(prior, z_t, step, lambda z: prior.eps(z, t, cond), loss).grad
        seconds = time.perf_counter() - start
        peak = rss_gib("VmHWM")
        assert torch.isfinite(grad).all()
        del grad
        rows.append(
            {
                "case": case,
                "checkpointing": "on" if checkpointing else "off",
                "resolution": resolution,
                "weights_and_runtime_gib": round(weights, 2),
                "rss_before_gib": round(base, 2),
                "peak_gib": round(peak, 2),
                "activation_gib": round(peak - base, 2),
                "seconds": round(seconds, 1),
                "counts": dict(prior.counter),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--cases", nargs="*", default=None, help="a subset of the cases by name (default: all)")
    args = parser.parse_args()
    measure(args.resolution, args.cases)


if __name__ == "__main__":
    main()
