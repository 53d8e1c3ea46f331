"""Stable Diffusion XL as a :class:`DiffusionPrior`: :class:`StableDiffusionPrior` with SDXL's two text encoders,
pooled embedding and size/crop time ids.

``ε(z_t, t, c)`` from SDXL's UNet (ε-prediction, SD's scaled-linear ᾱ, DDIM grids as for SD 1.5), conditioned as
``StableDiffusionXLPipeline`` conditions it:

- token embeddings: the penultimate hidden states of CLIP ViT-L/14 (``text_encoder``) and OpenCLIP ViT-bigG/14
  (``text_encoder_2``) concatenated along the width, ``[B, 77, 768 + 1280]``;
- pooled embedding: ``text_encoder_2``'s projected ``text_embeds`` ``[B, 1280]``, packed as the last row of ``c``
  under the OpenCLIP-G columns (:mod:`treg_exp.models.conditioning`, which also says what TReg and P2L optimise);
- ``time_ids = (H, W, 0, 0, H, W)``: original size, crop corner and target size, the pipeline's defaults for an
  ``H × W`` image, derived from the latent's shape in each pass (they do not depend on the prompt);
- the null prompt ``""`` gives zeros (hidden states and pooled), as the pipeline's ``force_zeros_for_empty_prompt``
  does for SDXL base (``zero_empty_prompt``); any other null prompt is encoded.

VAE: ``s = 0.13025``; SDXL's stock VAE overflows in float16, so it runs in ``vae_dtype`` (float32 by default), or
``vae_model_id`` replaces it (``madebyollin/sdxl-vae-fp16-fix`` runs in float16). TReg's adaptive negation compares
``[f̂_L ; f̂_G]`` (ViT-L/14 and ViT-bigG/14 image features, each L2-normalised) with the rows of ``c_∅``.

:class:`SDXLPrior` loads ``stabilityai/stable-diffusion-xl-base-1.0`` (or a local folder); :class:`RandomSDXLPrior`
builds the same classes in code with random weights (``tiny``: toy widths, 64-px images, for tests; ``sdxl``: the
full-size UNet, VAE and text towers, for benchmarks at 1024 px).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from treg_exp.common.devices import parse_dtype
from treg_exp.common.errors import UserError
from treg_exp.models import loading
from treg_exp.models.conditioning import pack_pooled, split_pooled
from treg_exp.models.stable_diffusion import LORA_WEIGHT_NAME, StableDiffusionPrior, clip_preprocess
from treg_exp.models.tiny import SD1_SCHEDULER, build_text_encoder, build_tokenizer, build_vae

#: The CLIP image tower projecting to OpenCLIP-G's text width (1280), for TReg's adaptive negation on SDXL.
CLIP_BIGG_MODEL = "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"
#: SDXL base's VAE scaling factor.
SDXL_SCALING_FACTOR = 0.13025


class SDXLPrior(StableDiffusionPrior):
    """SDXL base's UNet, VAE, two CLIP text encoders (and optional CLIP image towers) as a prior.

    Args:
        model_id: Hub id (``stabilityai/stable-diffusion-xl-base-1.0``) or a local diffusers directory.
        dtype: the UNet's and text encoders' dtype; solvers keep their state in float32.
        vae_dtype: the VAE's dtype; ``None``: ``dtype``. SDXL's stock VAE needs float32 (it overflows in float16).
        vae_model_id: Hub id or local folder of a VAE replacing the model's (``madebyollin/sdxl-vae-fp16-fix``, which
            runs in float16); ``None``: the model's own.
        clip_image_model, clip_image_model_2: ``CLIPVisionModelWithProjection`` towers for TReg's adaptive negation,
            projecting to each text encoder's width (ViT-L/14: 768; ViT-bigG/14: 1280); ``None``: no image features.
        zero_empty_prompt: the null prompt ``""`` is zeros, as SDXL base's ``force_zeros_for_empty_prompt``.
        lora, lora_weight_name: a UNet LoRA fused at load (``latent-consistency/lcm-lora-sdxl``; DMD2's LoRA:
            ``tianweiy/DMD2`` with ``dmd2_sdxl_4step_lora_fp16.safetensors``), as for :class:`StableDiffusionPrior`.
        unet_weights: a full UNet state dict replacing the base UNet's weights (a local ``.bin`` / ``.safetensors``
            file or ``owner/name/file`` on the Hub): ``tianweiy/DMD2/dmd2_sdxl_4step_unet_fp16.bin`` is the
            official LATINO's DMD2 consistency UNet. ``None``: the base UNet.
        Others: as for :class:`StableDiffusionPrior`.
    """

    network_names = (*StableDiffusionPrior.network_names, "text_encoder_2", "image_encoder_2")
    text_encoder_names = ("text_encoder", "text_encoder_2")

    def __init__(
        self,
        model_id: str = "stabilityai/stable-diffusion-xl-base-1.0",
        dtype: str | torch.dtype = "float16",
        vae_dtype: str | torch.dtype | None = "float32",
        vae_model_id: str | None = None,
        local_files_only: bool = False,
        cache_dir: str | os.PathLike | None = None,
        clip_image_model: str | None = None,
        clip_image_model_2: str | None = None,
        zero_empty_prompt: bool = True,
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
        unet_weights: str | None = None,
    ) -> None:
        super().__init__(
            model_id=model_id,
            dtype=dtype,
            local_files_only=local_files_only,
            cache_dir=cache_dir,
            clip_image_model=clip_image_model,
            gradient_checkpointing=gradient_checkpointing,
            offload_text_encoders=offload_text_encoders,
            revision=revision,
            variant=variant,
            vae_slicing=vae_slicing,
            vae_tiling=vae_tiling,
            channels_last=channels_last,
            compile_mode=compile_mode,
            lora=lora,
            lora_weight_name=lora_weight_name,
        )
        self.vae_dtype = self.dtype if vae_dtype in (None, "") else parse_dtype(vae_dtype)
        self.vae_model_id = None if vae_model_id in (None, "") else str(vae_model_id)
        self.clip_image_model_2 = None if clip_image_model_2 in (None, "") else str(clip_image_model_2)
        self.zero_empty_prompt = bool(zero_empty_prompt)
        self.unet_weights = None if unet_weights in (None, "") else str(unet_weights)
        self.tokenizer_2: Any = None

    # --- lifecycle -------------------------------------------------------------------------------------------
    def _load_components(self) -> dict[str, Any]:
        """SD's parts (:meth:`StableDiffusionPrior._load_components`) plus ``text_encoder_2``, ``tokenizer_2``,
        ``image_encoder_2`` and the replacement VAE; one-line ``WeightsNotFoundError`` when a part is missing."""
        from diffusers import AutoencoderKL
        from transformers import CLIPTextModelWithProjection, CLIPTokenizer, CLIPVisionModelWithProjection

        parts = super()._load_components()
        common = {"cache_dir": self.cache_dir, "local_files_only": self.local_files_only}
        hub = {"revision": self.revision} if self.revision else {}
        variant = {"variant": self.variant} if self.variant else {}
        parts["tokenizer_2"] = loading.load_component(
            CLIPTokenizer.from_pretrained,
            self.model_id,
            "tokenizer_2",
            check=loading.tokenizer_is_complete,
            subfolder="tokenizer_2",
            **common,
            **hub,
        )
        parts["text_encoder_2"] = loading.load_component(
            CLIPTextModelWithProjection.from_pretrained,
            self.model_id,
            "text_encoder_2",
            subfolder="text_encoder_2",
            dtype=self.dtype,
            **common,
            **hub,
            **variant,
        )
        if self.vae_model_id is not None:
            parts["vae"] = loading.load_component(
                AutoencoderKL.from_pretrained, self.vae_model_id, "VAE", torch_dtype=self.vae_dtype, **common
            )
        parts["image_encoder_2"] = None
        if self.clip_image_model_2 is not None:
            parts["image_encoder_2"] = loading.load_component(
                CLIPVisionModelWithProjection.from_pretrained,
                self.clip_image_model_2,
                "CLIP image tower",
                dtype=self.dtype,
                **common,
            )
        return parts

    def _install(self, parts: dict[str, Any]) -> None:
        if self.unet_weights is not None:
            parts["unet"].load_state_dict(self.load_unet_weights())
        super()._install(parts)
        self.tokenizer_2 = parts["tokenizer_2"]

    @property
    def consistency_model(self) -> bool:  # type: ignore[override]
        """A consistency LoRA (``lora``) or distilled UNet weights (``unet_weights``, DMD2) make one."""
        return self.lora is not None or self.unet_weights is not None

    def load_unet_weights(self) -> dict[str, torch.Tensor]:
        """The state dict of ``unet_weights``: a local ``.bin`` / ``.safetensors`` file, or ``owner/name/file`` on the
        Hub (local cache first, :func:`loading.load_component`); one-line error when missing."""
        source = str(self.unet_weights)
        if Path(source).expanduser().is_file():
            path = str(Path(source).expanduser())
        else:
            repo, _, filename = source.rpartition("/")
            if repo.count("/") != 1 or source.startswith(("/", "./", "../", "~")):
                raise UserError(
                    f"model.unet_weights: file not found: {source}; expects a local file or owner/name/file on the Hub"
                )
            from huggingface_hub import hf_hub_download

            path = loading.load_component(
                lambda where, **kwargs: hf_hub_download(where, filename, **kwargs),
                repo,
                f"UNet weights {filename}",
                cache_dir=self.cache_dir,
                local_files_only=self.local_files_only,
            )
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path)
        return torch.load(path, map_location="cpu", weights_only=True)

    def lora_pipeline(self, parts: dict[str, Any]) -> Any:
        """A ``StableDiffusionXLPipeline`` over the loaded ``parts`` (no copy), to call its LoRA loader on them."""
        from diffusers import DDIMScheduler, StableDiffusionXLPipeline

        return StableDiffusionXLPipeline(
            vae=parts["vae"],
            text_encoder=parts["text_encoder"],
            text_encoder_2=parts["text_encoder_2"],
            tokenizer=parts["tokenizer"],
            tokenizer_2=parts["tokenizer_2"],
            unet=parts["unet"],
            scheduler=DDIMScheduler.from_config(parts["scheduler_config"]),
        )

    # --- networks --------------------------------------------------------------------------------------------
    @property
    def pooled_width(self) -> int:
        """``P``: the width of the pooled embedding (``text_encoder_2``'s projection, 1280)."""
        return int(self.text_encoder_2.config.projection_dim)

    @property
    def pooled_column(self) -> int:
        """Where the pooled embedding sits in ``c``'s last row: under the OpenCLIP-G columns (after CLIP-L's)."""
        return int(self.text_encoder.config.hidden_size)

    def split_conditioning(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``c`` ``[B, 78, D]`` → (hidden states ``[B, 77, D]``, pooled ``[B, P]``)."""
        return split_pooled(cond, self.pooled_width, self.pooled_column)

    def time_ids(self, z_t: torch.Tensor) -> torch.Tensor:
        """``[B, 6]`` = ``(H, W, 0, 0, H, W)`` for the ``H × W`` image of latents ``z_t`` (the pipeline's defaults)."""
        height, width = z_t.shape[-2] * self.latent_factor, z_t.shape[-1] * self.latent_factor
        ids = torch.tensor([height, width, 0, 0, height, width], device=z_t.device, dtype=self.dtype)
        return ids.expand(z_t.shape[0], 6)

    def unet_conditioning(self, z_t: torch.Tensor, cond: torch.Tensor) -> dict[str, Any]:
        """Hidden states as ``encoder_hidden_states``, the pooled embedding and :meth:`time_ids` as
        ``added_cond_kwargs`` (the UNet's ``text_time`` embedding)."""
        hidden, pooled = self.split_conditioning(cond)
        added = {"text_embeds": pooled.to(self.dtype), "time_ids": self.time_ids(z_t)}
        return {"encoder_hidden_states": hidden.to(self.dtype), "added_cond_kwargs": added}

    @torch.no_grad()
    def embed_text(self, prompts: list[str]) -> torch.Tensor:
        """``c`` ``[B, 78, D]`` in :attr:`state_dtype`: CLIP-L ⊕ OpenCLIP-G penultimate hidden states and the pooled
        row, as ``StableDiffusionXLPipeline.encode_prompt`` computes them (``prompt_2 = prompt``); cached per prompt."""
        self._require_loaded()

        def encode(missing: list[str]) -> torch.Tensor:
            out_l = self.text_encoder(self.token_ids(self.tokenizer, missing), output_hidden_states=True)
            out_g = self.text_encoder_2(self.token_ids(self.tokenizer_2, missing), output_hidden_states=True)
            hidden = torch.cat([out_l.hidden_states[-2], out_g.hidden_states[-2]], dim=-1)
            return pack_pooled(hidden, out_g.text_embeds, self.pooled_column)

        return self.cached_embeddings(prompts, encode)

    def null_embedding(self, batch_size: int, null_prompt: str = "") -> torch.Tensor:
        """``c_∅``: zeros for ``""`` when ``zero_empty_prompt`` (SDXL base's ``force_zeros_for_empty_prompt``), else
        the embedding of ``null_prompt``; ``[B, 78, D]``."""
        if null_prompt == "" and self.zero_empty_prompt:
            return torch.zeros_like(self.embed_text([null_prompt] * batch_size))
        return self.embed_text([null_prompt] * batch_size)

    def check_image_encoder(self) -> None:
        """One-line :class:`UserError` unless both image towers are loaded and each projects to its text encoder's
        width (the AN loss pairs ``f̂_L`` with CLIP-L's columns of ``c_∅`` and ``f̂_G`` with OpenCLIP-G's)."""
        self._require_loaded()
        towers = ((self.image_encoder, self.text_encoder), (self.image_encoder_2, self.text_encoder_2))
        if any(image is None for image, _ in towers):
            raise UserError(
                f"model {self.model_id} needs two CLIP image towers for adaptive negation: set model.clip_image_model "
                "(openai/clip-vit-large-patch14) and model.clip_image_model_2 "
                "(laion/CLIP-ViT-bigG-14-laion2B-39B-b160k), or solver.adaptive_negation=false"
            )
        for image, text in towers:
            if int(image.config.projection_dim) != int(text.config.hidden_size):
                raise UserError(
                    f"a CLIP image tower projects to {image.config.projection_dim} dims but its text encoder is "
                    f"{text.config.hidden_size} wide; adaptive negation needs matching widths"
                )

    def embed_image(self, x: torch.Tensor) -> torch.Tensor:
        """``[f̂_L ; f̂_G]`` ``[B, D]``: each tower's L2-normalised CLIP image features of ``x`` in [−1, 1], with TReg's
        official preprocessing at the tower's size, concatenated in the text columns' order; in :attr:`state_dtype`."""
        self.check_image_encoder()
        features = []
        for tower in (self.image_encoder, self.image_encoder_2):
            pixels = clip_preprocess(x.to(self.state_dtype), int(tower.config.image_size)).to(self.dtype)
            f = tower(pixel_values=pixels).image_embeds.to(self.state_dtype)
            features.append(f / f.norm(dim=-1, keepdim=True))
        out = torch.cat(features, dim=-1)
        self.counter.add("clip_image", x.shape[0], out.requires_grad)
        return out


#: Network shapes of :class:`RandomSDXLPrior`: ``tiny`` (toy widths: CLIP-L 16, OpenCLIP-G 32, for tests) and
#: ``sdxl`` (SDXL base's UNet 2.6B, VAE 84M and text towers at full width with the code-written tokenizer's
#: vocabulary; no image towers) — for benchmarks.
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "tiny": {
        "unet": dict(
            sample_size=8,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2),
            attention_head_dim=8,
            use_linear_projection=True,
            addition_time_embed_dim=8,
            norm_num_groups=32,
        ),
        "vae": dict(block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=8, sample_size=64),
        "text": dict(hidden_size=16, intermediate_size=37, num_hidden_layers=3, num_attention_heads=2),
        "text_2": dict(hidden_size=32, intermediate_size=37, num_hidden_layers=3, num_attention_heads=4),
        "vision_size": 32,
    },
    "sdxl": {
        "unet": dict(
            sample_size=128,
            block_out_channels=(320, 640, 1280),
            layers_per_block=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10),
            attention_head_dim=(5, 10, 20),
            use_linear_projection=True,
            addition_time_embed_dim=256,
            norm_num_groups=32,
        ),
        "vae": dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32, sample_size=1024),
        "text": dict(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            hidden_act="quick_gelu",
        ),
        "text_2": dict(
            hidden_size=1280,
            intermediate_size=5120,
            num_hidden_layers=32,
            num_attention_heads=20,
            hidden_act="gelu",
            projection_dim=1280,
        ),
        "vision_size": None,
    },
}


