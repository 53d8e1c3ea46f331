"""What a solver needs from a diffusion prior, whatever its space (latent or pixel)."""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from treg_exp.common import seeding
from treg_exp.common.errors import UserError
from treg_exp.models.schedule import NoiseSchedule


class NetworkCounter(Counter):
    """Network evaluations, calls and rows kept apart: ``unet_calls``/``unet_rows``, ``encode_*``, ``decode_*``,
    ``clip_image_*``, ``text_*``. A CFG pair of B images is one UNet call of 2B rows. Rows whose output carries an
    autograd graph (a backward pass through that network may follow: DPS-style guidance, prompt tuning, latent
    optimisation) are also counted in ``<network>_grad_rows``, so costs can price the backward passes."""

    def add(self, network: str, rows: int, graph: bool = False) -> None:
        self[f"{network}_calls"] += 1
        self[f"{network}_rows"] += rows
        if graph:
            self[f"{network}_grad_rows"] += rows


class DiffusionPrior(nn.Module, ABC):
    """A diffusion model seen as a prior on images ``x ∈ [−1, 1]^{3×H×W}``.

    Subclasses set ``schedule`` (a :class:`NoiseSchedule`), ``latent_channels`` and ``latent_factor`` (8 for
    Stable Diffusion's VAE, 1 for pixel-space priors), and implement the abstract methods. Weights are loaded
    lazily by :meth:`load`, so building the object from a config needs none; :meth:`load` raises
    :class:`treg_exp.common.errors.WeightsNotFoundError` with one line when they are missing.

    Every network pass is counted in ``self.counter`` (see :class:`NetworkCounter`).
    """

    schedule: NoiseSchedule
    latent_channels: int
    latent_factor: int
    #: dtype the networks run in; solvers keep their own state (CG, embeddings under Adam) in float32 or wider.
    dtype: torch.dtype = torch.float32

    def __init__(self) -> None:
        super().__init__()
        self.counter = NetworkCounter()

    @property
    def state_dtype(self) -> torch.dtype:
        """The dtype solvers keep their state in (latents, CG, embeddings under Adam): float64 for a float64 prior
        (reference tests), float32 otherwise, whatever half precision the networks run in."""
        return torch.float64 if self.dtype == torch.float64 else torch.float32

    # --- lifecycle -------------------------------------------------------------------------------------------
    def load(self, device: torch.device | str = "cpu") -> DiffusionPrior:
        """Load weights (if any) and move to ``device``. Idempotent."""
        return self.to(device)

    #: the text encoders among the prior's submodules (what ``offload_text_encoders`` keeps on the CPU)
    text_encoder_names: tuple[str, ...] = ()
    #: keep the text encoders on the CPU and run them there (``model.offload_text_encoders``): the device holds only
    #: the denoiser and the VAE; the conditioning is cached per prompt and moved to :attr:`device`
    offload_text_encoders: bool = False

    @property
    def device(self) -> torch.device:
        """The denoiser's device (the text encoders' may differ: :attr:`text_device`)."""
        for name, module in self.named_children():
            if name not in self.text_encoder_names:
                for tensor in itertools.chain(module.parameters(), module.buffers()):
                    return tensor.device
        for tensor in self.buffers(recurse=False):
            return tensor.device
        return torch.device("cpu")

    @property
    def text_device(self) -> torch.device:
        """Where the text encoders run: the CPU under ``offload_text_encoders``, else :attr:`device`."""
        return torch.device("cpu") if self.offload_text_encoders else self.device

    def to(self, *args: Any, **kwargs: Any) -> DiffusionPrior:
        """``nn.Module.to``; under ``offload_text_encoders`` the text encoders go to the CPU instead (never through
        the device: a T5-XXL copy there would need the memory the option saves). Priors with text encoders keep
        every tensor in a submodule, so moving the submodules moves them all."""
        if not self.offload_text_encoders:
            return super().to(*args, **kwargs)
        for name, module in self.named_children():
            if name in self.text_encoder_names:
                torch.nn.Module.to(module, "cpu")
            else:
                module.to(*args, **kwargs)
        return self

    def reset_counter(self) -> None:
        self.counter.clear()

    # --- shapes and noise ----------------------------------------------------------------------------------
    def latent_shape(self, image_shape: Sequence[int]) -> tuple[int, int, int, int]:
        """``[B, 3, H, W]`` image shape → ``[B, C, H/f, W/f]`` latent shape."""
        b, _, h, w = image_shape
        f = self.latent_factor
        if h % f or w % f:
            raise UserError(f"image size {h}x{w} is not a multiple of the prior's latent factor {f}")
        return (b, self.latent_channels, h // f, w // f)

    def image_seq_len(self, image_shape: Sequence[int]) -> int | None:
        """The token count a resolution-dependent flow shift reads (FLUX: latent patches of 2×2); ``None`` for priors
        whose grid does not depend on the image size (this default)."""
        return None

    def initial_noise(
        self,
        shape: Sequence[int],
        generators: Sequence[torch.Generator],
        dtype: torch.dtype = torch.float32,
        alpha_bar: float | None = None,
    ) -> torch.Tensor:
        """A draw of ``z_T`` for a latent batch ``shape``: N(0, I) unless the prior's marginal q(z_T) differs.

        ``alpha_bar``: the ᾱ the sampler's first step pairs with ``z_T`` (default ᾱ of the last training step);
        priors whose marginal is exactly known (the Gaussian one) draw from ``q`` at that ᾱ.
        """
        return seeding.randn(shape[1:], generators, device=self.device, dtype=dtype)

    # --- networks --------------------------------------------------------------------------------------------
    @abstractmethod
    def encode(
        self, x: torch.Tensor, generators: Sequence[torch.Generator] | None = None, mode: str = "sample"
    ) -> torch.Tensor:
        """``E(x)``: ``[B, 3, H, W]`` in [−1, 1] → ``[B, C, h, w]``.

        ``mode``: ``"sample"`` (the encoder posterior's sample, noise from ``generators``) or ``"mean"``.
        """

    @abstractmethod
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``D(z)``: ``[B, C, h, w]`` → ``[B, 3, H, W]`` (nominally in [−1, 1], not clamped)."""

    @abstractmethod
    def eps(self, z_t: torch.Tensor, t: int, cond: torch.Tensor) -> torch.Tensor:
        """Noise prediction ε(z_t, t, c) ``[B, C, h, w]`` (v-prediction models are converted to ε)."""

    #: what :meth:`predict` returns, read from the model's scheduler config where it has one: ``epsilon`` (ε),
    #: ``v_prediction`` (the network predicts v; :meth:`predict` returns it converted to ε) or ``flow`` (the
    #: rectified-flow velocity ``v = ε − x0``). ``solvers.core.split_prediction`` turns it into ``(ẑ0, ε̂)``.
    prediction_type: str = "epsilon"

    def predict(self, z_t: torch.Tensor, t: int | float, cond: torch.Tensor) -> torch.Tensor:
        """The network's prediction ``[B, C, h, w]`` in the parameterisation solvers combine (CFG is linear in it):
        ε for ε and v priors (this default: :meth:`eps`), the velocity for flow priors; one network call."""
        return self.eps(z_t, t, cond)

    #: whether the network is a consistency model — a map from ``z_t`` to the end point of the probability-flow ODE
    #: in one pass (LCM-LoRA fused into SD's UNet; the Gaussian prior's exact map): what :meth:`consistency_x0` needs
    consistency_model: bool = False

    def consistency_x0(self, z_t: torch.Tensor, t: int, cond: torch.Tensor) -> torch.Tensor:
        """The consistency model's clean estimate ``ẑ0 = (z_t − √(1−ᾱ_t)·ε_θ(z_t, t, c))/√ᾱ_t`` ``[B, C, h, w]``, in
        ``z_t``'s dtype; one network call (differentiable in ``cond`` when gradients are on).

        This is what diffusers' ``LCMScheduler.step`` calls ``predicted_original_sample`` (an ε network distilled
        into a consistency model keeps the ε parameterisation); the boundary condition
        ``c_skip(t)·z_t + c_out(t)·ẑ0`` is the sampler's (``solvers.latino``). A one-line :class:`UserError` where the
        prior is no consistency model (:attr:`consistency_model`).
        """
        if not self.consistency_model:
            raise UserError(
                f"{type(self).__name__} is not a consistency model: load a consistency LoRA (model.lora, e.g. "
                "latent-consistency/lcm-lora-sdv1-5 on SD 1.5) or use model=gaussian (its exact consistency map)"
            )
        alpha_bar = float(self.schedule.alphas_cumprod[int(t)])
        eps = self.eps(z_t, t, cond).to(z_t.dtype)
        return (z_t - (1.0 - alpha_bar) ** 0.5 * eps) / alpha_bar**0.5

    #: whether :meth:`model_output` returns the variance channels ``v`` of a learned DDPM variance (ADM's
    #: ``learn_sigma``); :meth:`learned_log_variance` turns them into the ancestral step's log σ².
    has_learned_variance: bool = False

    def model_output(self, z_t: torch.Tensor, t: int, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The network's raw output split as ``(ε, v)``, each ``[B, C, h, w]``; one network call.

        ``v`` (nominally in [−1, 1]) is the learned-variance interpolation of :meth:`learned_log_variance`; ``None``
        where the prior has no learned variance (this default: ``(eps(z_t, t, c), None)``).
        """
        return self.eps(z_t, t, cond), None

    def learned_log_variance(
        self, v: torch.Tensor | None, alpha_bars: Sequence[float], index: int
    ) -> torch.Tensor | None:
        """``log σ²`` ``[B, C, h, w]`` of the DDPM ancestral step ``index`` of a grid from :meth:`model_output`'s v.

        guided-diffusion's ``LEARNED_RANGE`` (``p_mean_variance``): for the step ᾱ_t → ᾱ_prev of the grid
        (``alpha_bars``, noisiest first, ᾱ = 1 after the last), ``β_t = 1 − ᾱ_t/ᾱ_prev``,
        ``β̃_t = β_t·(1 − ᾱ_prev)/(1 − ᾱ_t)`` and ``log σ² = f·log β_t + (1 − f)·log β̃_t`` with ``f = (v + 1)/2``.
        ``None`` where the prior has no learned variance (this default).
        """
        return None

    @abstractmethod
    def embed_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """Text conditioning ``c`` for each prompt, ``[B, ...]`` (SD: ``[B, 77, D]`` CLIP hidden states)."""

    def null_embedding(self, batch_size: int, null_prompt: str = "") -> torch.Tensor:
        """``c_∅``: the embedding of ``null_prompt`` repeated ``batch_size`` times."""
        return self.embed_text([null_prompt] * batch_size)

    def embed_image(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised CLIP image features ``[B, D]`` of ``x`` in [−1, 1] (TReg's adaptive negation)."""
        raise self._no_image_encoder()

    def check_image_encoder(self) -> None:
        """Raise a one-line :class:`UserError` unless :meth:`embed_image` works (called before expensive work)."""
        raise self._no_image_encoder()

    def _no_image_encoder(self) -> UserError:
        return UserError(
            f"{type(self).__name__} has no CLIP image encoder, which adaptive negation needs; "
            "set solver.adaptive_negation=false"
        )

    def set_gradient_checkpointing(self, enabled: bool) -> None:  # noqa: B027 - no networks: nothing to do
        """Recompute activations in the backward pass of the networks (priors with networks override this)."""
