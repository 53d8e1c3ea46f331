"""The small deblurring problem and solver runner the tiny latent-prior tests (SD3, SDXL) share."""

from __future__ import annotations

import torch

from treg_exp.common import seeding
from treg_exp.operators.blur import gaussian_deblur


def blurred_problem(size: int):
    """A 9×9 Gaussian blur (σ = 2) of a random image in [−0.9, 0.9] with 0.01 noise, fixed seed: ``(A, y)``."""
    operator = gaussian_deblur(kernel_size=9, kernel_sigma=2.0)
    gen = torch.Generator().manual_seed(5)
    x = (torch.rand(1, 3, size, size, generator=gen) * 2 - 1).clamp(-0.9, 0.9)
    return operator, operator(x) + 0.01 * torch.randn(operator(x).shape, generator=gen)


def run_solver(solver, prior, y, operator, size: int, callback=None):
    """One image of ``size`` px, prompt "a photo", the runner's solver stream of image ``img``."""
    generators = seeding.batch_generators(0, ["img"], seeding.SOLVER)
    return solver.solve(y, operator, prior, ["a photo"], generators, (1, 3, size, size), callback)
