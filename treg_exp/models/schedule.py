"""The forward-noising schedule of a diffusion prior, ``q(z_t | z_0) = N(√ᾱ_t z_0, (1 − ᾱ_t) I)``."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class NoiseSchedule:
    """ᾱ_t for t = 0 … T−1 plus the conventions a DDIM grid needs.

    Attributes:
        alphas_cumprod: ``[T]`` float64, ᾱ_t.
        final_alpha_cumprod: ᾱ used after the last step (``1.0`` if ``set_alpha_to_one`` else ᾱ_0).
        steps_offset: added to every sampling timestep (SD 1.x: 1).
        timestep_spacing: ``"leading"`` (SD's DDIM default: t = k·(T // N) + offset) or ``"trailing"``.
    """

    alphas_cumprod: torch.Tensor
    final_alpha_cumprod: float
    steps_offset: int = 1
    timestep_spacing: str = "leading"

    @classmethod
    def scaled_linear(
        cls,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        num_train_timesteps: int = 1000,
        set_alpha_to_one: bool = False,
        steps_offset: int = 1,
        timestep_spacing: str = "leading",
    ) -> NoiseSchedule:
        """Stable Diffusion's betas: ``β = linspace(√β_start, √β_end, T)²`` (computed in float32 as diffusers does)."""
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0).double()
        final = 1.0 if set_alpha_to_one else float(alphas_cumprod[0])
        return cls(alphas_cumprod, final, steps_offset, timestep_spacing)

    @classmethod
    def linear(
        cls,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        num_train_timesteps: int = 1000,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        timestep_spacing: str = "leading",
    ) -> NoiseSchedule:
        """DDPM / ADM's linear betas ``β = linspace(β_start, β_end, T)`` in float64, as guided-diffusion computes them.

        Defaults are ADM's sampling conventions: ``steps_offset=0`` with "leading" spacing gives guided-diffusion's
        ``ddimN`` respacing (t = k·(T // N), e.g. 980, 960, …, 0 for 50 steps; 999 … 0 for 1000), and ᾱ after the
        last step is 1 (guided-diffusion's ``alphas_cumprod_prev`` starts with 1.0).
        """
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        final = 1.0 if set_alpha_to_one else float(alphas_cumprod[0])
        return cls(alphas_cumprod, final, steps_offset, timestep_spacing)

    @classmethod
    def from_diffusers_config(cls, config: dict) -> NoiseSchedule:
        """From a diffusers scheduler config (``scheduler/scheduler_config.json``)."""
        if config.get("beta_schedule", "scaled_linear") != "scaled_linear":
            raise ValueError(f"unsupported beta_schedule {config.get('beta_schedule')!r}")
        return cls.scaled_linear(
            beta_start=config.get("beta_start", 0.00085),
            beta_end=config.get("beta_end", 0.012),
            num_train_timesteps=config.get("num_train_timesteps", 1000),
            set_alpha_to_one=config.get("set_alpha_to_one", False),
            steps_offset=config.get("steps_offset", 1),
            timestep_spacing=config.get("timestep_spacing", "leading"),
        )

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])
