"""How close a solver's reconstructions are to the exact posterior, on the exact Gaussian prior.

Under ``model=gaussian`` the posterior ``p(x | y)`` of a linear problem is a known Gaussian with mean ``m`` and
covariance ``Σ_post`` (:mod:`treg_exp.solvers.oracles`). For measurements ``y_i`` of images ``x_i`` drawn from the
prior, a solver run with K seeds gives reconstructions ``x̂_ik``; with ``x̄_i`` their mean, ``s_ik`` K exact
posterior samples and ``τ_i = (1/K) Σ_k ‖s_ik − m_i‖²`` (an unbiased estimate of ``tr Σ_post,i``):

- ``mse_ratio = Σ_ik ‖x̂_ik − x_i‖² / Σ_ik ‖s_ik − x_i‖²``: 1 for an exact sampler, about 0.5 for the posterior
  mean (which is the MSE optimum);
- ``spread_ratio = Σ_i S_i / Σ_i τ_i`` with ``S_i = 1/(K−1) Σ_k ‖x̂_ik − x̄_i‖²`` the trace of the reconstructions'
  sample covariance: 1 for an exact sampler, 0 for a deterministic method;
- ``bias2 = Σ_i (‖x̄_i − m_i‖² − S_i/K) / Σ_i τ_i``: the squared distance of the reconstructions' mean from the
  posterior mean, as a fraction of the posterior variance, with the finite-K part ``S_i/K`` removed so that it
  estimates 0 for an exact sampler (it can then be slightly negative);
- ``adjoint_mse_ratio`` and ``adjoint_bias2``: the same MSE ratio and squared distance to ``m`` for ``Aᵀy``
  (clamped), the naive reconstruction. A sampler's MSE can exceed it (an exact posterior sample's MSE is twice the
  posterior variance, which on smooth problems can be more than ``Aᵀy``'s); its bias must not.

The solvers clamp their output to [−1, 1] (their interface); so that clamping does not bias these numbers, the
calibration prior has ``pixel_std`` 0.3 (0.09 % of pixels beyond ±1) and the references are compared clamped too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from treg_exp.common import seeding
from treg_exp.models.gaussian import GaussianPrior
from treg_exp.operators.base import LinearOperator
from treg_exp.solvers.base import Solver
from treg_exp.solvers.oracles import PosteriorMean, PosteriorSample

#: the calibration prior's pixel standard deviation: small enough that clamping to [−1, 1] barely matters
CALIBRATION_PIXEL_STD = 0.3


@dataclass(frozen=True)
class Calibration:
    """The numbers of one solver on one problem (see the module docstring)."""

    mse_ratio: float
    spread_ratio: float
    bias2: float
    adjoint_mse_ratio: float
    adjoint_bias2: float
    images: int
    seeds: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class Problem:
    """Measurements of prior draws, with the exact posterior's mean and K samples.

    Attributes:
        x: ``[N, 3, H, W]`` the true images (float64, prior draws).
        y: the measurements ``[N, ...]``.
        operator: the forward model with its per-image parameters drawn.
        prior: the Gaussian prior (float64).
        ids: image ids (seed the solver streams).
        prompts: one prompt per image.
        posterior_mean: ``[N, 3, H, W]`` ``m_i``.
        posterior_samples: ``[K, N, 3, H, W]`` exact posterior samples ``s_ik``.
    """

    x: torch.Tensor
    y: torch.Tensor
    operator: LinearOperator
    prior: GaussianPrior
    ids: list[str]
    prompts: list[str]
    posterior_mean: torch.Tensor
    posterior_samples: torch.Tensor

    @property
    def seeds(self) -> int:
        return int(self.posterior_samples.shape[0])


def solver_seed(k: int) -> int:
    """The run seed of reconstruction ``k`` (its solver streams); exact samples use ``1000 + k``, apart from them."""
    return k


def make_problem(
    operator: LinearOperator,
    num_images: int = 4,
    resolution: int = 64,
    seeds: int = 4,
    prior: GaussianPrior | None = None,
    prompt: str = "",
    seed: int = 0,
) -> Problem:
    """Draw ``num_images`` images from the prior, measure them, and compute the exact posterior references.

    The images, operator parameters and noise come from ``seed``'s per-image streams (as the runner draws them),
    the K exact posterior samples from seeds ``1000 + k``.
    """
    prior = prior or GaussianPrior(pixel_std=CALIBRATION_PIXEL_STD, dtype="float64").load("cpu")
    ids = [f"calib_{i:04d}" for i in range(num_images)]
    prompts = [prompt] * num_images
    mean = prior.embed_text(prompts)
    data_gens = seeding.batch_generators(seed, ids, "data")
    x = prior.sample(mean, data_gens, resolution, resolution)
    measurement_gens = seeding.batch_generators(seed, ids, seeding.MEASUREMENT)
    operator = operator.draw(measurement_gens, x.shape)
    y = operator.measure(x, measurement_gens)
    oracle = PosteriorMean(tol=1e-10)
    m = oracle.posterior(y, operator, prior, prompts, x.shape)
    sampler = PosteriorSample(tol=1e-10)
    samples = torch.stack(
        [
            sampler.posterior(y, operator, prior, prompts, x.shape, seeding.batch_generators(1000 + k, ids, "solver"))
            for k in range(seeds)
        ]
    )
    return Problem(x, y, operator, prior, ids, prompts, m, samples)


def reconstructions(solver: Solver, problem: Problem, prior=None) -> torch.Tensor:
    """``[K, N, 3, H, W]`` float64: the solver run on every measurement with K seeds (``solver_seed(k)``)."""
    prior = prior or problem.prior
    runs = []
    for k in range(problem.seeds):
        generators = seeding.batch_generators(solver_seed(k), problem.ids, seeding.SOLVER)
        out = solver.solve(problem.y, problem.operator, prior, problem.prompts, generators, problem.x.shape)
        runs.append(out.double())
    return torch.stack(runs)


def _sq(a: torch.Tensor) -> torch.Tensor:
    """Per-image squared norms ``[..., N]`` of ``[..., N, 3, H, W]``."""
    flat = a.flatten(-3)
    return (flat * flat).sum(-1)


def score(recon: torch.Tensor, problem: Problem) -> Calibration:
    """The calibration numbers of reconstructions ``[K, N, 3, H, W]`` against ``problem``'s exact posterior."""
    k = recon.shape[0]
    if k < 2:
        raise ValueError("calibration needs at least 2 reconstructions per measurement (the spread)")
    x = problem.x.clamp(-1.0, 1.0)
    mean_ref = problem.posterior_mean.clamp(-1.0, 1.0)
    samples = problem.posterior_samples.clamp(-1.0, 1.0)
    tau = _sq(samples - mean_ref).mean(0).sum()
    sample_mse = _sq(samples - x).sum()
    recon_mean = recon.mean(0)
    spread = _sq(recon - recon_mean).sum(0) / (k - 1)
    bias2 = (_sq(recon_mean - mean_ref) - spread / k).sum()
    adjoint = problem.operator.adjoint(problem.y).double().clamp(-1.0, 1.0)
    return Calibration(
        mse_ratio=float(_sq(recon - x).sum() / sample_mse),
        spread_ratio=float(spread.sum() / tau),
        bias2=float(bias2 / tau),
        adjoint_mse_ratio=float(_sq(adjoint - x).sum() * k / sample_mse),
        adjoint_bias2=float(_sq(adjoint - mean_ref).sum() / tau),
        images=int(recon.shape[1]),
        seeds=int(k),
    )


def calibrate(solver: Solver, problem: Problem, prior=None) -> Calibration:
    """Run ``solver`` on ``problem`` with K seeds and score it (``prior``: another prior object, e.g. float32)."""
    return score(reconstructions(solver, problem, prior), problem)


def exact_sampler_check(problem: Problem) -> Calibration:
    """The check of the check: fresh exact posterior samples (other seeds) scored like a solver (≈1, ≈1, ≈0)."""
    return calibrate(PosteriorSample(tol=1e-10), problem)