def build_random_sdxl_components(
    seed: int = 0, architecture: str = "tiny", dtype: torch.dtype = torch.float32
) -> dict[str, Any]:
    """SDXL-shaped components with weights drawn from ``seed`` (the global RNG is left untouched): ``unet`` (with the
    ``text_time`` embedding, cross-attention width = the two text widths), ``vae`` (``s = 0.13025``), ``text_encoder``
    (CLIPTextModel), ``text_encoder_2`` (CLIPTextModelWithProjection), their tokenizers (the second pads with ``!``
    as SDXL's), image towers projecting to each text width (``tiny`` only; else ``None``) and SD's DDIM scheduler
    config (SDXL base's scheduler values are SD 1.x's). A half-precision ``dtype`` draws the weights in it (the
    full-size build then needs 7 GiB, not 14); any other draws them in float32."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPVisionConfig, CLIPVisionModelWithProjection

    shapes = ARCHITECTURES[architecture]
    tokenizer, tokenizer_2 = build_tokenizer(), build_tokenizer()
    tokenizer_2.pad_token = "!"
    width_l, width_g = shapes["text"]["hidden_size"], shapes["text_2"]["hidden_size"]
    pooled_width = shapes["text_2"].get("projection_dim", width_g)
    time_width = shapes["unet"]["addition_time_embed_dim"]
    default_dtype = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[]):
        if dtype in (torch.float16, torch.bfloat16):
            torch.set_default_dtype(dtype)
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            in_channels=4,
            out_channels=4,
            cross_attention_dim=width_l + width_g,
            addition_embed_type="text_time",
            projection_class_embeddings_input_dim=6 * time_width + pooled_width,
            **shapes["unet"],
        )
        torch.manual_seed(seed + 1)
        vae = build_vae(shapes["vae"], scaling_factor=SDXL_SCALING_FACTOR)
        torch.manual_seed(seed + 2)
        text_encoder = build_text_encoder(CLIPTextModel, tokenizer, shapes["text"])
        torch.manual_seed(seed + 3)
        text_encoder_2 = build_text_encoder(CLIPTextModelWithProjection, tokenizer_2, shapes["text_2"])
        towers = [None, None]
        if shapes["vision_size"] is not None:
            for i, width in enumerate((width_l, width_g)):
                torch.manual_seed(seed + 4 + i)
                config = CLIPVisionConfig(
                    hidden_size=width,
                    intermediate_size=37,
                    num_hidden_layers=2,
                    num_attention_heads=4,
                    image_size=shapes["vision_size"],
                    patch_size=8,
                    projection_dim=width,
                )
                towers[i] = CLIPVisionModelWithProjection(config)
        torch.set_default_dtype(default_dtype)
    for module in (unet, vae, text_encoder, text_encoder_2, *towers):
        if module is not None:
            module.eval()
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
        "image_encoder": towers[0],
        "image_encoder_2": towers[1],
        "scheduler_config": dict(SD1_SCHEDULER),
    }


class RandomSDXLPrior(SDXLPrior):
    """:class:`SDXLPrior` over the random components of :func:`build_random_sdxl_components` (never the Hub).

    Args:
        architecture: ``tiny`` (tests) or ``sdxl`` (SDXL base's full size, benchmarks).
        seed: weight seed (the same seed gives the same model).
        dtype, vae_dtype, gradient_checkpointing, offload_text_encoders, vae_slicing, vae_tiling: as for
            :class:`SDXLPrior`.
        lora: ``random`` (a random LoRA of the UNet from ``seed``, loaded back through the real loader), a LoRA
            folder, or ``None``.
        unet_weights: a UNet state-dict file replacing the random UNet's weights (as :class:`SDXLPrior`'s).
    """

    def __init__(
        self,
        architecture: str = "tiny",
        seed: int = 0,
        dtype: str | torch.dtype = "float32",
        vae_dtype: str | torch.dtype | None = None,
        gradient_checkpointing: bool = False,
        offload_text_encoders: bool = False,
        vae_slicing: bool = False,
        vae_tiling: bool = False,
        lora: str | None = None,
        unet_weights: str | None = None,
    ) -> None:
        if architecture not in ARCHITECTURES:
            raise UserError(f"unknown architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}")
        super().__init__(
            model_id=f"random-{architecture}(seed={seed})",
            dtype=dtype,
            vae_dtype=vae_dtype,
            local_files_only=True,
            clip_image_model="random" if ARCHITECTURES[architecture]["vision_size"] else None,
            clip_image_model_2="random" if ARCHITECTURES[architecture]["vision_size"] else None,
            gradient_checkpointing=gradient_checkpointing,
            offload_text_encoders=offload_text_encoders,
            vae_slicing=vae_slicing,
            vae_tiling=vae_tiling,
            lora=lora,
            unet_weights=unet_weights,
        )
        self.architecture = architecture
        self.seed = int(seed)

    def _load_components(self) -> dict[str, Any]:
        return build_random_sdxl_components(self.seed, self.architecture, self.dtype)
