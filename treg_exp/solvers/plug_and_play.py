"""What the plug-and-play solvers (DDS, DiffPIR, RED) share: their options and the batch's denoiser.

Each of them alternates the prior's Tweedie denoiser with a data step on ``AᵀA`` (the step itself is the operator's:
:meth:`LinearOperator.prox_l2`, exact where it has a closed form, else CG; :meth:`LinearOperator.solve_damped`, CG
only, for DDS). What is the same in all three lives here once:

- the options ``cg_iters``, ``cg_tol`` (the CG of the data step), ``cfg_scale``, ``null_prompt`` (classifier-free
  guidance with a text prior) and ``encode_mode`` (the encoder posterior's ``mean`` or a ``sample`` on a latent
  prior), checked in :class:`PlugAndPlaySolver`;
- :class:`BatchDenoiser`: the batch's text embeddings, computed once, and the operations on the prior that every
  step uses — ``ε̂`` (with CFG), Tweedie ``x̂0 = D((z_t − √(1−ᾱ_t)·ε̂)/√ᾱ_t)``, ``E(x)``, a fresh noise draw ξ from the
  images' solver generators and the residual norm ``‖A x − y‖`` — each in the prior's state dtype.

Each solver's module keeps its own loop, so that it reads like its paper's algorithm box.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence

import torch

from treg_exp.common import seeding
from treg_exp.common.batch import batch_norm
from treg_exp.common.errors import UserError
from treg_exp.models.base import DiffusionPrior
from treg_exp.operators.base import LinearOperator
from treg_exp.solvers.base import Callback, Solver
from treg_exp.solvers.core import check_batch, guided_prediction, require_alpha_bar_prior, tweedie

ENCODE_MODES = ("mean", "sample")


class BatchDenoiser:
    """The prior's operations for one batch, with the batch's prompts embedded once (under the caller's no_grad).

    Args:
        name: the solver's name, for the batch check's message.
        y: measurements ``[B, ...]``; fixes the device.
        prior, prompts, generators, image_shape: as :meth:`Solver.solve` receives them.
        cfg_scale, null_prompt, encode_mode: the solver's options (:class:`PlugAndPlaySolver`).

    Attributes:
        batch: B; dtype: the prior's state dtype; device: that of ``y``; image_shape: ``[B, 3, H, W]``;
        shape: the prior's state shape ``[B, C, h, w]`` for ``image_shape`` (a size the prior cannot take fails
        here, before any network pass).
    """

    def __init__(
        self,
        name: str,
        y: torch.Tensor,
        prior: DiffusionPrior,
        prompts: Sequence[str],
        generators: Sequence[torch.Generator],
        image_shape: Sequence[int],
        cfg_scale: float,
        null_prompt: str,
        encode_mode: str,
    ) -> None:
        self.batch = check_batch(name, y, prompts, generators, image_shape)
        self.prior = prior
        self.generators = generators
        self.cfg_scale = cfg_scale
        self.encode_mode = encode_mode
        self.dtype = prior.state_dtype
        self.device = y.device
        self.cond = prior.embed_text(list(prompts)).to(self.dtype)
        self.uncond = prior.null_embedding(self.batch, null_prompt).to(self.dtype)
        self.image_shape = tuple(image_shape)
        self.shape = prior.latent_shape(image_shape)

    def initial_noise(self, alpha_bar: float) -> torch.Tensor:
        """The prior's starting state ``z_T`` ``[B, C, h, w]`` at ``ᾱ_T`` (:meth:`DiffusionPrior.initial_noise`)."""
        return self.prior.initial_noise(self.shape, self.generators, dtype=self.dtype, alpha_bar=alpha_bar).to(
            self.device
        )

    def eps(self, z_t: torch.Tensor, t: int) -> torch.Tensor:
        """``ε̂(z_t, t)`` with classifier-free guidance (:func:`~treg_exp.solvers.core.guided_prediction`),
        ``[B, C, h, w]``."""
        return guided_prediction(self.prior, z_t, t, self.cond, self.uncond, self.cfg_scale).to(self.dtype)

    def x0(self, z_t: torch.Tensor, eps: torch.Tensor, alpha_bar: float) -> torch.Tensor:
        """Tweedie's estimate decoded: ``D((z_t − √(1−ᾱ_t)·ε̂)/√ᾱ_t)``, ``[B, 3, H, W]``."""
        return self.prior.decode(tweedie(z_t, eps, alpha_bar)).to(self.dtype)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``D(z)``: ``[B, C, h, w]`` → ``[B, 3, H, W]`` (the identity on a pixel prior)."""
        return self.prior.decode(z).to(self.dtype)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``E(x)`` by ``encode_mode`` (a ``sample`` draws from the images' generators): ``[B, C, h, w]``."""
        return self.prior.encode(x, self.generators, mode=self.encode_mode).to(self.dtype)

    def noise(self) -> torch.Tensor:
        """A fresh ξ ``[B, C, h, w]``, image ``b``'s from its own solver generator (so no batch dependence)."""
        return seeding.randn(self.shape[1:], self.generators, device=self.device, dtype=self.dtype)

    def residual(self, operator: LinearOperator, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``‖A x − y‖`` per image ``[B]`` (one operator application; a diagnostic)."""
        return batch_norm(operator(x).to(self.dtype) - y.to(self.dtype))


class PlugAndPlaySolver(Solver):
    """A solver that alternates the prior's denoiser with a data step; checks and keeps the shared options.

    Args:
        cg_iters, cg_tol: CG iterations and early stop on the residual norm of the data step (where it runs CG).
        cfg_scale: classifier-free guidance with a text prior (0 = the null prompt only).
        null_prompt: the prompt of the unconditional branch.
        encode_mode: ``mean`` or ``sample`` of the encoder posterior (latent priors).
    """

    def __init__(self, cg_iters: int, cg_tol: float, cfg_scale: float, null_prompt: str, encode_mode: str) -> None:
        if int(cg_iters) < 0 or float(cg_tol) < 0:
            raise UserError("solver.cg_iters and solver.cg_tol must be >= 0")
        if float(cfg_scale) < 0:
            raise UserError(f"solver.cfg_scale must be >= 0, got {cfg_scale}")
        if encode_mode not in ENCODE_MODES:
            raise UserError(f"solver.encode_mode must be one of {ENCODE_MODES}, got {encode_mode!r}")
        self.cg_iters = int(cg_iters)
        self.cg_tol = float(cg_tol)
        self.cfg_scale = float(cfg_scale)
        self.null_prompt = str(null_prompt)
        self.encode_mode = encode_mode

    def check_prior(self, prior: DiffusionPrior) -> None:
        """Not defined for rectified-flow priors: the denoiser's noise levels (σ̄_t, ᾱ-grids) are ᾱ-schedule ones."""
        require_alpha_bar_prior(
            type(self).__name__, prior, "its noise levels and re-noising are written for ᾱ schedules"
        )

    def solve(
        self,
        y: torch.Tensor,
        operator: LinearOperator,
        prior: DiffusionPrior,
        prompts: Sequence[str],
        generators: Sequence[torch.Generator],
        image_shape: Sequence[int],
        callback: Callback | None = None,
    ) -> torch.Tensor:
        """Reconstruct a batch (see :meth:`Solver.solve`): ``y`` ``[B, ...]`` → ``x̂`` ``[B, 3, H, W]`` in [−1, 1].

        Builds the batch's :class:`BatchDenoiser` and runs :meth:`iterate` without gradients (no network gradient
        is taken by these methods); its result is clamped and returned in float32."""
        self.check_prior(prior)
        with torch.no_grad():
            denoiser = BatchDenoiser(
                type(self).__name__,
                y,
                prior,
                prompts,
                generators,
                image_shape,
                self.cfg_scale,
                self.null_prompt,
                self.encode_mode,
            )
            x = self.iterate(y, operator, denoiser, callback)
        return x.clamp(-1.0, 1.0).float()

    @abstractmethod
    def iterate(
        self, y: torch.Tensor, operator: LinearOperator, denoiser: BatchDenoiser, callback: Callback | None
    ) -> torch.Tensor:
        """The method's algorithm box: ``y`` ``[B, ...]`` → ``x̂`` ``[B, 3, H, W]`` in the prior's state dtype."""
