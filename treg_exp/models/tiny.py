"""``model=tiny``: Stable-Diffusion-shaped components with random weights, built in code, seeded, offline.

Same classes and wiring as SD 1.x, at toy width, so every solver path (CFG, encode/decode, CLIP image features,
v/ε conversion, gradient checkpointing) runs on a CPU in seconds without touching the Hub:

- UNet2DConditionModel: 4 latent channels, blocks (32, 64), cross-attention width 32, sample size 8 (64 px images);
- AutoencoderKL with 4 levels (3 downsamplings: shrinks by 8 like SD's), 4 latent channels, ``s = 0.18215``;
- CLIPTextModel (width 32, 77 positions) with a byte-level BPE CLIPTokenizer whose ``vocab.json`` / ``merges.txt``
  are written by code (every byte, its end-of-word form, a few merges, ``<|startoftext|>`` / ``<|endoftext|>``);
- CLIPVisionModelWithProjection at 32 px with ``projection_dim`` = the text width (as ViT-L/14 ↔ SD 1.x: 768);
- SD 1.x's DDIM scheduler config (scaled-linear 0.00085 → 0.012, 1000 steps, ``steps_offset=1``,
  ``set_alpha_to_one=False``, ``clip_sample=False``).

:class:`TinyStableDiffusionPrior` is :class:`StableDiffusionPrior` over these; :func:`save_tiny` writes them as a
diffusers folder, which the real loading path reads (the offline-cluster path, tested).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from treg_exp.common.errors import UserError
from treg_exp.models.stable_diffusion import PREDICTION_TYPES, StableDiffusionPrior

#: Width of the tiny text encoder, the UNet's cross-attention and the image tower's projection.
TEXT_WIDTH = 32
#: Side of the tiny CLIP image tower's input (``embed_image`` resizes to it; ViT-L/14 uses 224).
VISION_IMAGE_SIZE = 32

#: SD 1.x scheduler values (REFERENCE.md), as in SD 1.5's ``scheduler/scheduler_config.json``.
SD1_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "set_alpha_to_one": False,
    "clip_sample": False,
    "prediction_type": "epsilon",
}

_MERGES = ("t h", "th e</w>", "a n", "an d</w>", "o f</w>", "p h", "o t", "ph ot", "phot o</w>", "i n", "in g</w>")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP's reversible byte → printable-character map (the alphabet of a byte-level BPE)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def tokenizer_files() -> tuple[dict[str, int], list[str]]:
    """``(vocab, merges)`` of the tiny CLIP tokenizer: all 256 byte symbols, their ``</w>`` forms, a few merges."""
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols]
    merges = list(_MERGES)
    tokens += ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def build_tokenizer(directory: str | os.PathLike | None = None) -> Any:
    """Write ``vocab.json`` / ``merges.txt`` (into ``directory`` or a temporary one) and load a CLIPTokenizer."""
    from transformers import CLIPTokenizer

    vocab, merges = tokenizer_files()

    def write_and_load(folder: Path) -> Any:
        (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
        return CLIPTokenizer.from_pretrained(str(folder), model_max_length=77, local_files_only=True)

    if directory is not None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        return write_and_load(Path(directory))
    with tempfile.TemporaryDirectory(prefix="treg_tiny_tok_") as folder:
        return write_and_load(Path(folder))


#: Network shapes: ``tiny`` (toy widths, for tests) and ``sd15`` (Stable Diffusion 1.5's full architecture with
#: random weights: UNet 860M, VAE 84M, CLIP ViT-L/14 image tower 304M and text tower 86M parameters, the text
#: tower smaller than the real 123M only by the code-written tokenizer's vocabulary) — for benchmarks.
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "tiny": {
        "unet": dict(
            sample_size=8,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=TEXT_WIDTH,
            attention_head_dim=8,
            norm_num_groups=32,
        ),
        "vae": dict(block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=8, sample_size=64),
        "text": dict(hidden_size=TEXT_WIDTH, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4),
        "vision": dict(
            hidden_size=TEXT_WIDTH,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=VISION_IMAGE_SIZE,
            patch_size=8,
            projection_dim=TEXT_WIDTH,
        ),
    },
    "sd15": {
        "unet": dict(
            sample_size=64,
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=768,
            attention_head_dim=8,
            norm_num_groups=32,
        ),
        "vae": dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32, sample_size=512),
        "text": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
        "vision": dict(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            image_size=224,
            patch_size=14,
            projection_dim=768,
        ),
    },
}


def build_vae(shape: dict[str, Any], scaling_factor: float) -> Any:
    """SD's 4-level ``AutoencoderKL`` (4 latent channels, shrinks by 8) with widths ``shape``, weights from the global
    RNG."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        scaling_factor=scaling_factor,
        **shape,
    )


