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


#: the flow grids' base spacings before the shift: ``train`` (diffusers' scheduler default, SD3: N points from σ = 1
#: down to the smallest shifted training σ) and ``uniform`` (FluxPipeline's ``linspace(1, 1/N, N)``)
FLOW_SPACINGS = ("train", "uniform")


@dataclass(frozen=True)
class FlowSchedule:
    """The rectified-flow path ``z_σ = (1−σ)·x0 + σ·ε`` (σ ∈ [0, 1]; the network gets the timestep ``σ·T``) and its
    sampling grids, as diffusers' ``FlowMatchEulerDiscreteScheduler`` spaces them.

    Shifts (REFERENCE.md, flow priors): SD3's constant ``σ ← s·σ/(1 + (s−1)·σ)`` (``shift`` s = 3.0 for SD3 / SD3.5);
    FLUX's resolution-dependent ``σ ← e^μ/(e^μ + 1/σ − 1)`` with ``μ`` linear in the image's token count
    (``use_dynamic_shifting``: ``base_shift`` at ``base_image_seq_len`` tokens to ``max_shift`` at
    ``max_image_seq_len``).

    Attributes:
        num_train_timesteps: T (1000).
        shift: s of the constant shift (1.0: none).
        use_dynamic_shifting: FLUX's μ-shift instead of the constant one.
        base_shift, max_shift, base_image_seq_len, max_image_seq_len: μ's line (0.5, 1.15, 256, 4096).
        spacing: the grid before the shift, one of :data:`FLOW_SPACINGS`.
        sampling_shift: the constant shift the sampling grid applies instead of ``shift`` (``None``: ``shift``), while
            the ``train`` grid's σ_min keeps the training shift — diffusers' scheduler after
            ``scheduler.config.shift = s`` under the 0.30 release FlowDPS pins (σ_min is fixed at construction).
    """

    num_train_timesteps: int = 1000
    shift: float = 1.0
    use_dynamic_shifting: bool = False
    base_shift: float = 0.5
    max_shift: float = 1.15
    base_image_seq_len: int = 256
    max_image_seq_len: int = 4096
    spacing: str = "train"
    sampling_shift: float | None = None

    @classmethod
    def from_diffusers_config(cls, config: dict, spacing: str = "train") -> FlowSchedule:
        """From a ``FlowMatchEulerDiscreteScheduler`` config (``scheduler/scheduler_config.json``)."""
        for key in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "invert_sigmas"):
            if config.get(key):
                raise ValueError(f"unsupported flow scheduler option {key}")
        if config.get("shift_terminal") or config.get("time_shift_type", "exponential") != "exponential":
            raise ValueError("unsupported flow scheduler option shift_terminal / time_shift_type")
        return cls(
            num_train_timesteps=int(config.get("num_train_timesteps", 1000)),
            shift=float(config.get("shift", 1.0)),
            use_dynamic_shifting=bool(config.get("use_dynamic_shifting", False)),
            base_shift=float(config.get("base_shift") or 0.5),
            max_shift=float(config.get("max_shift") or 1.15),
            base_image_seq_len=int(config.get("base_image_seq_len") or 256),
            max_image_seq_len=int(config.get("max_image_seq_len") or 4096),
            spacing=spacing,
        )

    def mu(self, image_seq_len: int) -> float:
        """FLUX's ``μ``: linear in the token count, ``base_shift`` at ``base_image_seq_len``, ``max_shift`` at
        ``max_image_seq_len`` (diffusers' ``calculate_shift``)."""
        slope = (self.max_shift - self.base_shift) / (self.max_image_seq_len - self.base_image_seq_len)
        return image_seq_len * slope + self.base_shift - slope * self.base_image_seq_len

    def shifted(
        self, sigma: torch.Tensor, image_seq_len: int | None = None, shift: float | None = None
    ) -> torch.Tensor:
        """σ after the schedule's shift (constant — ``shift`` when given, else the schedule's —, or FLUX's μ-shift,
        which needs ``image_seq_len``)."""
        if self.use_dynamic_shifting:
            if image_seq_len is None:
                raise ValueError("a resolution-dependent flow shift needs the image's token count")
            e_mu = float(torch.tensor(self.mu(image_seq_len), dtype=torch.float64).exp())
            return e_mu / (e_mu + (1.0 / sigma - 1.0))
        s = self.shift if shift is None else shift
        return s * sigma / (1.0 + (s - 1.0) * sigma)

    def sigmas(self, num_steps: int, image_seq_len: int | None = None) -> torch.Tensor:
        """``[num_steps]`` float64 descending σ of an N-step grid (the terminal σ = 0 not included).

        ``train``: ``shift(linspace(1, σ_min, N))`` with σ_min the smallest training σ after the constant shift
        (``1/T`` under the μ-shift), as diffusers computes it; ``uniform``: ``shift(linspace(1, 1/N, N))``. The outer
        shift is ``sampling_shift`` when set.
        """
        big_t = self.num_train_timesteps
        if self.spacing == "uniform":
            base = torch.linspace(1.0, 1.0 / num_steps, num_steps, dtype=torch.float64)
        elif self.spacing == "train":
            smallest = torch.tensor(1.0 / big_t, dtype=torch.float64)
            sigma_min = float(smallest if self.use_dynamic_shifting else self.shifted(smallest))
            base = torch.linspace(1.0, sigma_min, num_steps, dtype=torch.float64)
        else:
            raise ValueError(f"flow spacing must be one of {FLOW_SPACINGS}, got {self.spacing!r}")
        return self.shifted(base, image_seq_len, self.sampling_shift)
