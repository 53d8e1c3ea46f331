"""DiffPIR: denoising diffusion models for plug-and-play image restoration (Zhu et al., CVPRW 2023; arXiv 2305.08995).

The method, as the official code (``yuanzhi-zhu/DiffPIR``: ``main_ddpir_deblur.py``, ``main_ddpir_sisr.py``,
``main_ddpir_inpainting.py`` with ``utils/utils_model.py``) computes it. Notation: ``ᾱ_t`` the prior's schedule,
``σ̄_t = √(1−ᾱ_t)/√ᾱ_t`` the noise level of ``x_t/√ᾱ_t``, ``A`` the operator with measurement ``y`` and noise
``σ_y`` (on the [−1, 1] scale), ``D``/``E`` the prior's decoder/encoder (identities on a pixel prior).

Grid (``skip_type``): ``quad`` (official) takes ``s_i = ⌊√(i·T²/(N−1))⌋`` for i = 0 … N−1, with the last one
lowered by 1, and ``t_i = T − 1 − s_i``: N = ``num_steps`` (100) steps from t = 999 to t = 0, dense near t = 0;
``uniform`` takes the shared DDIM grid (``core.ddim_plan``).

Start (``init``): ``measurement`` (official, ``main_ddpir_deblur.py``) noises the measurement, brought to image size,
from its own noise level to the first grid point T: ``x_T = √(ᾱ_T/ᾱ_{t_y})·ỹ + √((1−ᾱ_T) − (ᾱ_T/ᾱ_{t_y})(1−ᾱ_{t_y}))·ξ``
with ``t_y`` the t whose ``σ̄_t`` is nearest σ_y (``core.timestep_for_sigma``; the official
``find_nearest(reduced_alpha_cumprod, 2·noise_level_img)``, σ_y on [−1, 1]) and ``ỹ = y`` where ``y`` has the
image's shape (blur, inpainting), else the bicubic upsampling of the operator's ``measurement_image(y)`` (SR; the
official SR script's ``cv2.resize(..., INTER_CUBIC)``); on a latent prior ``E(ỹ)`` (``encode_mode``). With ADM's
schedule the weight of ``ỹ`` is 0.0064/√ᾱ_{t_y}, so the start is nearly pure noise. ``noise`` starts from the prior's
``initial_noise``. Then at every step but the last:

1. ``x̂0 = D(ẑ0)``, ``ẑ0 = (x_t − √(1−ᾱ_t)·ε(x_t, t))/√ᾱ_t``, clamped to [−1, 1] (``clip_x0``: the official
   ``p_sample(..., clip_denoised=True)`` returns the clamped ``pred_xstart``);
2. the data step ``x̂0(y) = argmin_x ‖y − Ax‖² + ρ_t‖x − x̂0‖²`` with ``ρ_t = λ·σ_n²/σ̄_t²`` (λ = ``rho_lambda``),
   by :meth:`LinearOperator.prox_l2`: exact where the operator has a closed form (masks, circular blur by FFT,
   separable SR and SVD operators by their Gram eigenvectors), else CG (``cg_iters``, ``cg_tol``) from ``x̂0``;
3. ``ε̂ = (x_t − √ᾱ_t·E(x̂0(y)))/√(1−ᾱ_t)`` (recomputed from the data-consistent estimate, as the official code does)
   and the re-noise ``x_{t'} = √ᾱ_{t'}·E(x̂0(y)) + √(1−ᾱ_{t'})·(√(1−ζ)·ε̂ + √ζ·ξ)`` to the next grid point t'
   (``core.renoise`` with ``σ = √ζ·√(1−ᾱ_{t'})``);
4. with ``sub_iters`` U > 1 (official default 1), steps 1–3 repeat U times at each t, the state being noised back
   from t' to t in between: ``x_t = √(ᾱ_t/ᾱ_{t'})·x_{t'} + √(1 − ᾱ_t/ᾱ_{t'})·ξ``.

The last step (t = 0 on the quad grid) has no data step and no re-noise. ``output=state`` (official) returns the state
``x_0`` (``D(x_0)`` for a latent prior) that the previous step's re-noise produced; the official code still runs the
network at t = 0 and discards its estimate, which this module skips (so ``num_steps − 1`` network passes).
``output=x0`` instead returns that last step's ``x̂0`` (one more pass).

Noise level of ρ_t: the official scripts measure ``σ_n`` on the [0, 1] image scale (``noise_level_img`` = 12.75/255
is added as ``2·noise_level_img`` on [−1, 1]) and solve the data step on [0, 1] images, for which ρ is the same as
on [−1, 1]. So ``σ_n = max(sigma_n_min, sigma_n_scale·σ_y)`` with ``sigma_n_scale`` 0.5 (official) and
``sigma_n_min`` 0.001 (the official ``max(0.001, noise_level_img)``). ``sigma_n_scale: 1.0`` reads the paper's
formula with σ_y on the [−1, 1] scale, where σ̄_t lives: ρ four times the official one (the same as λ × 4).

Per-task values (``conf/solver_task/diffpir_<task>.yaml``), from the official scripts as last committed: Gaussian
and motion deblurring ``rho_lambda`` 7.0, ζ 0.3 (the deblur script's final sweep ``range(7, 8)`` × ``0.1·3``);
SR ζ 0.25 with λ swept over 2–12 (``range(2, 13)``; no single value is committed, 7.0 is used here [unverified]);
inpainting λ 1.0, ζ 1.0 at 20 NFE (``main_ddpir_inpainting.py``, noise-free ``y``). Defaults are the deblurring ones.

Latent priors: the network runs on latents, the data step in pixel space: ``x̂0 = D(ẑ0)``, and ``E(x̂0(y))``
(``encode_mode``: ``mean`` by default) enters step 3. There is no official latent DiffPIR.

Cost per image: ``num_steps − 1`` (``output=state``) or ``num_steps`` (``output=x0``) network calls per sub-iteration
of 1 row (2 with CFG), as many decodes, ``(num_steps − 1)·U`` encodes (one more for ``init=measurement``;
identities counted on a pixel prior) and data steps (closed form: one ``Aᵀ`` and an FFT pair or four small
matmuls; CG: up to ``cg_iters + 1`` ``AᵀA``), plus one decode of the output; no backward pass.

Diagnostics via ``callback(step_index, values)``, each ``[B]``: ``rho`` (ρ_t) and ``dc/residual_after``
(‖A x̂0(y) − y‖, one extra operator application).

Departures from the official code, and why:

- Initial state (``init=measurement``): the deblurring script's formula for every task. The official SR script
  noises its upsampled ``y`` with ``√ᾱ_999`` and ``√(1−ᾱ_999)`` (no ``t_y``), the inpainting script uses the masked
  ``y`` on the [0, 1] scale; both weights are below 0.007, as here.
- The wasted network pass at t = 0 with ``output=state`` is skipped (same output, one pass fewer).
- ``skip_type=uniform``: the official uniform grid has N + 1 points (``i·skip`` plus 999); here it is the shared
  DDIM grid of exactly ``num_steps`` points, so that every solver's ``num_steps`` counts its steps.
- DDIM η inside the re-noise (official ``eta``, default 0, with a single-step ``β_t`` in its σ) is not offered: it
  is 0 in every official script.
- Data step: the official closed forms are FFT-based (USRNet's ``data_solution`` for circular blur and
  ``sf``-decimated SR) or the mask formula; here the operator's own exact closed form is used where it has one, and
  CG where it has none (reflect- or zero-padded blurs; the official deblur script uses ``wrap`` padding, i.e.
  ``task.padding=circular``).
- Randomness: from the image's solver generator on the CPU (``seeding.randn``), not the global GPU RNG.
- Text: the official model is unconditional; with a text prior the null prompt is used (``cfg_scale`` 0), and
  ``cfg_scale`` > 0 applies classifier-free guidance with the image's prompt.
- Precision: the state and the data step are float32 (float64 for a float64 prior).

Rectified-flow priors: not defined (its ``σ̄_t``-matched timesteps and re-noising are ᾱ-schedule steps);
``PlugAndPlaySolver.check_prior`` says so in one line.
"""

