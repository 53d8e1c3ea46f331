"""Stable Diffusion (1.x / 2.x) as a :class:`DiffusionPrior`, over diffusers and transformers components.

``E(x) = s · vae.encode(x)`` and ``D(z) = vae.decode(z / s)`` with ``s = vae.config.scaling_factor`` (0.18215 for
SD 1.x); ``ε(z_t, t, c)`` from the UNet (v-prediction converted to ε); ``c`` = CLIP text hidden states ``[B, 77, D]``
as diffusers' pipeline computes them; ``embed_image`` = L2-normalised CLIP image features with TReg's official
preprocessing (REFERENCE.md, TReg section). Nothing is loaded in ``__init__``; :meth:`StableDiffusionPrior.load`
loads once (local files first, see :mod:`treg_exp.models.loading`).

Every network pass is counted in ``self.counter``: ``unet``, ``encode``, ``decode``, ``clip_image``, ``text``
(calls and rows apart; a CFG pair of B images is one UNet call of 2B rows).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint

from treg_exp.common import seeding
from treg_exp.common.devices import parse_dtype
from treg_exp.common.errors import UserError
from treg_exp.models import loading
from treg_exp.models.base import DiffusionPrior
from treg_exp.models.schedule import NoiseSchedule

#: OpenAI CLIP's image normalisation (mean, std), as the official TReg code applies it.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

PREDICTION_TYPES = ("epsilon", "v_prediction")
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: the file name diffusers' ``save_lora_weights`` writes and the LCM-LoRA repositories hold
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
#: ``model.lora`` value for a LoRA with random weights (:func:`save_random_lora`, from ``seed`` where the prior has
#: one), written to a temporary folder and loaded back through the real path: tests and benchmarks
RANDOM_LORA = "random"
#: the attention projections an LCM-LoRA adapts (and so does the random one)
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def checkpoint_vae_blocks(module: torch.nn.Module, enabled: bool) -> None:
    """Checkpoint every ``ResnetBlock2D``, ``Upsample2D`` and ``Downsample2D`` inside ``module`` while gradients are
    enabled (or undo it).

    The block's own ``forward`` is wrapped on the instance, so weights, state-dict keys and no-grad passes are
    untouched; with gradients on, its inner activations are recomputed in the backward pass instead of stored.
    """
    from diffusers.models.downsampling import Downsample2D
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.upsampling import Upsample2D

    for block in module.modules():
        if not isinstance(block, (ResnetBlock2D, Upsample2D, Downsample2D)):
            continue
        block.__dict__.pop("forward", None)  # back to the class's forward
        if enabled:
            plain = block.forward

            def forward(*args, _plain=plain, **kwargs):
                if torch.is_grad_enabled():
                    return torch.utils.checkpoint.checkpoint(_plain, *args, use_reentrant=False, **kwargs)
                return _plain(*args, **kwargs)

            block.forward = forward


def clip_preprocess(x: torch.Tensor, image_size: int) -> torch.Tensor:
    """TReg's official CLIP preprocessing of ``x`` ``[B, 3, H, W]`` in [−1, 1] → ``[B, 3, S, S]`` normalised.

    Bicubic resize of the *uncropped* image to ``S × S`` with ``align_corners=True`` and no antialiasing, then
    ``(x + 1) / 2`` and CLIP's mean/std. (``CLIPImageProcessor`` would centre-crop and antialias instead.)
    """
    x = F.interpolate(x, size=(image_size, image_size), mode="bicubic", align_corners=True, antialias=False)
    x = (x + 1.0) / 2.0
    mean = torch.tensor(CLIP_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def save_random_lora(directory: str | os.PathLike, unet: torch.nn.Module, seed: int = 0, rank: int = 4) -> str:
    """Write a LoRA of ``unet`` with random weights (peft ``LoraConfig``, rank ``rank`` on :data:`LORA_TARGETS`, both
    factors drawn from ``seed``: peft's ``init_lora_weights=False``) in diffusers' LoRA format
    (``pytorch_lora_weights.safetensors``, ``unet.``-prefixed keys, as ``save_lora_weights`` writes them); ``unet``
    itself is left untouched. Returns ``directory``."""
    import copy

    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    adapted = copy.deepcopy(unet)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        config = LoraConfig(r=rank, lora_alpha=rank, target_modules=list(LORA_TARGETS), init_lora_weights=False)
        adapted.add_adapter(config)
    StableDiffusionPipeline.save_lora_weights(
        str(directory), unet_lora_layers=get_peft_model_state_dict(adapted), safe_serialization=True
    )
    return str(directory)


class StableDiffusionPrior(DiffusionPrior):
    """Stable Diffusion's UNet, VAE and CLIP text encoder (plus an optional CLIP image tower) as a prior.

    Args:
        model_id: Hub id (``stable-diffusion-v1-5/stable-diffusion-v1-5``) or a local diffusers directory.
        dtype: the networks' dtype (``float16``, ``bfloat16``, ``float32``, ``float64``). Solvers keep their state
            in float32 (float64 when this is float64); :meth:`eps`, :meth:`encode`, :meth:`decode` return the
            dtype of their input.
        local_files_only: never download (also implied by ``HF_HUB_OFFLINE``). Local files are always tried first.
        cache_dir: Hugging Face cache (or a staging folder holding ``<model_id>/``); ``None``: the default cache.
        clip_image_model: Hub id or local directory of a transformers ``CLIPVisionModelWithProjection`` for
            :meth:`embed_image` (``openai/clip-vit-large-patch14`` for SD 1.x); ``None``: no image tower.
        gradient_checkpointing: enable it on the UNet and the VAE (for solvers that backpropagate through them).
        offload_text_encoders: keep the text encoders on the CPU and encode prompts there (the device holds the
            UNet and the VAE only; the conditioning is cached per prompt, as without offload).
        revision: Hub revision of ``model_id``.
        variant: weight variant of ``model_id`` (e.g. ``fp16``), for the UNet, VAE and text encoder.
        vae_slicing: decode/encode a batch one image at a time (diffusers' VAE slicing): the VAE's activation
            memory of a batch is that of one image, and each image's result is its batch-of-one result.
        vae_tiling: decode/encode in overlapping tiles (diffusers' VAE tiling) for images above 512 px; it blends
            tile seams, so results differ slightly from an untiled pass (off by default).
        channels_last: keep UNet and VAE weights in ``channels_last`` memory format (often faster on GPUs).
        compile_mode: ``torch.compile`` the UNet with this mode (``default``, ``reduce-overhead``,
            ``max-autotune``); ``None``: eager. The first calls of each new shape pay the compilation.
        lora: a LoRA of the UNet (Hub id, local folder, or ``random``: :func:`save_random_lora`), loaded through
            diffusers' ``load_lora_weights`` (peft)
            and fused into the UNet's weights at :meth:`load`; a consistency LoRA (LCM-LoRA,
            ``latent-consistency/lcm-lora-sdv1-5``) makes the prior a consistency model
            (:attr:`consistency_model`, LATINO). ``None``: the plain UNet.
        lora_weight_name: the LoRA's file inside that repository or folder (diffusers' default name).
    """

    latent_channels = 4
    latent_factor = 8
    #: the networks :meth:`_install` adopts (frozen, eval mode, cast) from the loaded parts
    network_names: tuple[str, ...] = ("unet", "vae", "text_encoder", "image_encoder")
    text_encoder_names: tuple[str, ...] = ("text_encoder",)

    def __init__(
        self,
        model_id: str = "stable-diffusion-v1-5/stable-diffusion-v1-5",
        dtype: str | torch.dtype = "float16",
        local_files_only: bool = False,
        cache_dir: str | os.PathLike | None = None,
        clip_image_model: str | None = None,
        gradient_checkpointing: bool = False,
        offload_text_encoders: bool = False,
        revision: str | None = None,
        variant: str | None = None,
        vae_slicing: bool = True,
        vae_tiling: bool = False,
        channels_last: bool = False,
        compile_mode: str | None = None,
        lora: str | None = None,
        lora_weight_name: str = LORA_WEIGHT_NAME,
    ) -> None:
        super().__init__()
        if compile_mode not in COMPILE_MODES:
            raise UserError(f"model.compile_mode must be one of {COMPILE_MODES}, got {compile_mode!r}")
        self.model_id = str(model_id)
        self.dtype = parse_dtype(dtype)
        #: the VAE's dtype (SDXL's stock VAE overflows in float16 and runs in float32); encode/decode return the
        #: dtype of their input whatever it is
        self.vae_dtype = self.dtype
        self.local_files_only = bool(local_files_only)
        self.cache_dir = None if cache_dir in (None, "") else str(cache_dir)
        self.clip_image_model = None if clip_image_model in (None, "") else str(clip_image_model)
        self.gradient_checkpointing = bool(gradient_checkpointing)
        self.offload_text_encoders = bool(offload_text_encoders)
        self.revision = revision
        self.variant = variant
        self.vae_slicing = bool(vae_slicing)
        self.vae_tiling = bool(vae_tiling)
        self.channels_last = bool(channels_last)
        self.compile_mode = compile_mode
        self.lora = None if lora in (None, "") else str(lora)
        self.lora_weight_name = str(lora_weight_name)
        self.tokenizer: Any = None
        self.scheduler_config: dict[str, Any] = {}
        self.prediction_type = "epsilon"
        self._schedule: NoiseSchedule | None = None
        self._text_cache: dict[str, torch.Tensor] = {}
        self._loaded = False

    # --- lifecycle -------------------------------------------------------------------------------------------
    @property
    def schedule(self) -> NoiseSchedule:  # type: ignore[override]
        if self._schedule is None:
            raise UserError(f"{type(self).__name__} ({self.model_id}): call load() before using the schedule")
        return self._schedule

    @property
    def loaded(self) -> bool:
        return self._loaded

    def _load_components(self) -> dict[str, Any]:
        """Load ``unet``, ``vae``, ``text_encoder``, ``tokenizer``, ``scheduler_config``, ``image_encoder``.

        Raises :class:`treg_exp.common.errors.WeightsNotFoundError` (one line) within seconds when any part is missing.
        Subclasses (the tiny model) build them in code instead.
        """
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        common = {"cache_dir": self.cache_dir, "local_files_only": self.local_files_only}
        hub = {"revision": self.revision} if self.revision else {}
        variant = {"variant": self.variant} if self.variant else {}
        mid = self.model_id
        # the scheduler config first: a few bytes, so a missing model fails before anything heavy is read
        scheduler_config = loading.load_component(
            DDIMScheduler.load_config, mid, "scheduler/scheduler_config.json", subfolder="scheduler", **common, **hub
        )
        tokenizer = loading.load_component(
            CLIPTokenizer.from_pretrained,
            mid,
            "tokenizer",
            check=loading.tokenizer_is_complete,
            subfolder="tokenizer",
            **common,
            **hub,
        )
        # read the weights in the target dtype (diffusers: torch_dtype, transformers ≥ 4.56: dtype)
        networks = {
            name: loading.load_component(
                cls.from_pretrained,
                mid,
                name,
                subfolder=name,
                **{dtype_key: self.vae_dtype if name == "vae" else self.dtype},
                **common,
                **hub,
                **variant,
            )
            for name, cls, dtype_key in (
                ("text_encoder", CLIPTextModel, "dtype"),
                ("vae", AutoencoderKL, "torch_dtype"),
                ("unet", UNet2DConditionModel, "torch_dtype"),
            )
        }
        image_encoder = None
        if self.clip_image_model is not None:
            from transformers import CLIPVisionModelWithProjection

            image_encoder = loading.load_component(
                CLIPVisionModelWithProjection.from_pretrained,
                self.clip_image_model,
                "CLIP image tower",
                dtype=self.dtype,
                **common,
            )
        return {
            **networks,
            "tokenizer": tokenizer,
            "scheduler_config": dict(scheduler_config),
            "image_encoder": image_encoder,
        }

    def load(self, device: torch.device | str = "cpu") -> StableDiffusionPrior:
        """Load every component (once) and move to ``device`` in ``self.dtype``. Idempotent."""
        if not self._loaded:
            self._install(self._load_components())
        return self.to(device)

    def _install(self, parts: dict[str, Any]) -> None:
        """Adopt loaded components: frozen, eval mode, in ``self.dtype``; read the schedule and prediction type."""
        config = parts["scheduler_config"]
        prediction_type = config.get("prediction_type", "epsilon")
        if prediction_type not in PREDICTION_TYPES:
            raise UserError(f"{self.model_id}: unsupported prediction_type {prediction_type!r} ({PREDICTION_TYPES})")
        self.scheduler_config = config
        self.prediction_type = prediction_type
        self._schedule = NoiseSchedule.from_diffusers_config(config)
        self.tokenizer = parts["tokenizer"]
        if self.lora is not None:
            self.fuse_lora(parts)
        for name in self.network_names:
            module = parts.get(name)
            if module is not None:
                module.requires_grad_(False)
                module.eval()
                # nn.Module.to, not diffusers' override, which warns about fp32 modules on every cast
                torch.nn.Module.to(module, self.vae_dtype if name == "vae" else self.dtype)
            # nn.Module.__setattr__ registers the networks, so .to(device) and .device see them
            setattr(self, name, module)
        from diffusers.models.attention_processor import AttnProcessor2_0

        # torch's fused scaled-dot-product attention in UNet and VAE, whatever a checkpoint's config asks for (the
        # CLIP towers use transformers' default, also SDPA): no [tokens × tokens] score matrix is kept at 512 px
        for module in (self.unet, self.vae):
            module.set_attn_processor(AttnProcessor2_0())
        self.vae.use_slicing = self.vae_slicing
        self.vae.use_tiling = self.vae_tiling
        if self.channels_last:
            for module in (self.unet, self.vae):
                module.to(memory_format=torch.channels_last)
        if self.compile_mode is not None:
            self.unet.compile(mode=self.compile_mode)  # in place: the state-dict keys stay those of the UNet
        self.latent_channels = int(self.vae.config.latent_channels)
        self.latent_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self._text_cache.clear()
        self._loaded = True
        self.set_gradient_checkpointing(self.gradient_checkpointing)

    @property
    def consistency_model(self) -> bool:  # type: ignore[override]
        """True when a (consistency) LoRA is fused into the UNet (``lora``): LCM's parameterisation then applies."""
        return self.lora is not None

    def lora_pipeline(self, parts: dict[str, Any]) -> Any:
        """A diffusers pipeline over the loaded ``parts`` (no copy), only to call its LoRA loader on them."""
        from diffusers import DDIMScheduler, StableDiffusionPipeline

        return StableDiffusionPipeline(
            vae=parts["vae"],
            text_encoder=parts["text_encoder"],
            tokenizer=parts["tokenizer"],
            unet=parts["unet"],
            scheduler=DDIMScheduler.from_config(parts["scheduler_config"]),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )

    def fuse_lora(self, parts: dict[str, Any], source: str | None = None, weight_name: str | None = None) -> None:
        """Load the LoRA ``source`` (default ``self.lora``, file ``weight_name``, default ``self.lora_weight_name``)
        into ``parts["unet"]`` with diffusers' ``load_lora_weights`` (local first, :func:`loading.load_component`),
        fuse it into the weights at scale 1 (as the official LATINO code: ``load_lora_weights`` then ``fuse_lora``)
        and drop the adapter layers, so the UNet is a plain ``UNet2DConditionModel`` again whose passes cost what the
        base model's cost. ``random``: :func:`save_random_lora` of the UNet (from the prior's ``seed`` where it has
        one, else 0) through a temporary folder."""
        from diffusers.utils import logging as diffusers_logging

        source = source or self.lora
        if source == RANDOM_LORA:
            with tempfile.TemporaryDirectory(prefix="treg_random_lora_") as folder:
                save_random_lora(folder, parts["unet"], seed=int(getattr(self, "seed", 0)))
                return self.fuse_lora(parts, folder, LORA_WEIGHT_NAME)
        weight_name = weight_name or self.lora_weight_name
        pipe = self.lora_pipeline(parts)
        verbosity = diffusers_logging.get_verbosity()
        # a UNet-only LoRA makes diffusers log that the text encoder has no LoRA keys, on every load
        diffusers_logging.set_verbosity_error()
        try:
            loading.load_component(
                lambda where, **kwargs: pipe.load_lora_weights(where, weight_name=weight_name, **kwargs),
                source,
                "LoRA",
                cache_dir=self.cache_dir,
                local_files_only=self.local_files_only,
            )
        finally:
            diffusers_logging.set_verbosity(verbosity)
        pipe.fuse_lora(lora_scale=1.0)
        pipe.unload_lora_weights()

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Switch gradient checkpointing of the UNet and the VAE (now if loaded, else at :meth:`load`).

        It trades a second forward pass for not storing activations, on the solvers' backward passes (DPS-type
        steps) only: checkpoints act only while gradients are enabled. diffusers checkpoints the UNet and the VAE
        per block; at 512 px one VAE up-block at full resolution still holds about 3 GiB of activations while it is
        recomputed, so every ResNet, upsampler and downsampler of the VAE is checkpointed as well (nested,
        non-reentrant): ``make bench`` measures both (``benchmarks/RESULTS.md``, activation memory).
        """
        self.gradient_checkpointing = bool(enabled)
        if not self._loaded:
            return
        for module in (self.unet, self.vae):
            if enabled:
                module.enable_gradient_checkpointing()
            else:
                module.disable_gradient_checkpointing()
        checkpoint_vae_blocks(self.vae, bool(enabled))

    def _require_loaded(self) -> None:
        if not self._loaded:
            raise UserError(f"{type(self).__name__} ({self.model_id}): call load(device) first")

    @property
    def scaling_factor(self) -> float:
        """``s`` of ``E(x) = s · vae.encode(x)`` (0.18215 for SD 1.x)."""
        self._require_loaded()
        return float(self.vae.config.scaling_factor)

    # --- networks --------------------------------------------------------------------------------------------
    def eps(self, z_t: torch.Tensor, t: int, cond: torch.Tensor) -> torch.Tensor:
        """ε(z_t, t, c) ``[B, C, h, w]`` in ``z_t``'s dtype; the UNet runs in ``self.dtype``.

        v-prediction models: ``ε = √ᾱ_t·v + √(1−ᾱ_t)·z_t`` with the textbook ᾱ_t of the timestep ``t`` the UNet
        is given (whatever ``alpha_index_shift`` a solver uses for its own update).

        Args:
            z_t: ``[B, C, h, w]`` noisy latents; t: the integer timestep; cond: ``[B, 77, D]`` text conditioning.
        """
        self._require_loaded()
        if cond.shape[0] != z_t.shape[0]:
            raise UserError(f"eps: {z_t.shape[0]} latents but {cond.shape[0]} conditioning rows")
        timestep = torch.tensor(int(t), device=z_t.device, dtype=torch.long)
        out = self.unet(z_t.to(self.dtype), timestep, **self.unet_conditioning(z_t, cond), return_dict=False)
        out = out[0].to(z_t.dtype)
        self.counter.add("unet", z_t.shape[0], out.requires_grad)
        if self.prediction_type == "v_prediction":
            alpha_bar = float(self.schedule.alphas_cumprod[int(t)])
            out = alpha_bar**0.5 * out + (1.0 - alpha_bar) ** 0.5 * z_t
        return out

    def unet_conditioning(self, z_t: torch.Tensor, cond: torch.Tensor) -> dict[str, Any]:
        """The UNet's conditioning keywords for latents ``z_t`` and ``c`` (SD: the hidden states, in ``self.dtype``)."""
        return {"encoder_hidden_states": cond.to(self.dtype)}

    def encode(
        self, x: torch.Tensor, generators: Sequence[torch.Generator] | None = None, mode: str = "sample"
    ) -> torch.Tensor:
        """``E(x) = s·(μ + σ·n)`` (``mode="sample"``, n drawn per image from ``generators``) or ``s·μ`` (``"mean"``).

        Args:
            x: ``[B, 3, H, W]`` in [−1, 1]. Returns ``[B, 4, H/8, W/8]`` in ``x``'s dtype.
        """
        self._require_loaded()
        if mode not in ("sample", "mean"):
            raise UserError(f"encode mode must be 'sample' or 'mean', got {mode!r}")
        if mode == "sample" and (generators is None or len(generators) != x.shape[0]):
            raise UserError("encode(mode='sample') needs one generator per image")
        dist = self.vae.encode(x.to(self.vae_dtype)).latent_dist
        self.counter.add("encode", x.shape[0], dist.mean.requires_grad)
        z = dist.mean.to(x.dtype)
        if mode == "sample":
            noise = seeding.randn(z.shape[1:], generators, device=z.device, dtype=x.dtype)
            z = z + dist.std.to(x.dtype) * noise
        return self.scaling_factor * z

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``D(z) = vae.decode(z / s)``: ``[B, 4, h, w]`` → ``[B, 3, 8h, 8w]`` in ``z``'s dtype (not clamped)."""
        self._require_loaded()
        x = self.vae.decode((z / self.scaling_factor).to(self.vae_dtype), return_dict=False)[0]
        self.counter.add("decode", z.shape[0], x.requires_grad)
        return x.to(z.dtype)

    @torch.no_grad()
    def embed_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """CLIP text hidden states ``c`` ``[B, 77, D]`` in :attr:`state_dtype`, as diffusers' pipeline computes them.

        Tokenised with ``padding="max_length"``, ``max_length=tokenizer.model_max_length`` and truncation; each
        distinct prompt is encoded once and cached (the ``text`` counter counts encoder passes).
        """
        self._require_loaded()
        return self.cached_embeddings(
            prompts, lambda missing: self.text_encoder(self.token_ids(self.tokenizer, missing))[0]
        )

    def token_ids(self, tokenizer: Any, prompts: Sequence[str]) -> torch.Tensor:
        """``[B, model_max_length]`` token ids on :attr:`text_device`, padded and truncated as diffusers pads them."""
        return tokenizer(
            list(prompts),
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.text_device)

    def cached_embeddings(self, prompts: Sequence[str], encode: Callable[[list[str]], torch.Tensor]) -> torch.Tensor:
        """``[B, ...]``: the rows ``encode(prompts)`` would return, in :attr:`state_dtype`, each distinct prompt encoded
        once and cached (the ``text`` counter counts prompts encoded)."""
        if isinstance(prompts, str):
            raise UserError("embed_text takes a list of prompts, one per image")
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if missing:
            rows = encode(missing)
            self.counter.add("text", len(missing))
            for prompt, row in zip(missing, rows, strict=True):
                self._text_cache[prompt] = row.to(self.state_dtype)
        # stack copies, so callers may edit their embedding (TReg's c_∅) without touching the cache
        return torch.stack([self._text_cache[p] for p in prompts]).to(self.device)

    def check_image_encoder(self) -> None:
        """Raise a one-line :class:`UserError` unless :meth:`embed_image` can work (call it before expensive work).

        The image features are compared with text-embedding rows (TReg's adaptive negation), so the image tower's
        projection width must equal the text width (SD 1.x + ViT-L/14: 768; SD 2.x needs an OpenCLIP ViT-H tower).
        """
        self._require_loaded()
        if self.image_encoder is None:
            raise UserError(
                f"model {self.model_id} has no CLIP image tower: set model.clip_image_model "
                "(openai/clip-vit-large-patch14 for SD 1.x) or turn adaptive negation off"
            )
        image_width = int(self.image_encoder.config.projection_dim)
        text_width = int(self.text_encoder.config.hidden_size)
        if image_width != text_width:
            raise UserError(
                f"CLIP image tower {self.clip_image_model} projects to {image_width} dims but {self.model_id}'s text "
                f"width is {text_width}; adaptive negation needs an image tower of the same width (SD 2.x: OpenCLIP "
                "ViT-H/14) or solver.adaptive_negation=false"
            )

    def embed_image(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised CLIP image features ``f̂`` ``[B, D]`` of ``x`` ``[B, 3, H, W]`` in [−1, 1].

        Official TReg preprocessing (:func:`clip_preprocess`) at the tower's ``image_size`` (224 for ViT-L/14),
        then ``CLIPVisionModelWithProjection(...).image_embeds`` normalised; returned in :attr:`state_dtype`.
        """
        self.check_image_encoder()
        size = int(self.image_encoder.config.image_size)
        # resize and normalise in float32 (float64) whatever the networks' dtype; only the tower runs in self.dtype
        pixels = clip_preprocess(x.to(self.state_dtype), size).to(self.dtype)
        features = self.image_encoder(pixel_values=pixels).image_embeds.to(self.state_dtype)
        self.counter.add("clip_image", x.shape[0], features.requires_grad)
        return features / features.norm(dim=-1, keepdim=True)
