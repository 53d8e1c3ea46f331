"""``model=gaussian``: a stationary Gaussian image prior whose score, posterior mean and posterior samples are exact.

Definition (issue 3), so that anyone can recompute its answers:

- Each of the 3 channels is independent, with mean ``μ_c`` (a constant colour chosen by the prompt) and covariance
  Σ diagonal in the orthonormal 2-D DFT of the H×W grid (periodic boundary), with power spectrum
  ``P(k) = s²·(1 + (|k|/k0)²)^(−α/2)``, ``|k|`` in cycles per image (``torch.fft.fftfreq(n) * n`` on each axis).
  ``s²`` is set per grid size so that the mean of ``P`` over the H×W grid, i.e. the pixel variance, is
  ``pixel_std²`` (0.25 by default). The spectrum is computed for the size of each input and cached per size.
- Samples: ``x = μ + ifft2(√P · fft2(n, norm="ortho"), norm="ortho").real`` with ``n`` white noise.
- Text: ``prompt_means`` maps prompts to channel means in [−1, 1]; ``embed_text`` returns ``[B, 3]`` means and
  ``null_embedding`` the mean of ``""``. ε is affine in μ, so classifier-free guidance with scale ω is exactly the
  prior with mean ``μ_∅ + ω(μ_c − μ_∅)`` (:meth:`GaussianPrior.cfg_equivalent_mean`).
- Schedule: SD 1.x's betas (scaled-linear 0.00085 → 0.012, T = 1000) with ``steps_offset=0``, so 1000 sampling
  steps give t = 999 … 0. ``q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I)`` gives, per frequency,
  ``E[x0 | x_t] = μ + √ᾱ_t·P/(ᾱ_t·P + 1 − ᾱ_t)·(x_t − √ᾱ_t·μ)`` and ``ε = (x_t − √ᾱ_t·E[x0|x_t]) / √(1 − ᾱ_t)``.
- Consistency map (LATINO): the probability-flow ODE ``dx̄/dσ̄ = ε̂`` (``x̄ = x/√ᾱ``, ``σ̄² = (1 − ᾱ)/ᾱ``) moves
  each frequency of ``x̄ − μ`` by ``σ̄/(P + σ̄²)``, so ``x̄ − μ`` scales as ``√(P + σ̄²)`` and its end point at σ̄ = 0
  is ``x0 = μ + √P/√(ᾱ_t·P + 1 − ᾱ_t)·(x_t − √ᾱ_t·μ)`` (:meth:`GaussianPrior.consistency_x0`): the map an ideal
  consistency model learns, in closed form.
- ``x_T`` is not N(0, I) here (``ᾱ_T·P(0)`` is 2.45 at 256 px): :meth:`GaussianPrior.initial_noise` draws the exact
  marginal ``q(x_T) = N(√ᾱ_T μ, ᾱ_T Σ + (1 − ᾱ_T) I)`` at T = 999.

It is a pixel-space prior: ``encode``/``decode`` are identities (counted like a VAE's passes so that solvers'
cost accounting works the same), ``latent_factor = 1``, ``latent_channels = 3``. It has no image encoder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from treg_exp.common import seeding
from treg_exp.common.devices import parse_dtype
from treg_exp.common.errors import UserError
from treg_exp.models.base import DiffusionPrior
from treg_exp.models.schedule import FlowSchedule, NoiseSchedule

#: The default prompt → channel-mean table (values in [−1, 1]); ``""`` is the null prompt.
DEFAULT_PROMPT_MEANS: dict[str, tuple[float, float, float]] = {
    "": (0.0, 0.0, 0.0),
    "gray": (0.0, 0.0, 0.0),
    "red": (0.5, -0.5, -0.5),
    "green": (-0.5, 0.5, -0.5),
    "blue": (-0.5, -0.5, 0.5),
    "yellow": (0.5, 0.5, -0.5),
    "white": (0.5, 0.5, 0.5),
    "black": (-0.5, -0.5, -0.5),
}


def spectral_filter(x: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """``ifft2(gain · fft2(x, ortho), ortho).real`` over the last two axes.

    Args:
        x: ``[..., H, W]`` real.
        gain: ``[H, W]`` or ``[..., H, W]`` real and even (``gain(k) = gain(−k)``), so the half-spectrum FFT is
            exact and the result is real.
    """
    h, w = x.shape[-2:]
    spectrum = torch.fft.rfft2(x, norm="ortho")
    spectrum = spectrum * gain[..., : w // 2 + 1].to(spectrum.real.dtype)
    return torch.fft.irfft2(spectrum, s=(h, w), norm="ortho")


class GaussianPrior(DiffusionPrior):
    """Per-channel stationary Gaussian prior with an exact, closed-form ε (see the module docstring).

    Args:
        prompt_means: prompt → ``[μ_R, μ_G, μ_B]`` in [−1, 1]; must contain ``""`` (the null prompt).
            Default :data:`DEFAULT_PROMPT_MEANS`.
        pixel_std: the pixel standard deviation (``s²`` makes the mean of ``P`` equal ``pixel_std²``).
        alpha: the spectral slope α of ``P(k) = s²·(1 + (|k|/k0)²)^(−α/2)``.
        k0: the knee ``k0`` in cycles per image.
        dtype: ``"float32"`` (default) or ``"float64"`` (tests); the arithmetic runs in it, outputs keep the
            dtype of the input.
        unknown_prompt: ``"error"`` (default: a one-line :class:`UserError` listing the known prompts) or
            ``"null_mean"`` (an unknown prompt gets the null prompt's mean; for running on photo datasets whose
            captions this prior cannot know).
    """

    latent_channels = 3
    latent_factor = 1
    consistency_model = True

    def __init__(
        self,
        prompt_means: Mapping[str, Sequence[float]] | None = None,
        pixel_std: float = 0.5,
        alpha: float = 2.0,
        k0: float = 1.0,
        dtype: str | torch.dtype = "float32",
        unknown_prompt: str = "error",
    ) -> None:
        super().__init__()
        table = DEFAULT_PROMPT_MEANS if prompt_means is None else prompt_means
        means: dict[str, tuple[float, ...]] = {}
        for prompt, values in table.items():
            values = tuple(float(v) for v in values)
            if len(values) != 3 or not all(-1.0 <= v <= 1.0 for v in values):
                raise UserError(f"prompt_means[{prompt!r}] must be 3 channel means in [-1, 1], got {list(values)}")
            means[str(prompt)] = values
        if "" not in means:
            raise UserError('prompt_means must contain the null prompt "" (its mean is the null embedding)')
        if pixel_std <= 0 or k0 <= 0:
            raise UserError(f"pixel_std and k0 must be positive, got pixel_std={pixel_std}, k0={k0}")
        if unknown_prompt not in ("error", "null_mean"):
            raise UserError(f"unknown_prompt must be 'error' or 'null_mean', got {unknown_prompt!r}")
        self.prompts = list(means)
        self.pixel_std = float(pixel_std)
        self.alpha = float(alpha)
        self.k0 = float(k0)
        self.dtype = parse_dtype(dtype, allowed=(torch.float32, torch.float64))
        self.unknown_prompt = unknown_prompt
        # A buffer, so that `load(device)` / `.to(device)` moves the table and `self.device` follows it.
        self.register_buffer("mean_table", torch.tensor(list(means.values()), dtype=torch.float64), persistent=False)
        self.schedule = NoiseSchedule.scaled_linear(steps_offset=0, set_alpha_to_one=False)
        self._spectra: dict[tuple, torch.Tensor] = {}

    # --- the covariance ----------------------------------------------------------------------------------------
    def power_spectrum(
        self, height: int, width: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """``P(k)`` ``[H, W]`` on the (unshifted) FFT grid, eigenvalues of Σ for one channel; cached per size."""
        device = torch.device(device) if device is not None else self.device
        dtype = dtype or self.dtype
        key = (height, width, device, dtype)
        if key not in self._spectra:
            ky = torch.fft.fftfreq(height, dtype=torch.float64) * height
            kx = torch.fft.fftfreq(width, dtype=torch.float64) * width
            k2 = (ky[:, None] ** 2 + kx[None, :] ** 2) / self.k0**2
            shape = (1.0 + k2) ** (-self.alpha / 2.0)
            # s² from the pixel variance: with the orthonormal DFT, Var(x_i) = mean_k P(k).
            power = shape * (self.pixel_std**2 / shape.mean())
            self._spectra[key] = power.to(device=device, dtype=dtype)
        return self._spectra[key]

    def apply_covariance(self, x: torch.Tensor, power: float = 1.0) -> torch.Tensor:
        """``Σ^power x`` per channel (``power`` −1: Σ⁻¹, 0.5: Σ^{1/2}); ``x`` ``[..., H, W]``, computed in its dtype."""
        spectrum = self.power_spectrum(*x.shape[-2:], device=x.device, dtype=x.dtype)
        return spectral_filter(x, spectrum**power)

    def mean_image(self, cond: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """The constant-colour image ``μ`` ``[B, 3, H, W]`` of channel means ``cond`` ``[B, 3]``."""
        return cond[:, :, None, None].expand(-1, -1, height, width)

    def sample(
        self, cond: torch.Tensor, generators: Sequence[torch.Generator], height: int, width: int
    ) -> torch.Tensor:
        """Prior draws ``x = μ + Σ^{1/2} n`` ``[B, 3, H, W]``, ``n`` row b from ``generators[b]``; ``cond``'s dtype."""
        noise = seeding.randn((3, height, width), generators, device=cond.device, dtype=cond.dtype)
        return self.mean_image(cond, height, width) + self.apply_covariance(noise, 0.5)

    # --- text ---------------------------------------------------------------------------------------------------
    def embed_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """Channel means ``μ`` ``[B, 3]`` (in ``self.dtype``) of each prompt."""
        rows = []
        for prompt in prompts:
            if prompt in self.prompts:
                rows.append(self.prompts.index(prompt))
            elif self.unknown_prompt == "null_mean":
                rows.append(self.prompts.index(""))
            else:
                known = ", ".join(repr(p) for p in self.prompts)
                raise UserError(
                    f"GaussianPrior does not know the prompt {prompt!r}; known prompts: {known} "
                    "(set data.prompt to one of them, or model.unknown_prompt=null_mean to use the null mean)"
                )
        self.counter.add("text", len(rows))
        return self.mean_table[rows].to(self.dtype)

    @staticmethod
    def cfg_equivalent_mean(cond: torch.Tensor, uncond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
        """The mean ``μ_∅ + ω(μ_c − μ_∅)`` whose exact ε equals CFG ``ε(c_∅) + ω(ε(c) − ε(c_∅))`` (ε is affine in μ)."""
        return uncond + guidance_scale * (cond - uncond)

    # --- networks ------------------------------------------------------------------------------------------
    def encode(
        self, x: torch.Tensor, generators: Sequence[torch.Generator] | None = None, mode: str = "sample"
    ) -> torch.Tensor:
        """Identity (pixel-space prior), counted as one encoder pass of B rows. ``[B, 3, H, W]`` → same."""
        if mode not in ("sample", "mean"):
            raise ValueError(f"mode must be 'sample' or 'mean', got {mode!r}")
        self.counter.add("encode", x.shape[0])
        return x.clone()

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Identity (pixel-space prior), counted as one decoder pass of B rows. ``[B, 3, H, W]`` → same."""
        self.counter.add("decode", z.shape[0])
        return z.clone()

    def posterior_x0(self, z_t: torch.Tensor, alpha_bar: float, cond: torch.Tensor) -> torch.Tensor:
        """``E[x0 | x_t] = μ + √ᾱ·P/(ᾱ·P + 1 − ᾱ)·(x_t − √ᾱ·μ)`` per frequency, ``[B, 3, H, W]`` in ``self.dtype``."""
        x = z_t.to(self.dtype)
        h, w = x.shape[-2:]
        mu = self.mean_image(cond.to(device=x.device, dtype=self.dtype), h, w)
        power = self.power_spectrum(h, w, device=x.device)
        gain = alpha_bar**0.5 * power / (alpha_bar * power + 1.0 - alpha_bar)
        return mu + spectral_filter(x - alpha_bar**0.5 * mu, gain)

    def eps(self, z_t: torch.Tensor, t: int, cond: torch.Tensor) -> torch.Tensor:
        """Exact ``ε(x_t, t, μ) = (x_t − √ᾱ_t·E[x0|x_t]) / √(1 − ᾱ_t)``.

        Args:
            z_t: ``[B, 3, H, W]`` (any H×W).
            t: timestep in 0 … 999 (ᾱ_t = ``schedule.alphas_cumprod[t]``).
            cond: ``[B, 3]`` channel means (from :meth:`embed_text`).

        Returns:
            ``[B, 3, H, W]`` in ``z_t``'s dtype (computed in ``self.dtype``). Counted as one UNet call of B rows.
        """
        t = int(t)
        if not 0 <= t < self.schedule.num_train_timesteps:
            raise ValueError(f"timestep {t} outside 0..{self.schedule.num_train_timesteps - 1}")
        if cond.shape != (z_t.shape[0], 3):
            raise ValueError(f"GaussianPrior cond must be [B, 3] channel means, got {tuple(cond.shape)}")
        self.counter.add("unet", z_t.shape[0])
        alpha_bar = float(self.schedule.alphas_cumprod[t])
        x = z_t.to(self.dtype)
        power = self.power_spectrum(*x.shape[-2:], device=x.device)
        # Substituting E[x0|x_t] into ε gives one filter, √(1−ᾱ)/(ᾱP + 1 − ᾱ) on x_t − √ᾱ·μ, i.e.
        # ε = −√(1−ᾱ)·∇log q(x_t): one FFT pair per call instead of two.
        gain = (1.0 - alpha_bar) ** 0.5 / (alpha_bar * power + 1.0 - alpha_bar)
        shifted = x - alpha_bar**0.5 * cond.to(device=x.device, dtype=self.dtype)[:, :, None, None]
        return spectral_filter(shifted, gain).to(z_t.dtype)

    def consistency_x0(self, z_t: torch.Tensor, t: int, cond: torch.Tensor) -> torch.Tensor:
        """The exact probability-flow ODE end point ``x0 = μ + √P/√(ᾱ_t·P + 1 − ᾱ_t)·(x_t − √ᾱ_t·μ)`` per frequency
        (module docstring), ``[B, 3, H, W]`` in ``z_t``'s dtype, computed in ``self.dtype``; differentiable in
        ``cond`` ``[B, 3]``. Counted as one UNet call of B rows (the pass a consistency network makes)."""
        t = int(t)
        if not 0 <= t < self.schedule.num_train_timesteps:
            raise ValueError(f"timestep {t} outside 0..{self.schedule.num_train_timesteps - 1}")
        self.counter.add("unet", z_t.shape[0], cond.requires_grad)
        alpha_bar = float(self.schedule.alphas_cumprod[t])
        x = z_t.to(self.dtype)
        h, w = x.shape[-2:]
        mu = self.mean_image(cond.to(device=x.device, dtype=self.dtype), h, w)
        power = self.power_spectrum(h, w, device=x.device)
        gain = (power / (alpha_bar * power + 1.0 - alpha_bar)).sqrt()
        return (mu + spectral_filter(x - alpha_bar**0.5 * mu, gain)).to(z_t.dtype)

    def initial_noise(
        self,
        shape: Sequence[int],
        generators: Sequence[torch.Generator],
        dtype: torch.dtype = torch.float32,
        alpha_bar: float | None = None,
        cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """A draw of ``x_T`` from the exact marginal ``q(x_T) = N(√ᾱ_T μ, ᾱ_T Σ + (1 − ᾱ_T) I)``.

        Args:
            shape: ``[B, 3, H, W]``.
            generators: one CPU generator per row.
            dtype: of the result (the filtering runs in float64 when ``dtype`` or the prior's dtype is float64).
            alpha_bar: ᾱ_T of the sampler's first step (default ᾱ_999, the first step of a 1000-step grid; a
                200-step grid starts at t = 995, whose ᾱ the solvers pass).
            cond: ``[B, 3]`` channel means μ; default the null prompt's mean (zero with the default table), since
                the generic interface has no prompt. With a non-null prompt the mismatch is ``√ᾱ_T·(μ_c − μ_∅)``
                (≤ 0.07 for means in [−1, 1]), against a per-pixel standard deviation near 1.
        """
        b, c, h, w = shape
        if c != 3:
            raise ValueError(f"GaussianPrior images have 3 channels, got shape {tuple(shape)}")
        work = torch.float64 if torch.float64 in (dtype, self.dtype) else torch.float32
        if cond is None:
            cond = self.mean_table[[self.prompts.index("")] * b]
        cond = cond.to(device=self.device, dtype=work)
        alpha_bar = float(self.schedule.alphas_cumprod[-1]) if alpha_bar is None else float(alpha_bar)
        noise = seeding.randn((c, h, w), generators, device=self.device, dtype=work)
        power = self.power_spectrum(h, w, device=self.device, dtype=work)
        marginal = spectral_filter(noise, (alpha_bar * power + 1.0 - alpha_bar).sqrt())
        return (alpha_bar**0.5 * self.mean_image(cond, h, w) + marginal).to(dtype)


class GaussianFlowPrior(GaussianPrior):
    """``model=gaussian_flow``: the same Gaussian data as :class:`GaussianPrior` on the rectified-flow path
    ``x_σ = (1−σ)·x0 + σ·ε`` (σ = t/T), with the exact velocity ``v(x_σ) = E[ε − x0 | x_σ]``.

    Per frequency, ``x_σ ~ N((1−σ)μ, (1−σ)²P + σ²)`` and ``E[x0 | x_σ] = μ + (1−σ)P/((1−σ)²P + σ²)·(x_σ − (1−σ)μ)``;
    since ``ε = (x_σ − (1−σ)x0)/σ``, ``v = (x_σ − E[x0|x_σ])/σ``, which is one filter on ``d = x_σ − (1−σ)μ``:
    ``v = (σ − (1−σ)P)/((1−σ)²P + σ²)·d − μ`` (finite at σ = 0, where it is ``−x0``). The posterior of a linear
    problem is the Gaussian prior's (the oracles are unchanged), so flow solvers get calibration rows against it.

    Args:
        shift: the schedule's constant shift s of ``σ ← s·σ/(1 + (s−1)·σ)`` (3.0 as SD3's; 1.0: none).
        prompt_means, pixel_std, alpha, k0, dtype, unknown_prompt: as for :class:`GaussianPrior`.
    """

    prediction_type = "flow"
    #: LATINO's loop (ᾱ noise levels, LCM boundary condition) is not written for the flow path
    consistency_model = False

    def __init__(
        self,
        prompt_means: Mapping[str, Sequence[float]] | None = None,
        pixel_std: float = 0.5,
        alpha: float = 2.0,
        k0: float = 1.0,
        dtype: str | torch.dtype = "float32",
        unknown_prompt: str = "error",
        shift: float = 3.0,
    ) -> None:
        super().__init__(prompt_means, pixel_std, alpha, k0, dtype, unknown_prompt)
        if shift <= 0:
            raise UserError(f"model.shift must be positive, got {shift}")
        self.schedule = FlowSchedule(shift=float(shift))

    def _sigma(self, t: float) -> float:
        sigma = float(t) / self.schedule.num_train_timesteps
        if not 0.0 <= sigma <= 1.0:
            raise ValueError(f"timestep {t} outside 0..{self.schedule.num_train_timesteps}")
        return sigma

    def velocity(self, z_t: torch.Tensor, sigma: float, cond: torch.Tensor) -> torch.Tensor:
        """Exact ``v = (σ − (1−σ)P)/((1−σ)²P + σ²)·(x_σ − (1−σ)μ) − μ`` ``[B, 3, H, W]`` in ``self.dtype``."""
        if cond.shape != (z_t.shape[0], 3):
            raise ValueError(f"GaussianFlowPrior cond must be [B, 3] channel means, got {tuple(cond.shape)}")
        x = z_t.to(self.dtype)
        mu = cond.to(device=x.device, dtype=self.dtype)[:, :, None, None]
        power = self.power_spectrum(*x.shape[-2:], device=x.device)
        gain = (sigma - (1.0 - sigma) * power) / ((1.0 - sigma) ** 2 * power + sigma**2)
        return spectral_filter(x - (1.0 - sigma) * mu, gain) - mu

    def predict(self, z_t: torch.Tensor, t: int | float, cond: torch.Tensor) -> torch.Tensor:
        """The exact velocity at σ = t/T, ``[B, 3, H, W]`` in ``z_t``'s dtype; counted as one UNet call of B rows."""
        sigma = self._sigma(t)
        self.counter.add("unet", z_t.shape[0])
        return self.velocity(z_t, sigma, cond).to(z_t.dtype)

    def eps(self, z_t: torch.Tensor, t: int | float, cond: torch.Tensor) -> torch.Tensor:
        """``E[ε | x_σ] = x_σ + (1−σ)·v`` at σ = t/T (one UNet call of B rows)."""
        return z_t + (1.0 - self._sigma(t)) * self.predict(z_t, t, cond)

    def initial_noise(
        self,
        shape: Sequence[int],
        generators: Sequence[torch.Generator],
        dtype: torch.dtype = torch.float32,
        alpha_bar: float | None = None,
        cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """A draw from the exact marginal ``N((1−σ)μ, (1−σ)²Σ + σ²I)``; σ from ``alpha_bar``, the ᾱ twin of the
        sampler's first step (``solvers.core.flow_alpha_bar``; default 0, i.e. σ = 1: pure noise)."""
        b, c, h, w = shape
        if c != 3:
            raise ValueError(f"GaussianFlowPrior images have 3 channels, got shape {tuple(shape)}")
        work = torch.float64 if torch.float64 in (dtype, self.dtype) else torch.float32
        if cond is None:
            cond = self.mean_table[[self.prompts.index("")] * b]
        cond = cond.to(device=self.device, dtype=work)
        snr = 0.0 if not alpha_bar else (float(alpha_bar) / (1.0 - float(alpha_bar))) ** 0.5
        sigma = 1.0 / (1.0 + snr)  # (1−σ)/σ = √(ᾱ/(1−ᾱ))
        noise = seeding.randn((c, h, w), generators, device=self.device, dtype=work)
        power = self.power_spectrum(h, w, device=self.device, dtype=work)
        marginal = spectral_filter(noise, ((1.0 - sigma) ** 2 * power + sigma**2).sqrt())
        return ((1.0 - sigma) * self.mean_image(cond, h, w) + marginal).to(dtype)
