"""Stable Diffusion 3 / 3.5 as a rectified-flow :class:`DiffusionPrior`, over diffusers and transformers components.

Path and network: ``z_σ = (1−σ)·z0 + σ·ε`` with the timestep ``σ·1000`` handed to ``SD3Transformer2DModel``, which
predicts the velocity ``v = ε − z0`` (``prediction_type = "flow"``; the grid from the scheduler config's shift, 3.0,
:class:`~treg_exp.models.schedule.FlowSchedule`). VAE: 16 latent channels, ``E(x) = s·(μ − b)`` and
``D(z) = vae.decode(z/s + b)`` with ``s = scaling_factor`` (1.5305) and ``b = shift_factor`` (0.0609).

Conditioning, as ``StableDiffusion3Pipeline.encode_prompt`` computes it: CLIP-L and CLIP-G penultimate hidden states
concatenated along the width and zero-padded to the transformer's ``joint_attention_dim``, followed along the tokens by
the T5 hidden states (``t5_max_length`` tokens; zeros when the T5 encoder is not loaded, as the pipeline does without
one); the pooled embedding is CLIP-L's and CLIP-G's projected ``text_embeds`` concatenated. Solvers handle ``c`` as
one tensor (CFG pairs, TReg's null embedding, P2L's tuned prompt), so this prior packs the pooled embedding as one more
token row, zero-padded to the joint width: ``c = [B, L + 1, D]`` (the pooled width is at most ``D``: 2048 ≤ 4096 for
SD3). Optimising ``c`` therefore tunes both the token embeddings and the pooled one. No CLIP image tower: TReg's
adaptive negation is off on this prior (one line if asked for).

:class:`SD3Prior` loads a Hub id or diffusers folder (``stabilityai/stable-diffusion-3-medium-diffusers``,
``stabilityai/stable-diffusion-3.5-medium``: gated, see ``scripts/fetch_weights.py``); :class:`RandomSD3Prior` builds
the same classes in code with random weights (``tiny``: toy widths, 64-px images, for tests; ``sd35_medium``: SD3.5
medium's transformer and VAE at full size, without T5, for benchmarks).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from treg_exp.common import seeding
from treg_exp.common.devices import parse_dtype
from treg_exp.common.errors import UserError
from treg_exp.models import loading
from treg_exp.models.base import DiffusionPrior
from treg_exp.models.conditioning import pack_pooled, split_pooled
from treg_exp.models.schedule import FlowSchedule

#: SD3's flow scheduler config (``scheduler/scheduler_config.json`` of SD3-medium and SD3.5-medium).
SD3_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0}


class SD3Prior(DiffusionPrior):
    """SD3 / SD3.5's transformer, 16-channel VAE and CLIP-L / CLIP-G (/ T5) text encoders as a flow prior.

    Args:
        model_id: Hub id or local diffusers directory.
        dtype: the networks' dtype; solvers keep their state in float32 (float64 for a float64 prior).
        local_files_only: never download (also implied by ``HF_HUB_OFFLINE``).
        cache_dir: Hugging Face cache or staging folder; ``None``: the default cache.
        use_t5: load the T5-XXL encoder (4.7B parameters); ``False``: its tokens are zeros, as in diffusers'
            pipeline without ``text_encoder_3``.
        t5_max_length: T5 tokens (diffusers' pipeline: 256; FlowDPS: 77).
        gradient_checkpointing: on the transformer and the VAE (solvers that backpropagate through them).
        offload_text_encoders: keep the CLIP / T5 encoders on the CPU and encode prompts there (the device holds the
            transformer and the VAE only; the conditioning is cached per prompt, as without offload).
        vae_slicing, vae_tiling: diffusers' VAE slicing (one image at a time) and tiling (seams blended).
        revision: Hub revision of ``model_id``.
    """

    prediction_type = "flow"
    text_encoder_names = ("text_encoder_1", "text_encoder_2", "text_encoder_3")
    latent_channels = 16
    latent_factor = 8

    def __init__(
        self,
        model_id: str = "stabilityai/stable-diffusion-3.5-medium",
        dtype: str | torch.dtype = "bfloat16",
        local_files_only: bool = False,
        cache_dir: str | os.PathLike | None = None,
        use_t5: bool = True,
        t5_max_length: int = 256,
        gradient_checkpointing: bool = False,
        offload_text_encoders: bool = False,
        vae_slicing: bool = True,
        vae_tiling: bool = False,
        revision: str | None = None,
    ) -> None:
        super().__init__()
        if int(t5_max_length) < 1:
            raise UserError(f"model.t5_max_length must be positive, got {t5_max_length}")
        self.model_id = str(model_id)
        self.dtype = parse_dtype(dtype)
        self.local_files_only = bool(local_files_only)
        self.cache_dir = None if cache_dir in (None, "") else str(cache_dir)
        self.use_t5 = bool(use_t5)
        self.t5_max_length = int(t5_max_length)
        self.gradient_checkpointing = bool(gradient_checkpointing)
        self.offload_text_encoders = bool(offload_text_encoders)
        self.vae_slicing = bool(vae_slicing)
        self.vae_tiling = bool(vae_tiling)
        self.revision = revision
        self.tokenizers: list[Any] = []
        self.scheduler_config: dict[str, Any] = {}
        self._schedule: FlowSchedule | None = None
        self._text_cache: dict[str, torch.Tensor] = {}
        self._loaded = False

    @property
    def schedule(self) -> FlowSchedule:  # type: ignore[override]
        if self._schedule is None:
            raise UserError(f"{type(self).__name__} ({self.model_id}): call load() before using the schedule")
        return self._schedule

    # --- lifecycle -------------------------------------------------------------------------------------------
    def _load_components(self) -> dict[str, Any]:
        """``transformer``, ``vae``, ``text_encoders`` (CLIP-L, CLIP-G, T5 or ``None``), ``tokenizers``,
        ``scheduler_config``; one-line :class:`~treg_exp.common.errors.WeightsNotFoundError` when a part is missing."""
        from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
        from transformers import CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

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
        names = ("tokenizer", "tokenizer_2") + (("tokenizer_3",) if self.use_t5 else ())
        tokenizers = [
            loading.load_component(
                T5TokenizerFast.from_pretrained if name == "tokenizer_3" else CLIPTokenizer.from_pretrained,
                mid,
                name,
                check=loading.tokenizer_is_complete,
                subfolder=name,
                **common,
                **hub,
            )
            for name in names
        ]
        encoders = [
            loading.load_component(cls.from_pretrained, mid, name, subfolder=name, dtype=self.dtype, **common, **hub)
            for name, cls in (
                ("text_encoder", CLIPTextModelWithProjection),
                ("text_encoder_2", CLIPTextModelWithProjection),
                *((("text_encoder_3", T5EncoderModel),) if self.use_t5 else ()),
            )
        ]
        networks = {
            name: loading.load_component(
                cls.from_pretrained, mid, name, subfolder=name, torch_dtype=self.dtype, **common, **hub
            )
            for name, cls in (("vae", AutoencoderKL), ("transformer", SD3Transformer2DModel))
        }
        return {
            **networks,
            "text_encoders": encoders + ([] if self.use_t5 else [None]),
            "tokenizers": tokenizers + ([] if self.use_t5 else [None]),
            "scheduler_config": dict(config),
        }

    def load(self, device: torch.device | str = "cpu") -> SD3Prior:
        """Load every component (once) and move to ``device`` in ``self.dtype``. Idempotent."""
        if not self._loaded:
            self._install(self._load_components())
        return self.to(device)

    def _install(self, parts: dict[str, Any]) -> None:
        self.scheduler_config = parts["scheduler_config"]
        self._schedule = FlowSchedule.from_diffusers_config(self.scheduler_config)
        self.tokenizers = parts["tokenizers"]
        modules = {"transformer": parts["transformer"], "vae": parts["vae"]}
        for i, encoder in enumerate(parts["text_encoders"]):
            modules[f"text_encoder_{i + 1}"] = encoder
        for name, module in modules.items():
            if module is not None:
                module.requires_grad_(False)
                module.eval()
                torch.nn.Module.to(module, self.dtype)
            setattr(self, name, module)
        self.vae.use_slicing = self.vae_slicing
        self.vae.use_tiling = self.vae_tiling
        self.latent_channels = int(self.vae.config.latent_channels)
        self.latent_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self._text_cache.clear()
        self._loaded = True
        self.set_gradient_checkpointing(self.gradient_checkpointing)

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Switch gradient checkpointing of the transformer and the VAE (now if loaded, else at :meth:`load`)."""
        self.gradient_checkpointing = bool(enabled)
        if not self._loaded:
            return
        for module in (self.transformer, self.vae):
            if enabled:
                module.enable_gradient_checkpointing()
            else:
                module.disable_gradient_checkpointing()

    def _require_loaded(self) -> None:
        if not self._loaded:
            raise UserError(f"{type(self).__name__} ({self.model_id}): call load(device) first")

    # --- networks --------------------------------------------------------------------------------------------
    def predict(self, z_t: torch.Tensor, t: int | float, cond: torch.Tensor) -> torch.Tensor:
        """The velocity ``v(z_σ, σ, c)`` ``[B, 16, h, w]`` at ``t = σ·1000``, in ``z_t``'s dtype (one transformer call).

        Args:
            z_t: ``[B, 16, h, w]``; t: the timestep σ·1000 (a float); cond: ``[B, L + 1, D]`` (module docstring).
        """
        self._require_loaded()
        if cond.shape[0] != z_t.shape[0]:
            raise UserError(f"predict: {z_t.shape[0]} latents but {cond.shape[0]} conditioning rows")
        tokens, pooled = self.split_conditioning(cond)
        timestep = torch.full((z_t.shape[0],), float(t), device=z_t.device, dtype=self.dtype)
        out = self.transformer(
            hidden_states=z_t.to(self.dtype),
            timestep=timestep,
            encoder_hidden_states=tokens.to(self.dtype),
            pooled_projections=pooled.to(self.dtype),
            return_dict=False,
        )[0].to(z_t.dtype)
        self.counter.add("unet", z_t.shape[0], out.requires_grad)
        return out

    def eps(self, z_t: torch.Tensor, t: int | float, cond: torch.Tensor) -> torch.Tensor:
        """``ε̂ = z_σ + (1−σ)·v`` at σ = t/1000 (one transformer call)."""
        sigma = float(t) / self.schedule.num_train_timesteps
        return z_t + (1.0 - sigma) * self.predict(z_t, t, cond)

    def encode(
        self, x: torch.Tensor, generators: Sequence[torch.Generator] | None = None, mode: str = "sample"
    ) -> torch.Tensor:
        """``E(x) = s·(μ + σ_E·n − b)`` (``sample``, n per image from ``generators``) or ``s·(μ − b)`` (``mean``):
        ``[B, 3, H, W]`` in [−1, 1] → ``[B, 16, H/8, W/8]`` in ``x``'s dtype."""
        self._require_loaded()
        if mode not in ("sample", "mean"):
            raise UserError(f"encode mode must be 'sample' or 'mean', got {mode!r}")
        if mode == "sample" and (generators is None or len(generators) != x.shape[0]):
            raise UserError("encode(mode='sample') needs one generator per image")
        dist = self.vae.encode(x.to(self.dtype)).latent_dist
        self.counter.add("encode", x.shape[0], dist.mean.requires_grad)
        z = dist.mean.to(x.dtype)
        if mode == "sample":
            z = z + dist.std.to(x.dtype) * seeding.randn(z.shape[1:], generators, device=z.device, dtype=x.dtype)
        return (z - self._shift_factor) * self._scaling_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``D(z) = vae.decode(z/s + b)``: ``[B, 16, h, w]`` → ``[B, 3, 8h, 8w]`` in ``z``'s dtype (not clamped)."""
        self._require_loaded()
        x = self.vae.decode((z / self._scaling_factor + self._shift_factor).to(self.dtype), return_dict=False)[0]
        self.counter.add("decode", z.shape[0], x.requires_grad)
        return x.to(z.dtype)

    @property
    def _scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def _shift_factor(self) -> float:
        return float(self.vae.config.shift_factor or 0.0)

    # --- text ------------------------------------------------------------------------------------------------
    @property
    def joint_width(self) -> int:
        """``D``: the transformer's ``joint_attention_dim`` (4096 for SD3)."""
        return int(self.transformer.config.joint_attention_dim)

    def split_conditioning(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, L + 1, D]`` → (token embeddings ``[B, L, D]``, pooled ``[B, P]``) (the last row, its first P)."""
        return split_pooled(cond, int(self.transformer.config.pooled_projection_dim))

    def _clip(self, index: int, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """CLIP ``index``'s penultimate hidden states ``[B, 77, W]`` and projected pooled ``[B, P_i]``."""
        tokenizer, encoder = self.tokenizers[index], getattr(self, f"text_encoder_{index + 1}")
        ids = tokenizer(
            prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids.to(self.text_device)
        out = encoder(ids, output_hidden_states=True)
        return out.hidden_states[-2], out.text_embeds

    @torch.no_grad()
    def embed_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """``c`` ``[B, L + 1, D]`` in :attr:`state_dtype` (module docstring; :meth:`encode_prompts`), each distinct
        prompt encoded once and cached (the ``text`` counter counts prompts encoded)."""
        self._require_loaded()
        if isinstance(prompts, str):
            raise UserError("embed_text takes a list of prompts, one per image")
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if missing:
            packed = self.encode_prompts(missing)
            self.counter.add("text", len(missing))
            for prompt, row in zip(missing, packed, strict=True):
                self._text_cache[prompt] = row.to(self.state_dtype)
        return torch.stack([self._text_cache[p] for p in prompts]).to(self.device)

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """``[n, 77 + t5_max_length + 1, D]``: CLIP-L ⊕ CLIP-G penultimate states padded to D, the T5 rows (zeros
        without T5), and the pooled row (CLIP-L ⊕ CLIP-G ``text_embeds``, padded to D)."""
        (hidden_l, pooled_l), (hidden_g, pooled_g) = self._clip(0, prompts), self._clip(1, prompts)
        clip = torch.cat([hidden_l, hidden_g], dim=-1)
        width = self.joint_width
        clip = torch.nn.functional.pad(clip, (0, width - clip.shape[-1]))
        if self.use_t5:
            t5 = self.text_encoder_3(self._t5_ids(self.tokenizers[2], prompts))[0].to(clip.dtype)
        else:
            t5 = torch.zeros(len(prompts), self.t5_max_length, width, device=clip.device, dtype=clip.dtype)
        return pack_pooled(torch.cat([clip, t5], dim=1), torch.cat([pooled_l, pooled_g], dim=-1))

    def _t5_ids(self, tokenizer: Any, prompts: list[str]) -> torch.Tensor:
        """T5 token ids ``[n, t5_max_length]`` (padded to the maximum length, truncated), on :attr:`text_device`."""
        return tokenizer(
            prompts, padding="max_length", max_length=self.t5_max_length, truncation=True, return_tensors="pt"
        ).input_ids.to(self.text_device)


#: Random-weight architectures: ``tiny`` (toy widths, 64-px images) and ``sd35_medium`` (SD3.5 medium's transformer,
#: VAE and CLIP towers at full size; no T5, whose tokens are then zeros as in diffusers' pipeline without it).
RANDOM_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "tiny": {
        "transformer": dict(
            sample_size=8,
            patch_size=2,
            num_layers=2,
            attention_head_dim=8,
            num_attention_heads=4,
            joint_attention_dim=64,
            caption_projection_dim=32,
            pooled_projection_dim=64,
            pos_embed_max_size=16,
        ),
        "vae": dict(block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=8, sample_size=64),
        "clip_l": dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4),
        "clip_g": dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4),
        "t5_max_length": 16,
    },
    "sd35_medium": {
        "transformer": dict(
            sample_size=128,
            patch_size=2,
            num_layers=24,
            attention_head_dim=64,
            num_attention_heads=24,
            joint_attention_dim=4096,
            caption_projection_dim=1536,
            pooled_projection_dim=2048,
            pos_embed_max_size=384,
            dual_attention_layers=tuple(range(13)),
            qk_norm="rms_norm",
        ),
        "vae": dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32, sample_size=1024),
        "clip_l": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
        "clip_g": dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20),
        "t5_max_length": 256,
    },
}


