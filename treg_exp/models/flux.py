"""FLUX.1 [dev] / [schnell] as a rectified-flow :class:`DiffusionPrior` (diffusers' ``FluxTransformer2DModel``).

Path, VAE and packing of ``c`` as :mod:`treg_exp.models.sd3` (16 latent channels; FLUX's VAE scaling 0.3611, shift
0.1159). What differs, as ``FluxPipeline`` computes it:

- the transformer sees the latent as 2×2 patches (``[B, h/2·w/2, 64]``, the pipeline's ``_pack_latents``) with their
  positions (``img_ids``) and the text tokens at position 0 (``txt_ids``); the timestep it gets is σ (not σ·1000);
- the grid is ``linspace(1, 1/N, N)`` shifted by the resolution-dependent μ of the token count (dev), or unshifted
  (schnell): :class:`~treg_exp.models.schedule.FlowSchedule` with ``spacing="uniform"``;
- conditioning: T5 hidden states (``t5_max_length`` tokens, 512 in the pipeline) and CLIP-L's pooled output (not the
  projected embedding), packed as ``c = [B, L + 1, D]`` with the pooled row last (768 ≤ 4096);
- guidance: [dev] is guidance-distilled: ``guidance_scale`` (3.5) enters the transformer as an embedding on every
  call (a property of the prior, not of CFG). True classifier-free guidance is the solvers' own ``cfg_scale`` with
  their null prompt as the negative prompt, ``v = v(c_∅) + ω(v(c) − v(c_∅))``: FluxPipeline's ``true_cfg_scale`` with
  ``negative_prompt``; ω = 1 runs the prompt alone, as the pipeline does without a negative prompt.

:class:`FluxPrior` loads ``black-forest-labs/FLUX.1-dev`` / ``FLUX.1-schnell`` (dev is gated); :class:`RandomFluxPrior`
builds the classes at toy width with random weights (``tiny``), T5 and CLIP-L included.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from treg_exp.common.errors import UserError
from treg_exp.models import loading
from treg_exp.models.conditioning import pack_pooled
from treg_exp.models.schedule import FlowSchedule
from treg_exp.models.sd3 import SD3Prior

#: FLUX.1 [dev]'s scheduler config (FLUX.1 [schnell]: ``shift`` 1.0, ``use_dynamic_shifting`` false).
FLUX_DEV_SCHEDULER = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}


def pack_latents(z: torch.Tensor) -> torch.Tensor:
    """``[B, C, h, w]`` → ``[B, h/2·w/2, 4C]``: 2×2 patches in row-major order (FluxPipeline's ``_pack_latents``)."""
    b, c, h, w = z.shape
    return z.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of :func:`pack_latents` for a ``height × width`` latent: ``[B, h/2·w/2, 4C]`` → ``[B, C, h, w]``."""
    b, _, channels = tokens.shape
    out = tokens.view(b, height // 2, width // 2, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return out.reshape(b, channels // 4, height, width)


def latent_positions(height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``img_ids`` ``[h/2·w/2, 3]``: (0, row, column) of each 2×2 patch (FluxPipeline's latent image ids)."""
    rows = torch.arange(height // 2)[:, None].expand(height // 2, width // 2)
    cols = torch.arange(width // 2)[None, :].expand(height // 2, width // 2)
    ids = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3)
    return ids.to(device=device, dtype=dtype)


class FluxPrior(SD3Prior):
    """FLUX.1's transformer, 16-channel VAE, CLIP-L and T5 encoders as a flow prior (module docstring).

    Args:
        model_id: Hub id or local diffusers directory.
        guidance_scale: the distilled guidance embedding of [dev] (3.5); ignored by a transformer without one
            ([schnell]).
        t5_max_length: T5 tokens (FluxPipeline: 512; [schnell]: 256).
        dtype, local_files_only, cache_dir, gradient_checkpointing, offload_text_encoders, vae_slicing, vae_tiling,
            revision: as for :class:`~treg_exp.models.sd3.SD3Prior`.
    """

    text_encoder_names = ("text_encoder_1", "text_encoder_2")

    def __init__(
        self,
        model_id: str = "black-forest-labs/FLUX.1-dev",
        guidance_scale: float = 3.5,
        dtype: str | torch.dtype = "bfloat16",
        local_files_only: bool = False,
        cache_dir: str | os.PathLike | None = None,
        t5_max_length: int = 512,
        gradient_checkpointing: bool = False,
        offload_text_encoders: bool = False,
        vae_slicing: bool = True,
        vae_tiling: bool = False,
        revision: str | None = None,
    ) -> None:
        super().__init__(
            model_id=model_id,
            dtype=dtype,
            local_files_only=local_files_only,
            cache_dir=cache_dir,
            use_t5=True,
            t5_max_length=t5_max_length,
            gradient_checkpointing=gradient_checkpointing,
            offload_text_encoders=offload_text_encoders,
            vae_slicing=vae_slicing,
            vae_tiling=vae_tiling,
            revision=revision,
        )
        if guidance_scale < 0:
            raise UserError(f"model.guidance_scale must be >= 0, got {guidance_scale}")
        self.guidance_scale = float(guidance_scale)

    def _load_components(self) -> dict[str, Any]:
        from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
        from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

        common = {"cache_dir": self.cache_dir, "local_files_only": self.local_files_only}
        hub = {"revision": self.revision} if self.revision else {}
        mid = self.model_id
        config = loading.load_component(
            FlowMatchEulerDiscreteScheduler.load_config,
            mid,
            "scheduler/scheduler_config.json",
            subfolder="scheduler",
            **common,
            **hub,
        )
        tokenizers = [
            loading.load_component(
                cls.from_pretrained, mid, name, check=loading.tokenizer_is_complete, subfolder=name, **common, **hub
            )
            for name, cls in (("tokenizer", CLIPTokenizer), ("tokenizer_2", T5TokenizerFast))
        ]
        encoders = [
            loading.load_component(cls.from_pretrained, mid, name, subfolder=name, dtype=self.dtype, **common, **hub)
            for name, cls in (("text_encoder", CLIPTextModel), ("text_encoder_2", T5EncoderModel))
        ]
        networks = {
            name: loading.load_component(
                cls.from_pretrained, mid, name, subfolder=name, torch_dtype=self.dtype, **common, **hub
            )
            for name, cls in (("vae", AutoencoderKL), ("transformer", FluxTransformer2DModel))
        }
        return {**networks, "text_encoders": encoders, "tokenizers": tokenizers, "scheduler_config": dict(config)}

    def _install(self, parts: dict[str, Any]) -> None:
        super()._install(parts)
        # FluxPipeline always passes sigmas = linspace(1, 1/N, N), shifted by μ when the config says so
        self._schedule = FlowSchedule.from_diffusers_config(self.scheduler_config, spacing="uniform")

    def image_seq_len(self, image_shape: Sequence[int]) -> int:
        """The number of 2×2 latent patches, ``(H/16)·(W/16)``: what μ of the resolution-dependent shift reads."""
        _, _, h, w = self.latent_shape(image_shape)
        return (h // 2) * (w // 2)

    def predict(self, z_t: torch.Tensor, t: int | float, cond: torch.Tensor) -> torch.Tensor:
        """The velocity ``[B, 16, h, w]`` at σ = t/1000 (the transformer gets σ), in ``z_t``'s dtype; one call."""
        self._require_loaded()
        if cond.shape[0] != z_t.shape[0]:
            raise UserError(f"predict: {z_t.shape[0]} latents but {cond.shape[0]} conditioning rows")
        b, _, h, w = z_t.shape
        tokens, pooled = self.split_conditioning(cond)
        sigma = float(t) / self.schedule.num_train_timesteps
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full((b,), self.guidance_scale, device=z_t.device, dtype=torch.float32)
        out = self.transformer(
            hidden_states=pack_latents(z_t.to(self.dtype)),
            timestep=torch.full((b,), sigma, device=z_t.device, dtype=self.dtype),
            guidance=guidance,
            pooled_projections=pooled.to(self.dtype),
            encoder_hidden_states=tokens.to(self.dtype),
            txt_ids=torch.zeros(tokens.shape[1], 3, device=z_t.device, dtype=self.dtype),
            img_ids=latent_positions(h, w, z_t.device, self.dtype),
            return_dict=False,
        )[0]
        out = unpack_latents(out, h, w).to(z_t.dtype)
        self.counter.add("unet", b, out.requires_grad)
        return out

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """``[n, t5_max_length + 1, D]``: T5 hidden states and CLIP-L's pooled output (zero-padded to D) as the last
        row (FluxPipeline's ``encode_prompt``)."""
        tokenizer = self.tokenizers[0]
        ids = tokenizer(
            prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids.to(self.text_device)
        pooled = self.text_encoder_1(ids).pooler_output
        t5 = self.text_encoder_2(self._t5_ids(self.tokenizers[1], prompts))[0].to(pooled.dtype)
        return pack_pooled(t5, pooled)


def build_random_flux_components(seed: int = 0, guidance_embeds: bool = True) -> dict[str, Any]:
    """FLUX-shaped components at toy width with weights from ``seed`` (global RNG untouched), float32: the
    transformer (one double-stream and one single-stream block, RoPE axes 4 + 4 + 8, ``guidance_embeds``), FLUX's
    16-channel VAE (scaling 0.3611, shift 0.1159), CLIP-L (``CLIPTextModel``) and T5 (``T5EncoderModel``), both with
    the code-written tiny tokenizer; [dev]'s scheduler config ([schnell]'s without the guidance embedding)."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from treg_exp.models.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=64,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,
            pooled_projection_dim=32,
            axes_dims_rope=(4, 4, 8),
            guidance_embeds=guidance_embeds,
        )
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8, 16, 16, 16),
            layers_per_block=1,
            norm_num_groups=8,
            sample_size=64,
            latent_channels=16,
            scaling_factor=0.3611,
            shift_factor=0.1159,
            use_quant_conv=False,
            use_post_quant_conv=False,
        )
        torch.manual_seed(seed + 2)
        clip = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                max_position_embeddings=77,
                hidden_size=32,
                intermediate_size=37,
                num_hidden_layers=2,
                num_attention_heads=4,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
        torch.manual_seed(seed + 3)
        t5 = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=32, d_ff=37, d_kv=8, num_layers=2, num_heads=4))
    for module in (transformer, vae, clip, t5):
        module.eval()
    config = (
        FLUX_DEV_SCHEDULER if guidance_embeds else {**FLUX_DEV_SCHEDULER, "shift": 1.0, "use_dynamic_shifting": False}
    )
    return {
        "transformer": transformer,
        "vae": vae,
        "text_encoders": [clip, t5],
        "tokenizers": [tokenizer, tokenizer],
        "scheduler_config": dict(config),
    }


class RandomFluxPrior(FluxPrior):
    """:class:`FluxPrior` over toy-width random components built in code (:func:`build_random_flux_components`).

    Args:
        variant: ``dev`` (guidance embedding, μ-shifted grid) or ``schnell`` (neither).
        seed: weight seed.
        guidance_scale, dtype, gradient_checkpointing, offload_text_encoders: as for :class:`FluxPrior`.
        t5_max_length: T5 tokens (16 at toy size).
    """

    def __init__(
        self,
        variant: str = "dev",
        seed: int = 0,
        guidance_scale: float = 3.5,
        dtype: str | torch.dtype = "float32",
        t5_max_length: int = 16,
        gradient_checkpointing: bool = False,
        offload_text_encoders: bool = False,
    ) -> None:
        if variant not in ("dev", "schnell"):
            raise UserError(f"model.variant must be dev or schnell, got {variant!r}")
        super().__init__(
            model_id=f"random-flux-{variant}(seed={seed})",
            guidance_scale=guidance_scale,
            dtype=dtype,
            local_files_only=True,
            t5_max_length=t5_max_length,
            gradient_checkpointing=gradient_checkpointing,
            offload_text_encoders=offload_text_encoders,
            vae_slicing=False,
        )
        self.variant = variant
        self.seed = int(seed)

    def _load_components(self) -> dict[str, Any]:
        return build_random_flux_components(self.seed, guidance_embeds=self.variant == "dev")
