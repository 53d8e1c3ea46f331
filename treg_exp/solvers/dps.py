"""DPS: diffusion posterior sampling (Chung, Kim, Mccann, Klasky, Ye; ICLR 2023), on any prior.

Source: the official code ``DPS2022/diffusion-posterior-sampling``: ``guided_diffusion/condition_methods.py``
(``PosteriorSampling``, the ``ps`` method), ``guided_diffusion/gaussian_diffusion.py`` (``p_sample_loop``, the
``DDPM`` sampler, ``SpacedDiffusion``), ``guided_diffusion/posterior_mean_variance.py`` (``learned_range``) and
``configs/*_config.yaml``, at commit effbde7325b22ce8dc3e2c06c160c021e743a12d. With ``x_T ~ N(0, I)`` and for the
grid t = T−1 … 0 (``t′`` the next grid point, ᾱ_{t′} = 1 after the last; β_t = 1 − ᾱ_t/ᾱ_{t′}, α_t = 1 − β_t)::

    (ε̂, v) = network(x_t, t)                                        (ε and the variance channels, one call)
    x̂0  = clip((x_t − √(1−ᾱ_t)·ε̂) / √ᾱ_t, −1, 1)                   (``clip_denoised: True``)
    x′  = √ᾱ_{t′}·β_t/(1−ᾱ_t)·x̂0 + √α_t·(1−ᾱ_{t′})/(1−ᾱ_t)·x_t + σ_t·ξ   (DDPM ancestral, no noise at the last step)
    x_{t′} = x′ − ζ·∇_{x_t} ‖y − A(x̂0)‖₂                             (the norm, not its square)

with ``log σ_t² = f·log β_t + (1 − f)·log β̃_t``, ``f = (v + 1)/2``, ``β̃_t = β_t(1 − ᾱ_{t′})/(1 − ᾱ_t)``
(``model_var_type: learned_range``; at the last step β̃ of the step before, unused there).

and the output is the final ``x_{−1}``. This is the DPS-family loop of :mod:`treg_exp.solvers.ldps` with DPS's
defaults, so on a latent prior it is exactly LDPS with DDPM sampling (the gradient w.r.t. ``z_t`` through decoder,
Tweedie and UNet) and on a pixel prior, whose ``D`` and ``E`` are identities, literally DPS.

Defaults: 1000 steps on the ``respaced`` grid (the official ``timestep_respacing: N`` spacing, ``space_timesteps``:
999, 979, 958, …, 20, 0 for 50 steps; every t at 1000), ``ddpm_variance=auto`` (the learned variance on priors that
have one, the ADM checkpoints; β̃ = ``fixed_small`` on the others, e.g. the Gaussian and latent priors),
``sampler=ddpm``, ζ = ``step_size`` = 0.3 (``gaussian_deblur``, ``motion_deblur`` and
``super_resolution`` configs) and 0.5 for inpainting (``conf/solver_task/dps_inpaint_*.yaml``), tuned by DPS at
σ_y = 0.05 on 256 px FFHQ (this project's default σ_y is 0.01), the textbook ᾱ_t pairing (``alpha_index_shift=0``,
as guided-diffusion), ``clip_denoised=auto`` (on pixel priors; a latent is not clamped), no text (``cfg_scale=0``).
``sampler=ddim`` with ``eta`` is P2L's variant ("we use 1000 NFE DDIM sampling", η grid-searched [unverified]).

Departures from the official code, and why:

- None in the algorithm at the defaults: ``tests/test_official_pixel_parity.py`` checks this solver against a float64
  transcription of the official loop (learned range, respaced grid) on a random-weight ADM to 1e-6. The official
  code casts its float64 coefficient tables to float32 at every step (``extract_and_expand``); here they stay
  float64 (a difference at float32 rounding). Departure flags:
  ``ddpm_variance=small|large`` (fixed β̃ or β instead of the learned variance), ``grid=leading`` (the ``ddimN``
  grid 980, 960, …, 0 below 1000 steps), ``sampler=ddim``.
- The norm is per image (the official ``torch.linalg.norm`` over the batch tensor couples the images of a batch).
- Random draws come from each image's solver generator (``z_T``, then ξ per step), not the global RNG.

Cost per image: ``num_steps`` network calls with a backward pass each, ``num_steps`` decodes (identities on a pixel
prior, counted) and one output decode.

Rectified-flow priors: only ``sampler=ddim`` (the flow step of ``core.sampler_step``); the DDPM ancestral step, the
default, is an ᾱ-schedule posterior and refuses in one line (``DPSFamily.check_prior``).
"""

from __future__ import annotations

from treg_exp.solvers.ldps import DPSFamily


class DPS(DPSFamily):
    """DPS (module docstring): the DPS-family loop with DPS's defaults. Args as :class:`DPSFamily`."""

    name = "DPS"

    def __init__(
        self,
        step_size: float = 0.3,
        sampler: str = "ddpm",
        alpha_index_shift: int = 0,
        clip_denoised: bool | str = "auto",
        grid: str = "respaced",
        **family,
    ) -> None:
        super().__init__(
            step_size=step_size,
            sampler=sampler,
            grid=grid,
            alpha_index_shift=alpha_index_shift,
            clip_denoised=clip_denoised,
            **family,
        )