def build_random_sd3_components(
    seed: int = 0, architecture: str = "tiny", dtype: torch.dtype = torch.float32
) -> dict[str, Any]:
    """SD3-shaped components with weights drawn from ``seed`` (the global RNG is left untouched), created in
    ``dtype`` (so a full-size bfloat16 build never holds a float32 copy: 9 GB for SD3.5 medium's transformer):
    ``transformer``, ``vae`` (16 channels, SD3's scaling 1.5305 and shift 0.0609, no quant convs), CLIP-L and CLIP-G
    ``CLIPTextModelWithProjection`` (projection = width) with the code-written tiny tokenizer, no T5."""
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from treg_exp.models.tiny import build_tokenizer

    shapes = RANDOM_ARCHITECTURES[architecture]
    tokenizer = build_tokenizer()

    def clip(config: dict[str, int]) -> Any:
        return CLIPTextModelWithProjection(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                max_position_embeddings=77,
                projection_dim=config["hidden_size"],
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                **config,
            )
        )

    builders = (
        lambda: SD3Transformer2DModel(in_channels=16, out_channels=16, **shapes["transformer"]),
        lambda: AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=16,
            scaling_factor=1.5305,
            shift_factor=0.0609,
            use_quant_conv=False,
            use_post_quant_conv=False,
            **shapes["vae"],
        ),
        lambda: clip(shapes["clip_l"]),
        lambda: clip(shapes["clip_g"]),
    )
    default_dtype = torch.get_default_dtype()
    modules = []
    with torch.random.fork_rng(devices=[]):
        torch.set_default_dtype(dtype)
        try:
            for offset, build in enumerate(builders):  # each network from its own seed: seed, seed + 1, …
                torch.manual_seed(seed + offset)
                modules.append(build().eval())
        finally:
            torch.set_default_dtype(default_dtype)
    transformer, vae, clip_l, clip_g = modules
    return {
        "transformer": transformer,
        "vae": vae,
        "text_encoders": [clip_l, clip_g, None],
        "tokenizers": [tokenizer, tokenizer, None],
        "scheduler_config": dict(SD3_SCHEDULER),
    }