def build_text_encoder(cls: type, tokenizer: Any, shape: dict[str, Any]) -> Any:
    """A CLIP text tower ``cls`` (``CLIPTextModel`` or ``CLIPTextModelWithProjection``) of widths ``shape`` over
    ``tokenizer``'s vocabulary and 77 positions; ``projection_dim`` defaults to the hidden width."""
    from transformers import CLIPTextConfig

    return cls(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            max_position_embeddings=77,
            **{"projection_dim": shape["hidden_size"], **shape},
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


def build_tiny_components(
    seed: int = 0, architecture: str = "tiny", prediction_type: str = "epsilon"
) -> dict[str, Any]:
    """SD-shaped components with weights drawn from ``seed`` (the global RNG is left untouched).

    ``architecture``: a key of :data:`ARCHITECTURES` (``tiny`` or the full-size ``sd15``). ``prediction_type``:
    the scheduler config's (``epsilon``, or ``v_prediction`` as SD 2.1-768's), which the prior reads.
    Returns a dict with ``unet``, ``vae``, ``text_encoder``, ``tokenizer``, ``image_encoder`` (float32),
    ``scheduler`` (a DDIMScheduler) and ``scheduler_config`` (a plain dict).
    """
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    shapes = ARCHITECTURES[architecture]
    tokenizer = build_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(in_channels=4, out_channels=4, **shapes["unet"])
        torch.manual_seed(seed + 1)
        vae = build_vae(shapes["vae"], scaling_factor=0.18215)
        torch.manual_seed(seed + 2)
        text_encoder = build_text_encoder(CLIPTextModel, tokenizer, shapes["text"])
        torch.manual_seed(seed + 3)
        image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**shapes["vision"]))
    scheduler = DDIMScheduler(**{**SD1_SCHEDULER, "prediction_type": prediction_type})
    for module in (unet, vae, text_encoder, image_encoder):
        module.eval()
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "image_encoder": image_encoder,
        "scheduler": scheduler,
        "scheduler_config": dict(scheduler.config),
    }


def save_tiny(directory: str | os.PathLike, seed: int = 0) -> Path:
    """Write the tiny model as a diffusers folder (``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``,
    ``tokenizer/``, ``scheduler/``) plus ``image_encoder/`` (a transformers folder for ``clip_image_model``).

    Returns the directory; ``StableDiffusionPrior(model_id=dir, clip_image_model=dir/"image_encoder")`` loads it.
    """
    from diffusers import StableDiffusionPipeline

    root = Path(directory)
    parts = build_tiny_components(seed)
    pipe = StableDiffusionPipeline(
        vae=parts["vae"],
        text_encoder=parts["text_encoder"],
        tokenizer=parts["tokenizer"],
        unet=parts["unet"],
        scheduler=parts["scheduler"],
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(root))
    parts["image_encoder"].save_pretrained(str(root / "image_encoder"))
    return root


class TinyStableDiffusionPrior(StableDiffusionPrior):
    """:class:`StableDiffusionPrior` over the tiny random components of :func:`build_tiny_components`.

    Args:
        dtype: networks' dtype (``float32`` default; ``float64`` for reference tests).
        architecture: ``tiny`` or ``sd15`` (the full-size architecture, random weights: for benchmarks).
        seed: weight seed (the same seed gives the same model).
        prediction_type: ``epsilon`` (SD 1.x) or ``v_prediction`` (SD 2.1-768's parameterisation), written into the
            scheduler config that the prior reads like a real model's.
        gradient_checkpointing, offload_text_encoders, vae_slicing, vae_tiling, channels_last, compile_mode: as for
            :class:`StableDiffusionPrior`.
        lora: ``random`` (a random LoRA of the UNet from ``seed``, :func:`~treg_exp.models.stable_diffusion.
            save_random_lora`, loaded back through the real loader), a LoRA folder, or ``None``.
    """

    def __init__(
        self,
        dtype: str | torch.dtype = "float32",
        seed: int = 0,
        gradient_checkpointing: bool = False,
        offload_text_encoders: bool = False,
        architecture: str = "tiny",
        vae_slicing: bool = True,
        vae_tiling: bool = False,
        channels_last: bool = False,
        compile_mode: str | None = None,
        prediction_type: str = "epsilon",
        lora: str | None = None,
    ):
        if architecture not in ARCHITECTURES:
            raise UserError(f"unknown architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}")
        if prediction_type not in PREDICTION_TYPES:
            raise UserError(f"model.prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        super().__init__(
            model_id=f"random-{architecture}(seed={seed})",
            dtype=dtype,
            local_files_only=True,
            clip_image_model="tiny",
            gradient_checkpointing=gradient_checkpointing,
            offload_text_encoders=offload_text_encoders,
            vae_slicing=vae_slicing,
            vae_tiling=vae_tiling,
            channels_last=channels_last,
            compile_mode=compile_mode,
            lora=lora,
        )
        self.seed = int(seed)
        self.architecture = architecture
        self.prediction_type = prediction_type

    def _load_components(self) -> dict[str, Any]:
        parts = build_tiny_components(self.seed, self.architecture, self.prediction_type)
        parts.pop("scheduler")
        return parts