from __future__ import annotations

import numpy as np
import torch

from treg_exp.common.errors import UserError
from treg_exp.models.schedule import NoiseSchedule
from treg_exp.operators.base import LinearOperator
from treg_exp.solvers.base import Callback
from treg_exp.solvers.core import Step, ddim_plan, plan_from_timesteps, renoise, timestep_for_sigma
from treg_exp.solvers.plug_and_play import BatchDenoiser, PlugAndPlaySolver

SKIP_TYPES = ("quad", "uniform")
OUTPUTS = ("state", "x0")
INITS = ("measurement", "noise")


def quad_timesteps(num_train_timesteps: int, num_steps: int) -> list[int]:
    """The official ``skip_type="quad"`` grid, descending: ``t_i = T − 1 − ⌊√(linspace(0, T², N))_i⌋`` (last: 0).

    ``numpy`` float64, as the official code computes it, so the truncations are the same.
    """
    big_t = int(num_train_timesteps)
    seq = [int(s) for s in np.sqrt(np.linspace(0, big_t**2, num_steps))]
    seq[-1] = seq[-1] - 1
    return [big_t - 1 - s for s in seq]


def diffpir_plan(schedule: NoiseSchedule, num_steps: int, skip_type: str = "quad") -> list[Step]:
    """DiffPIR's grid as :class:`~treg_exp.solvers.core.Step` s (textbook ᾱ_t; ``t_prev = −1`` after the last)."""
    if skip_type == "uniform":
        return ddim_plan(schedule, num_steps)
    big_t = schedule.num_train_timesteps
    if not 2 <= num_steps <= big_t:
        raise UserError(f"solver.num_steps must be in 2..{big_t} for skip_type=quad, got {num_steps}")
    grid = quad_timesteps(big_t, num_steps)
    if len(set(grid)) != len(grid):
        raise UserError(f"skip_type=quad with num_steps={num_steps} repeats timesteps; use fewer steps")
    return plan_from_timesteps(schedule, grid)


