"""``solver=ddim``: text-to-image DDIM sampling with classifier-free guidance; it ignores the measurement.

A baseline and a check of the shared core: with ``alpha_index_shift=0``, ``eta=0`` and ``output="latent"`` it
computes what diffusers' ``StableDiffusionPipeline`` with a ``DDIMScheduler`` computes from the same initial latent
(tested to 1e-4 on the tiny model). Notation (REFERENCE.md): per step of the grid,
``ε̂ = ε(z_t, c_∅) + ω(ε(z_t, c) − ε(z_t, c_∅))`` (one UNet call of 2B rows), ``ẑ0 = (z_t − √(1−ᾱ_t)·ε̂)/√ᾱ_t``,
``z_prev = √ᾱ_prev·ẑ0 + √(1−ᾱ_prev−σ²)·ε̂ + σ·ξ`` with ``σ = η·√((1−ᾱ_prev)/(1−ᾱ_t))·√(1−ᾱ_t/ᾱ_prev)``;
ξ is drawn per image from its solver generator (only when η > 0).

Output: ``"x0"`` decodes the last step's ``ẑ0`` (as TReg and most inverse solvers do); ``"latent"`` decodes the final
latent ``z_0`` (diffusers' convention). Both clamped to [−1, 1], float32.

Cost per image: ``num_steps`` UNet calls of 2 rows (1 when ``guidance_scale`` is 0 or 1) and one decode.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from treg_exp.common import seeding
from treg_exp.common.errors import UserError
from treg_exp.models.base import DiffusionPrior
from treg_exp.operators.base import LinearOperator
from treg_exp.solvers import core
from treg_exp.solvers.base import Callback, Solver

OUTPUTS = ("x0", "latent")


class DDIMSolver(Solver):
    """DDIM text-to-image sampling (Song et al., 2021) with CFG, built on :mod:`treg_exp.solvers.core`.

    Args:
        num_steps: grid size N (diffusers' "leading" spacing for SD: t = 981, 961, …, 1 for 50 steps).
        eta: η of DDIM (0 = deterministic).
        guidance_scale: ω of CFG (0 = unconditional only, 1 = conditional only).
        alpha_index_shift: 0 textbook ᾱ_t (diffusers), 1 the official TReg pairing ᾱ_{t−1}.
        null_prompt: the prompt of ``c_∅``.
        output: ``"x0"`` (decode of the last ẑ0) or ``"latent"`` (decode of the final latent, as diffusers).
    """

    uses_measurement = False

    def __init__(
        self,
        num_steps: int = 50,
        eta: float = 0.0,
        guidance_scale: float = 7.5,
        alpha_index_shift: int = 0,
        null_prompt: str = "",
        output: str = "x0",
    ) -> None:
        if int(num_steps) < 1:
            raise UserError(f"solver.num_steps must be at least 1, got {num_steps}")
        if float(eta) < 0.0:
            raise UserError(f"solver.eta must be non-negative, got {eta}")
        if int(alpha_index_shift) not in (0, 1):
            raise UserError(f"solver.alpha_index_shift must be 0 or 1, got {alpha_index_shift}")
        if output not in OUTPUTS:
            raise UserError(f"solver.output must be one of {OUTPUTS}, got {output!r}")
        self.num_steps = int(num_steps)
        self.eta = float(eta)
        self.guidance_scale = float(guidance_scale)
        self.alpha_index_shift = int(alpha_index_shift)
        self.null_prompt = str(null_prompt)
        self.output = output

    def solve(
        self,
        y: torch.Tensor | None,
        operator: LinearOperator | None,
        prior: DiffusionPrior,
        prompts: Sequence[str],
        generators: Sequence[torch.Generator],
        image_shape: Sequence[int],
        callback: Callback | None = None,
        initial_latent: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Sample ``B = image_shape[0]`` images; ``y`` and ``operator`` are ignored.

        Args:
            prompts: one prompt per image; generators: one CPU generator per image (draws ``z_T``, then ξ).
            image_shape: ``[B, 3, H, W]``.
            initial_latent: optional ``z_T`` ``[B, C, H/f, W/f]`` to start from instead of ``prior.initial_noise``.

        Returns:
            ``[B, 3, H, W]`` in [−1, 1], float32.
        """
        batch = int(image_shape[0])
        if len(prompts) != batch or len(generators) != batch:
            raise UserError(f"ddim: {len(prompts)} prompts and {len(generators)} generators for {batch} images")
        dtype = prior.state_dtype
        shape = prior.latent_shape(image_shape)
        plan = core.sampling_plan(
            prior.schedule, self.num_steps, self.alpha_index_shift, prior.image_seq_len(image_shape)
        )
        with torch.no_grad():
            if initial_latent is None:
                z = prior.initial_noise(shape, generators, dtype=dtype, alpha_bar=plan[0].alpha_bar)
            else:
                if tuple(initial_latent.shape) != tuple(shape):
                    raise UserError(f"ddim: initial_latent has shape {tuple(initial_latent.shape)}, expected {shape}")
                z = initial_latent.to(device=prior.device, dtype=dtype)
            cond = prior.embed_text(list(prompts)).to(dtype)
            uncond = prior.null_embedding(batch, self.null_prompt).to(dtype)
            z0 = z
            for step in plan:
                z0, eps = core.denoise(prior, z, step, cond, uncond, self.guidance_scale, dtype)
                noise = None
                if self.eta > 0.0:
                    noise = seeding.randn(shape[1:], generators, device=z.device, dtype=dtype)
                z = core.sampler_step(z0, eps, step, self.eta, noise)
                if callback is not None:
                    callback(step.index, {"timestep": torch.full((batch,), float(step.t)), "z0_rms": _rms(z0)})
            x = prior.decode(z0 if self.output == "x0" else z)
        return x.clamp(-1.0, 1.0).float()


def _rms(z: torch.Tensor) -> torch.Tensor:
    """Per-image root mean square ``[B]`` (a cheap trajectory diagnostic)."""
    return z.flatten(1).pow(2).mean(dim=1).sqrt().float().cpu()