class RandomSD3Prior(SD3Prior):
    """:class:`SD3Prior` over random-weight components built in code (:func:`build_random_sd3_components`).

    Args:
        architecture: ``tiny`` (tests) or ``sd35_medium`` (full-size, benchmarks).
        seed: weight seed (the same seed gives the same model).
        dtype, gradient_checkpointing, vae_slicing, vae_tiling: as for :class:`SD3Prior`.
    """

    def __init__(
        self,
        architecture: str = "tiny",
        seed: int = 0,
        dtype: str | torch.dtype = "float32",
        gradient_checkpointing: bool = False,
        offload_text_encoders: bool = False,
        vae_slicing: bool = False,
        vae_tiling: bool = False,
    ) -> None:
        if architecture not in RANDOM_ARCHITECTURES:
            raise UserError(f"unknown architecture {architecture!r}; known: {', '.join(RANDOM_ARCHITECTURES)}")
        super().__init__(
            model_id=f"random-sd3-{architecture}(seed={seed})",
            dtype=dtype,
            local_files_only=True,
            use_t5=False,
            t5_max_length=RANDOM_ARCHITECTURES[architecture]["t5_max_length"],
            gradient_checkpointing=gradient_checkpointing,
            offload_text_encoders=offload_text_encoders,
            vae_slicing=vae_slicing,
            vae_tiling=vae_tiling,
        )
        self.architecture = architecture
        self.seed = int(seed)

    def _load_components(self) -> dict[str, Any]:
        # float64 (reference tests) and float32 builds draw in float32, the half types directly in theirs
        build_dtype = self.dtype if self.dtype in (torch.float16, torch.bfloat16) else torch.float32
        return build_random_sd3_components(self.seed, self.architecture, build_dtype)