class DiffPIR(PlugAndPlaySolver):
    """DiffPIR (see the module docstring for the method, the per-task values and the departures).

    Args:
        num_steps: grid points N (official 100; 20 for inpainting).
        rho_lambda: λ of ``ρ_t = λσ_n²/σ̄_t²`` (official deblur 7.0).
        zeta: ζ, the fresh-noise fraction of the re-noise (official deblur 0.3).
        skip_type: ``quad`` (official) or ``uniform`` (the shared DDIM grid).
        sigma_n_scale, sigma_n_min: ``σ_n = max(sigma_n_min, sigma_n_scale·σ_y)`` (official 0.5, 0.001).
        clip_x0: clamp ``x̂0`` to [−1, 1] before the data step (official).
        sub_iters: repetitions U of each step (official 1).
        output: ``state`` (official: the final state) or ``x0`` (the last step's ``x̂0``).
        cg_iters, cg_tol: the CG of operators without a closed-form data step.
        cfg_scale, null_prompt: classifier-free guidance with a text prior (0 = null prompt only).
        encode_mode: ``mean`` or ``sample`` of the encoder posterior (latent priors).
        init: ``measurement`` (official: ``y`` noised to the first grid point) or ``noise``.
    """

    def __init__(
        self,
        num_steps: int = 100,
        rho_lambda: float = 7.0,
        zeta: float = 0.3,
        skip_type: str = "quad",
        sigma_n_scale: float = 0.5,
        sigma_n_min: float = 0.001,
        clip_x0: bool = True,
        sub_iters: int = 1,
        output: str = "state",
        cg_iters: int = 20,
        cg_tol: float = 1e-6,
        cfg_scale: float = 0.0,
        null_prompt: str = "",
        encode_mode: str = "mean",
        init: str = "measurement",
    ) -> None:
        if init not in INITS:
            raise UserError(f"solver.init must be one of {INITS}, got {init!r}")
        if skip_type not in SKIP_TYPES:
            raise UserError(f"solver.skip_type must be one of {SKIP_TYPES}, got {skip_type!r}")
        if int(num_steps) < 2:
            raise UserError(f"solver.num_steps must be at least 2, got {num_steps}")
        if not float(rho_lambda) > 0:
            raise UserError(f"solver.rho_lambda must be positive, got {rho_lambda}")
        if not 0.0 <= float(zeta) <= 1.0:
            raise UserError(f"solver.zeta must be in [0, 1], got {zeta}")
        if not float(sigma_n_scale) > 0 or float(sigma_n_min) < 0:
            raise UserError("solver.sigma_n_scale must be positive and solver.sigma_n_min >= 0")
        if int(sub_iters) < 1:
            raise UserError(f"solver.sub_iters must be at least 1, got {sub_iters}")
        if output not in OUTPUTS:
            raise UserError(f"solver.output must be one of {OUTPUTS}, got {output!r}")
        super().__init__(cg_iters, cg_tol, cfg_scale, null_prompt, encode_mode)
        self.num_steps = int(num_steps)
        self.rho_lambda = float(rho_lambda)
        self.zeta = float(zeta)
        self.skip_type = skip_type
        self.sigma_n_scale = float(sigma_n_scale)
        self.sigma_n_min = float(sigma_n_min)
        self.clip_x0 = bool(clip_x0)
        self.sub_iters = int(sub_iters)
        self.output = output
        self.init = init

    def measurement_start(
        self,
        y: torch.Tensor,
        operator: LinearOperator,
        denoiser: BatchDenoiser,
        first: Step,
    ) -> torch.Tensor:
        """The official start ``x_T = √(ᾱ_T/ᾱ_{t_y})·E(ỹ) + √((1−ᾱ_T) − (ᾱ_T/ᾱ_{t_y})(1−ᾱ_{t_y}))·ξ`` (module
        docstring), ``[B, C, h, w]`` in the prior's state dtype; ξ is the image's first solver draw."""
        if tuple(y.shape) == denoiser.image_shape:
            image = y.to(denoiser.dtype)
        else:
            picture = operator.measurement_image(y).to(denoiser.dtype)
            image = torch.nn.functional.interpolate(
                picture, size=denoiser.image_shape[-2:], mode="bicubic", align_corners=False
            )
        start = denoiser.encode(image)
        _, alpha_bar_y = timestep_for_sigma(denoiser.prior.schedule, operator.sigma_y)
        weight2 = first.alpha_bar / alpha_bar_y
        noise = denoiser.noise()
        return weight2**0.5 * start + max((1.0 - first.alpha_bar) - weight2 * (1.0 - alpha_bar_y), 0.0) ** 0.5 * noise

    def rho(self, sigma_y: float, alpha_bar: float) -> float:
        """``ρ_t = λ·σ_n²/σ̄_t²`` with ``σ_n = max(sigma_n_min, sigma_n_scale·σ_y)``, ``σ̄_t² = (1−ᾱ_t)/ᾱ_t``."""
        sigma_n = max(self.sigma_n_min, self.sigma_n_scale * float(sigma_y))
        return self.rho_lambda * sigma_n**2 * alpha_bar / (1.0 - alpha_bar)

    def iterate(
        self, y: torch.Tensor, operator: LinearOperator, denoiser: BatchDenoiser, callback: Callback | None
    ) -> torch.Tensor:
        """The DiffPIR loop (module docstring, steps 1–4): ``y`` ``[B, ...]`` → ``x_0`` or ``x̂0`` ``[B, 3, H, W]``."""
        plan = diffpir_plan(denoiser.prior.schedule, self.num_steps, self.skip_type)
        if self.init == "measurement":
            z = self.measurement_start(y, operator, denoiser, plan[0]).to(denoiser.device)
        else:
            z = denoiser.initial_noise(plan[0].alpha_bar)

        def denoised(z_t: torch.Tensor, step: Step) -> torch.Tensor:
            x0 = denoiser.x0(z_t, denoiser.eps(z_t, step.t), step.alpha_bar)
            return x0.clamp(-1.0, 1.0) if self.clip_x0 else x0

        for step in plan[:-1]:
            ab, abp = step.alpha_bar, step.alpha_bar_prev
            rho = self.rho(operator.sigma_y, ab)
            for u in range(self.sub_iters):
                x0 = denoised(z, step)
                x0y = operator.prox_l2(y, x0, rho, self.cg_iters, self.cg_tol).to(denoiser.dtype)
                z0y = denoiser.encode(x0y)
                eps_hat = (z - ab**0.5 * z0y) / (1.0 - ab) ** 0.5
                z = renoise(z0y, eps_hat, abp, (self.zeta * (1.0 - abp)) ** 0.5, denoiser.noise())
                if u < self.sub_iters - 1:  # back from t' to t (RePaint-style repetition)
                    z = (ab / abp) ** 0.5 * z + max(1.0 - ab / abp, 0.0) ** 0.5 * denoiser.noise()
            if callback is not None:
                rhos = torch.full((denoiser.batch,), rho)
                callback(step.index, {"rho": rhos, "dc/residual_after": denoiser.residual(operator, x0y, y)})
        x = denoised(z, plan[-1]) if self.output == "x0" else denoiser.decode(z)
        return x
