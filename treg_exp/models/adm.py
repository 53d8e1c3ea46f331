"""Pixel-space ADM priors (guided-diffusion's UNet, Dhariwal & Nichol 2021) as a :class:`DiffusionPrior`.

``model=adm_ffhq256`` (DPS's FFHQ model ``ffhq_10m.pt``), ``model=adm_imagenet256`` (``256x256_diffusion_uncond.pt``)
and ``model=adm_imagenet512`` (``512x512_diffusion.pt``, class-conditional, the 512 px pixel prior P2L used); the
``_random`` variants build the same architecture with seeded random weights, for tests and timing.

Architecture (guided-diffusion's flags; ``script_util.create_model`` and DPS's ``configs/model_config.yaml``):

- ``adm_ffhq256``: 128 channels, 1 residual block per level, channel_mult 1,1,2,2,4,4, attention at 16; 93.6 M;
- ``adm_imagenet256``: 256 channels, 2 blocks, 1,1,2,2,4,4, attention at 32,16,8; 552.8 M;
- ``adm_imagenet512``: 256 channels, 2 blocks, 0.5,1,1,2,2,4,4, attention at 32,16,8, 1000 classes; 559.0 M;

all with ``learn_sigma`` (6 output channels), scale-shift norm, BigGAN up/down-sampling residual blocks
(``resblock_updown``), legacy attention order, GroupNorm(32, eps 1e-5), dropout 0 at inference.

Implementation: diffusers' :class:`~diffusers.UNet2DModel` (a maintained implementation), configured as ADM:
``AttnDownBlock2D`` / ``ResnetDownsampleBlock2D`` (and the up counterparts) with ``downsample_type="resnet"``,
``resnet_time_scale_shift="scale_shift"``, ``attention_head_dim=64``, ``attn_norm_num_groups=32``, sinusoidal
time embedding with cos first (``flip_sin_to_cos=True``, ``freq_shift=0``: guided-diffusion's
``timestep_embedding``) and ``num_class_embeds=1000`` for the 512 model. Why not deepinv's ``DiffUNet``: it
hard-codes ``channel_mult=(1,1,2,2,4,4)``, a 256 px attention grid and no class embedding, so it holds the two 256
checkpoints but not the 512 one; diffusers' UNet holds all three. One departure from diffusers' own wiring: ADM's
sinusoidal embedding has ``model_channels`` (256) dimensions while the 512 model's first level has 128 channels, and
diffusers sizes the sinusoid by the first level, so :func:`build_unet` replaces ``time_proj`` / ``time_embedding``
by modules of ADM's sizes (the rest of the network only sees the 1024-wide embedding, as in ADM).

Checkpoints are the official ``.pt`` state dicts in guided-diffusion's key layout (``input_blocks.k.…``,
``middle_block``, ``output_blocks``, ``out``, ``time_embed``, ``label_emb``). :func:`official_to_diffusers` and
:func:`diffusers_to_official` convert between the two layouts; attention ``qkv`` (a 1×1 conv of the legacy order:
heads first, then q, k, v per head) is split into ``to_q/to_k/to_v``. The layout is tested against deepinv's
``DiffUNet`` (a port of guided-diffusion's UNet that loads its copies of the FFHQ and ImageNet-256 checkpoints with
``strict=True``): same keys and shapes for both 256 architectures, and the same ε to float32 rounding for the FFHQ
one with the same random weights. The 512 layout follows from the same rules plus guided-diffusion's ``label_emb``;
it is unverified against the real file (no weights here); a mismatch fails on load with one line.

Prior interface: ``latent_factor = 1``, ``latent_channels = 3``; ``encode`` / ``decode`` are identities counted like a
VAE pass (so the solvers' cost accounting is the same for latent and pixel priors). Schedule: ADM's linear
β 1e-4 → 0.02 over 1000 steps (float64, as guided-diffusion), "leading" grids with ``steps_offset=0`` (guided-
diffusion's ``ddimN`` respacing: t = 980, 960, …, 0 for 50 steps; 999 … 0 for 1000) and ᾱ = 1 after the last step.
ε is the first 3 of the 6 output channels (learned variance); :meth:`AdmPrior.model_output` also returns the last 3
(``v``), and :func:`learned_range_log_variance` turns them into the DDPM ancestral variance of guided-diffusion's
``LEARNED_RANGE`` (what the original DPS sampler uses).

Conditioning: the unconditional models take no text; a prompt is accepted and ignored, with one warning per prior;
``embed_text`` returns an empty ``[B, 0]`` tensor. The class-conditional 512 model conditions on an ImageNet class
index: ``embed_text`` returns ``[B, 1]`` class indices — the prompt when it is an integer in 0 … 999 (so a captions
file can give each image its true class, as DDRM does with ImageNet labels), else ``class_label`` (warning once).
P2L (Sec. 4) says only "ADM trained on ImageNet 512×512 … as the universal prior"; it does not say which class it
conditioned on nor whether it used classifier guidance (this module has none). Both are unverified; the default
``class_label`` is an arbitrary fixed class. The 512 model has no null class, so classifier-free guidance between two
classes is an extrapolation it was not trained for: run solvers with ``guidance_scale: 1`` (the ``ddim_adm_*``
solver_model configs do).

Cost: one ``unet`` call of B rows per :meth:`AdmPrior.eps`; ``encode`` / ``decode`` identities count one call each.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from treg_exp.common.devices import parse_dtype
from treg_exp.common.errors import UserError, WeightsNotFoundError
from treg_exp.models import loading
from treg_exp.models.base import DiffusionPrior
from treg_exp.models.schedule import NoiseSchedule

NUM_IMAGENET_CLASSES = 1000
#: GroupNorm groups of every ADM normalisation layer (guided-diffusion's ``normalization``)
NORM_GROUPS = 32
NORM_EPS = 1e-5

WEIGHT_MODES = ("official", "random")


@dataclass(frozen=True)
class Release:
    """An official ADM checkpoint: its file name and where ``scripts/fetch_weights.py`` downloads it from."""

    file: str
    url: str
    note: str


#: Official checkpoints by model name (the ``--models`` keys of ``scripts/fetch_weights.py``).
RELEASES: dict[str, Release] = {
    "adm_ffhq256": Release(
        "ffhq_10m.pt",
        # DPS links ffhq_10m.pt on Google Drive (no direct URL); deepinv mirrors it as diffusion_ffhq_10m.pt, which
        # its DiffUNet loads with strict=True into this architecture. Byte identity with DPS's file: unverified.
        "https://huggingface.co/deepinv/diffunet/resolve/main/diffusion_ffhq_10m.pt?download=true",
        "DPS's FFHQ 256 model (from ILVR), 357 MB",
    ),
    "adm_imagenet256": Release(
        "256x256_diffusion_uncond.pt",
        "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/256x256_diffusion_uncond.pt",
        "guided-diffusion's unconditional ImageNet 256 model, 2.2 GB",
    ),
    "adm_imagenet512": Release(
        "512x512_diffusion.pt",
        "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/512x512_diffusion.pt",
        "guided-diffusion's class-conditional ImageNet 512 model, 2.2 GB",
    ),
}


# --- the architecture ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AdmArchitecture:
    """guided-diffusion's model flags (``create_model``).

    Attributes:
        image_size: the training resolution; with ``attention_resolutions`` it fixes which levels have attention.
        model_channels: ``num_channels`` (width of the time embedding's sinusoid; level widths are multiples of it).
        num_res_blocks: residual blocks per level (the decoder has one more).
        channel_mult: per-level width multipliers (``0.5`` for the 512 model's first level).
        attention_resolutions: feature-map sides with self-attention, at ``image_size`` (e.g. ``(32, 16, 8)``).
        num_head_channels: channels per attention head.
        num_classes: class-embedding size, ``None`` for unconditional models.
        learn_sigma: 6 output channels (ε and the variance interpolation ``v``) instead of 3.
    """

    image_size: int
    model_channels: int
    num_res_blocks: int
    channel_mult: tuple[float, ...]
    attention_resolutions: tuple[int, ...]
    num_head_channels: int = 64
    num_classes: int | None = None
    learn_sigma: bool = True

    @property
    def level_channels(self) -> tuple[int, ...]:
        return tuple(int(m * self.model_channels) for m in self.channel_mult)

    @property
    def attention_levels(self) -> tuple[bool, ...]:
        """Whether level ``l`` (downsampling factor ``2^l``) has attention: ``2^l ∈ {image_size // r}``."""
        factors = {self.image_size // r for r in self.attention_resolutions}
        return tuple(2**level in factors for level in range(len(self.channel_mult)))

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this (one halving per level but the last)."""
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def out_channels(self) -> int:
        return 6 if self.learn_sigma else 3

    def check(self) -> None:
        """One-line :class:`UserError` for widths GroupNorm or the attention heads cannot take."""
        if self.model_channels < 1 or self.num_res_blocks < 1 or not self.channel_mult:
            raise UserError(
                f"ADM architecture needs model_channels >= 1, num_res_blocks >= 1 and a channel_mult, got "
                f"{self.model_channels}, {self.num_res_blocks}, {list(self.channel_mult)}"
            )
        if self.num_classes is not None and self.num_classes < 1:
            raise UserError(f"model.num_classes must be positive or null, got {self.num_classes}")
        for level, (width, attention) in enumerate(zip(self.level_channels, self.attention_levels, strict=True)):
            if width < NORM_GROUPS or width % NORM_GROUPS:
                raise UserError(
                    f"ADM level {level} has {width} channels (model_channels × channel_mult); GroupNorm needs a "
                    f"multiple of {NORM_GROUPS}"
                )
            if (attention or level == len(self.channel_mult) - 1) and width % self.num_head_channels:
                raise UserError(
                    f"ADM level {level} has {width} channels, not a multiple of num_head_channels="
                    f"{self.num_head_channels}"
                )
        if self.model_channels % 2:
            raise UserError(f"model.model_channels must be even (sinusoidal embedding), got {self.model_channels}")


def build_unet(arch: AdmArchitecture) -> Any:
    """diffusers ``UNet2DModel`` wired as ADM (see the module docstring), weights from the current RNG."""
    from diffusers import UNet2DModel
    from diffusers.models.embeddings import TimestepEmbedding, Timesteps

    attention = arch.attention_levels
    time_width = 4 * arch.model_channels
    unet = UNet2DModel(
        sample_size=arch.image_size,
        in_channels=3,
        out_channels=arch.out_channels,
        time_embedding_type="positional",
        time_embedding_dim=time_width,
        flip_sin_to_cos=True,
        freq_shift=0,
        down_block_types=tuple("AttnDownBlock2D" if a else "ResnetDownsampleBlock2D" for a in attention),
        up_block_types=tuple("AttnUpBlock2D" if a else "ResnetUpsampleBlock2D" for a in reversed(attention)),
        block_out_channels=arch.level_channels,
        layers_per_block=arch.num_res_blocks,
        downsample_type="resnet",
        upsample_type="resnet",
        dropout=0.0,
        act_fn="silu",
        attention_head_dim=arch.num_head_channels,
        norm_num_groups=NORM_GROUPS,
        attn_norm_num_groups=NORM_GROUPS,
        norm_eps=NORM_EPS,
        resnet_time_scale_shift="scale_shift",
        add_attention=True,
        num_class_embeds=arch.num_classes,
    )
    if arch.level_channels[0] != arch.model_channels:
        # ADM's sinusoid has model_channels dims; diffusers sizes it by the first level (128 for the 512 model)
        unet.time_proj = Timesteps(arch.model_channels, flip_sin_to_cos=True, downscale_freq_shift=0)
        unet.time_embedding = TimestepEmbedding(arch.model_channels, time_width)
    return unet


# --- the official key layout -----------------------------------------------------------------------------------------
#: guided-diffusion ResBlock parameter → diffusers ResnetBlock2D parameter
_RESNET_NAMES = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}


def block_correspondence(arch: AdmArchitecture) -> list[tuple[str, str, str]]:
    """``(official prefix, diffusers prefix, kind)`` of each module; kind: ``"module"``, ``"resnet"``, ``"attention"``.

    Official numbering (guided-diffusion's ``UNetModel``): ``input_blocks.0`` is the first conv; then per level
    ``num_res_blocks`` blocks ``[ResBlock, (Attention)]`` and, except after the last level, a downsampling ResBlock;
    ``middle_block`` = ResBlock, Attention, ResBlock; ``output_blocks`` per level from the deepest,
    ``num_res_blocks + 1`` blocks ``[ResBlock, (Attention), (upsampling ResBlock after the last, except level 0)]``.
    """
    levels = len(arch.channel_mult)
    attention = arch.attention_levels
    pairs = [
        ("time_embed.0", "time_embedding.linear_1", "module"),
        ("time_embed.2", "time_embedding.linear_2", "module"),
        ("input_blocks.0.0", "conv_in", "module"),
    ]
    if arch.num_classes is not None:
        pairs.append(("label_emb", "class_embedding", "module"))
    k = 1
    for level in range(levels):
        for j in range(arch.num_res_blocks):
            pairs.append((f"input_blocks.{k}.0", f"down_blocks.{level}.resnets.{j}", "resnet"))
            if attention[level]:
                pairs.append((f"input_blocks.{k}.1", f"down_blocks.{level}.attentions.{j}", "attention"))
            k += 1
        if level != levels - 1:
            pairs.append((f"input_blocks.{k}.0", f"down_blocks.{level}.downsamplers.0", "resnet"))
            k += 1
    pairs += [
        ("middle_block.0", "mid_block.resnets.0", "resnet"),
        ("middle_block.1", "mid_block.attentions.0", "attention"),
        ("middle_block.2", "mid_block.resnets.1", "resnet"),
    ]
    k = 0
    for i, level in enumerate(reversed(range(levels))):
        for j in range(arch.num_res_blocks + 1):
            pairs.append((f"output_blocks.{k}.0", f"up_blocks.{i}.resnets.{j}", "resnet"))
            sub = 1
            if attention[level]:
                pairs.append((f"output_blocks.{k}.1", f"up_blocks.{i}.attentions.{j}", "attention"))
                sub = 2
            if level > 0 and j == arch.num_res_blocks:
                pairs.append((f"output_blocks.{k}.{sub}", f"up_blocks.{i}.upsamplers.0", "resnet"))
            k += 1
    pairs += [("out.0", "conv_norm_out", "module"), ("out.2", "conv_out", "module")]
    return pairs


def _attention_heads(arch: AdmArchitecture, channels: int) -> int:
    return channels // arch.num_head_channels


def diffusers_to_official(state: Mapping[str, torch.Tensor], arch: AdmArchitecture) -> dict[str, torch.Tensor]:
    """A diffusers state dict of :func:`build_unet` ``(arch)`` → guided-diffusion's key layout and shapes."""
    out: dict[str, torch.Tensor] = {}
    for official, ours, kind in block_correspondence(arch):
        if kind == "module":
            for suffix in ("weight", "bias"):
                if f"{ours}.{suffix}" in state:
                    out[f"{official}.{suffix}"] = state[f"{ours}.{suffix}"]
        elif kind == "resnet":
            for old, new in _RESNET_NAMES.items():
                for suffix in ("weight", "bias"):
                    if f"{ours}.{new}.{suffix}" in state:
                        out[f"{official}.{old}.{suffix}"] = state[f"{ours}.{new}.{suffix}"]
        else:
            q, k, v = (state[f"{ours}.to_{s}.weight"] for s in "qkv")
            channels = q.shape[0]
            heads = _attention_heads(arch, channels)
            # legacy order: output channel h·3d + s·d + i holds part s ∈ (q, k, v) of head h
            weight = torch.stack([w.reshape(heads, -1, channels) for w in (q, k, v)], dim=1)
            bias = torch.stack([state[f"{ours}.to_{s}.bias"].reshape(heads, -1) for s in "qkv"], dim=1)
            out[f"{official}.norm.weight"] = state[f"{ours}.group_norm.weight"]
            out[f"{official}.norm.bias"] = state[f"{ours}.group_norm.bias"]
            out[f"{official}.qkv.weight"] = weight.reshape(3 * channels, channels, 1)
            out[f"{official}.qkv.bias"] = bias.reshape(3 * channels)
            out[f"{official}.proj_out.weight"] = state[f"{ours}.to_out.0.weight"][..., None]
            out[f"{official}.proj_out.bias"] = state[f"{ours}.to_out.0.bias"]
    return out


def official_to_diffusers(
    state: Mapping[str, torch.Tensor], arch: AdmArchitecture, expected: Mapping[str, torch.Size], source: str
) -> dict[str, torch.Tensor]:
    """A guided-diffusion state dict → the keys of :func:`build_unet` ``(arch)``; ``expected``: their shapes.

    Raises a one-line :class:`UserError` naming ``source`` when keys or shapes do not match the architecture.
    """
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(key: str) -> torch.Tensor | None:
        if key in state:
            used.add(key)
            return state[key]
        return None

    for official, ours, kind in block_correspondence(arch):
        if kind in ("module", "resnet"):
            names = {"": ""} if kind == "module" else {f".{old}": f".{new}" for old, new in _RESNET_NAMES.items()}
            for old, new in names.items():
                for suffix in ("weight", "bias"):
                    tensor = take(f"{official}{old}.{suffix}")
                    if tensor is not None:
                        out[f"{ours}{new}.{suffix}"] = tensor
            continue
        weight, bias = take(f"{official}.qkv.weight"), take(f"{official}.qkv.bias")
        if weight is None or bias is None or weight.dim() != 3 or weight.shape[0] % 3:
            continue  # reported below as missing keys
        channels = weight.shape[1]
        heads = _attention_heads(arch, channels)
        parts = weight.reshape(heads, 3, -1, channels).unbind(dim=1)
        part_bias = bias.reshape(heads, 3, -1).unbind(dim=1)
        for s, w, b in zip("qkv", parts, part_bias, strict=True):
            out[f"{ours}.to_{s}.weight"] = w.reshape(-1, channels)
            out[f"{ours}.to_{s}.bias"] = b.reshape(-1)
        for old, new in (("norm", "group_norm"), ("proj_out", "to_out.0")):
            for suffix in ("weight", "bias"):
                tensor = take(f"{official}.{old}.{suffix}")
                if tensor is not None:
                    out[f"{ours}.{new}.{suffix}"] = tensor[..., 0] if tensor.dim() == 3 else tensor
    unexpected = sorted(set(state) - used)
    missing = sorted(set(expected) - set(out))
    wrong = sorted(k for k in set(expected) & set(out) if tuple(out[k].shape) != tuple(expected[k]))
    if unexpected or missing or wrong:
        details = []
        for label, keys in (("unexpected keys", unexpected), ("missing", missing), ("wrong shapes", wrong)):
            if keys:
                details.append(f"{len(keys)} {label} (e.g. {keys[0]})")
        raise UserError(
            f"checkpoint {source} does not fit the configured ADM architecture: {'; '.join(details)} "
            "(check model.image_size, model_channels, channel_mult, attention_resolutions, num_classes)"
        )
    return out


# --- learned variance (DDPM ancestral steps) -------------------------------------------------------------------------
def learned_range_log_variance(
    v: torch.Tensor, alpha_bars: Sequence[float], index: int, final_alpha_bar: float = 1.0
) -> torch.Tensor:
    """``log σ²`` of guided-diffusion's ``LEARNED_RANGE`` variance at step ``index`` of a (respaced) grid.

    For the step ᾱ_t → ᾱ_prev: ``β = 1 − ᾱ_t/ᾱ_prev``, ``β̃ = β·(1 − ᾱ_prev)/(1 − ᾱ_t)``,
    ``log σ² = f·log β + (1 − f)·log β̃`` with ``f = (v + 1)/2``. At the last step β̃ = 0, and guided-diffusion's
    ``posterior_log_variance_clipped`` takes β̃ of the step before it instead (for a one-step grid: β).

    Args:
        v: ``[B, 3, H, W]`` the last 3 output channels (:meth:`AdmPrior.model_output`).
        alpha_bars: ᾱ of every grid step in sampling order (noisiest first), e.g. ``[s.alpha_bar for s in plan]``.
        index: the step (0 = noisiest).
        final_alpha_bar: ᾱ after the last step (1 for ADM).
    """

    def betas(i: int) -> tuple[float, float]:
        a = float(alpha_bars[i])
        prev = float(alpha_bars[i + 1]) if i + 1 < len(alpha_bars) else float(final_alpha_bar)
        beta = 1.0 - a / prev
        return beta, beta * (1.0 - prev) / (1.0 - a)

    beta, beta_tilde = betas(index)
    if index == len(alpha_bars) - 1:
        beta_tilde = betas(index - 1)[1] if index > 0 else beta
    fraction = (v + 1.0) / 2.0
    return fraction * math.log(beta) + (1.0 - fraction) * math.log(beta_tilde)


# --- the prior -------------------------------------------------------------------------------------------------------
class AdmPrior(DiffusionPrior):
    """guided-diffusion's ADM UNet as a pixel-space prior (see the module docstring).

    Args:
        name: the release (a key of :data:`RELEASES`: ``adm_ffhq256``, ``adm_imagenet256``, ``adm_imagenet512``),
            for the checkpoint file and messages.
        weights: ``"official"`` (load the checkpoint) or ``"random"`` (seeded random weights, no file).
        checkpoint: a local ``.pt`` in guided-diffusion's key layout; ``None``: the release's file in the cache.
        cache_dir: ``paths.weights``; the file is looked for in ``cache_dir/torch/hub/checkpoints`` (what
            ``scripts/fetch_weights.py --out DIR`` writes), then in torch's hub cache (``TORCH_HOME``).
        local_files_only: never download (also implied by ``HF_HUB_OFFLINE``, which ``paths.weights`` sets).
        image_size, model_channels, num_res_blocks, channel_mult, attention_resolutions, num_head_channels,
            num_classes: the architecture (:class:`AdmArchitecture`); the configs hold each release's values.
        class_label: the class of a class-conditional model for prompts that are not a class index.
        dtype: the network's dtype (``float16``, ``bfloat16``, ``float32``, ``float64``).
        seed: weight seed for ``weights="random"``.
        gradient_checkpointing: recompute the UNet's activations in backward passes (DPS-type solvers).
    """

    latent_channels = 3
    latent_factor = 1

    def __init__(
        self,
        name: str = "adm_ffhq256",
        weights: str = "official",
        checkpoint: str | os.PathLike | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        image_size: int = 256,
        model_channels: int = 128,
        num_res_blocks: int = 1,
        channel_mult: Sequence[float] = (1, 1, 2, 2, 4, 4),
        attention_resolutions: Sequence[int] = (16,),
        num_head_channels: int = 64,
        num_classes: int | None = None,
        class_label: int = 0,
        dtype: str | torch.dtype = "float32",
        seed: int = 0,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if weights not in WEIGHT_MODES:
            raise UserError(f"model.weights must be one of {WEIGHT_MODES}, got {weights!r}")
        if weights == "official" and checkpoint in (None, "") and name not in RELEASES:
            raise UserError(f"unknown ADM release {name!r} (known: {', '.join(RELEASES)}); or set model.checkpoint")
        self.name = str(name)
        self.weights = weights
        self.checkpoint = None if checkpoint in (None, "") else str(checkpoint)
        self.cache_dir = None if cache_dir in (None, "") else str(cache_dir)
        self.local_files_only = bool(local_files_only)
        self.architecture = AdmArchitecture(
            image_size=int(image_size),
            model_channels=int(model_channels),
            num_res_blocks=int(num_res_blocks),
            channel_mult=tuple(float(m) for m in channel_mult),
            attention_resolutions=tuple(int(r) for r in attention_resolutions),
            num_head_channels=int(num_head_channels),
            num_classes=None if num_classes is None else int(num_classes),
        )
        self.architecture.check()
        classes = self.architecture.num_classes
        if classes is not None and not 0 <= int(class_label) < classes:
            raise UserError(f"model.class_label must be in 0..{classes - 1}, got {class_label}")
        self.class_label = int(class_label)
        self.dtype = parse_dtype(dtype)
        self.seed = int(seed)
        self.gradient_checkpointing = bool(gradient_checkpointing)
        self.schedule = NoiseSchedule.linear()
        self.unet: Any = None
        self._warned: set[str] = set()

    @property
    def conditional(self) -> bool:
        return self.architecture.num_classes is not None

    @property
    def loaded(self) -> bool:
        return self.unet is not None

    # --- lifecycle -------------------------------------------------------------------------------------------
    def checkpoint_path(self) -> Path:
        """Where the official checkpoint is (downloading it when allowed); one-line error when it is nowhere."""
        if self.checkpoint is not None:
            path = Path(self.checkpoint).expanduser()
            if not path.is_file():
                raise WeightsNotFoundError(
                    f"model.checkpoint: file not found: {path}; model.checkpoint expects the {self.name} state dict "
                    f"(.pt), or null for the release's file; {self._staging_hint()}"
                )
            return path
        release = RELEASES[self.name]
        folders = []
        if self.cache_dir is not None:
            folders.append(Path(self.cache_dir).expanduser() / "torch" / "hub" / "checkpoints")
        folders.append(Path(torch.hub.get_dir()) / "checkpoints")
        for folder in folders:
            if (folder / release.file).is_file():
                return folder / release.file
        where = " or ".join(str(f) for f in dict.fromkeys(folders))
        if not loading.downloads_allowed(self.local_files_only):
            why = "local_files_only=true" if self.local_files_only else "HF_HUB_OFFLINE is set"
            raise WeightsNotFoundError(
                f"weights for model '{self.name}' not found ({release.file} missing in {where}, downloads off: {why}); "
                f"{self._staging_hint()}"
            )
        if not loading.hub_reachable(release.url):
            raise WeightsNotFoundError(
                f"weights for model '{self.name}' not found ({release.file} missing in {where}, and "
                f"{release.url.split('/')[2]} is unreachable from this machine); {self._staging_hint()}"
            )
        target = folders[0] / release.file
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(release.url, str(target), progress=True)
        except Exception as error:  # network failures come in many types; the user needs one line either way
            raise WeightsNotFoundError(
                f"weights for model '{self.name}': downloading {release.url} failed ({type(error).__name__}: "
                f"{str(error).splitlines()[0][:120] if str(error) else ''}); {self._staging_hint()}"
            ) from None
        return target

    def _staging_hint(self) -> str:
        key = self.name if self.name in RELEASES else "adm_ffhq256"
        return (
            f"stage it with `python scripts/fetch_weights.py --out DIR --models {key}` and run with "
            "`paths.weights=DIR`, or set model.checkpoint=/path/to/file.pt (guided-diffusion's key layout)"
        )

    def _build_network(self) -> Any:
        """The UNet with its weights: the official checkpoint (converted) or seeded random ones."""
        arch = self.architecture
        if self.weights == "random":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                return build_unet(arch)
        path = self.checkpoint_path()  # fails here, before the network is built, when the file is missing
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise UserError(f"cannot read ADM checkpoint {path}: {type(error).__name__}: {error}") from None
        return self.network_from_official(state, str(path))

    def network_from_official(self, state: Any, source: str = "state dict") -> Any:
        """The UNet holding ``state``, a state dict in guided-diffusion's key layout (one-line error if it does not
        fit the architecture; ``source`` names it). :meth:`load` calls it with the checkpoint's contents."""
        if not isinstance(state, Mapping):
            raise UserError(f"ADM checkpoint {source} is not a state dict (got {type(state).__name__})")
        arch = self.architecture
        with torch.device("meta"):  # no time spent on an initialisation the checkpoint overwrites
            unet = build_unet(arch)
        expected = {k: v.shape for k, v in unet.state_dict().items()}
        unet.load_state_dict(official_to_diffusers(state, arch, expected, source), strict=True, assign=True)
        return unet

    def load(self, device: torch.device | str = "cpu", state: Mapping[str, torch.Tensor] | None = None) -> AdmPrior:
        """Build the network (once) in ``self.dtype``, frozen and in eval mode, and move it to ``device``.

        ``state``: an official-layout state dict already in memory, used instead of the checkpoint file.
        """
        if self.unet is None:
            unet = self._build_network() if state is None else self.network_from_official(state)
            unet.requires_grad_(False)
            unet.eval()
            torch.nn.Module.to(unet, self.dtype)  # nn.Module.to: diffusers' override warns on every cast
            self.unet = unet
            self.set_gradient_checkpointing(self.gradient_checkpointing)
        return self.to(device)

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute the UNet's activations in backward passes (now if loaded, else at :meth:`load`)."""
        self.gradient_checkpointing = bool(enabled)
        if self.unet is None:
            return
        if enabled:
            self.unet.enable_gradient_checkpointing()
        else:
            self.unet.disable_gradient_checkpointing()

    def _require_loaded(self) -> None:
        if self.unet is None:
            raise UserError(f"{type(self).__name__} ({self.name}): call load(device) first")

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, UserWarning, stacklevel=3)

    # --- shapes ----------------------------------------------------------------------------------------------
    def latent_shape(self, image_shape: Sequence[int]) -> tuple[int, int, int, int]:
        """``[B, 3, H, W]`` → the same; H and W must be multiples of 2^(levels − 1) (32 at 256 px, 64 at 512)."""
        b, c, h, w = image_shape
        self._check_size(h, w)
        return (b, 3, h, w)

    def _check_size(self, h: int, w: int) -> None:
        m = self.architecture.size_multiple
        if h % m or w % m:
            raise UserError(f"{self.name} needs image sides that are multiples of {m}, got {h}x{w}")
        if self.weights == "official" and (h, w) != (self.architecture.image_size,) * 2:
            size = self.architecture.image_size
            self._warn_once("size", f"{self.name} was trained at {size}x{size}; running it at {h}x{w}")

    # --- conditioning ----------------------------------------------------------------------------------------
    def embed_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """No text: ``[B, 0]`` for unconditional models; ``[B, 1]`` class indices for class-conditional ones.

        A class-conditional model takes a prompt that is an integer in ``0 … num_classes − 1`` as that class and
        ``class_label`` for any other prompt. Prompts that are ignored (non-empty, not a class index) warn once.
        """
        if isinstance(prompts, str):
            raise UserError("embed_text takes a list of prompts, one per image")
        classes = self.architecture.num_classes
        labels = []
        for prompt in prompts:
            text = str(prompt).strip()
            if classes is not None and text.isdigit() and int(text) < classes:
                labels.append(int(text))
                continue
            if text:
                what = f"the class model.class_label={self.class_label}" if classes else "no conditioning"
                self._warn_once(
                    "prompt", f"{self.name} is not text-conditioned: prompts such as {text!r} are ignored ({what})"
                )
            labels.append(self.class_label)
        if classes is None:
            return torch.zeros(len(labels), 0, device=self.device, dtype=self.state_dtype)
        return torch.tensor(labels, device=self.device, dtype=self.state_dtype)[:, None]

    def _labels(self, cond: torch.Tensor, batch: int) -> torch.Tensor | None:
        classes = self.architecture.num_classes
        expected = (batch, 1) if classes is not None else (batch, 0)
        if tuple(cond.shape) != expected:
            raise UserError(
                f"{self.name}: conditioning must be {list(expected)} (from embed_text), got {list(cond.shape)}"
            )
        if classes is None:
            return None
        labels = cond[:, 0].detach().round().long()
        if labels.min() < 0 or labels.max() >= classes:
            raise UserError(f"{self.name}: class labels must be in 0..{classes - 1}")
        return labels

    # --- networks --------------------------------------------------------------------------------------------
    def encode(
        self, x: torch.Tensor, generators: Sequence[torch.Generator] | None = None, mode: str = "sample"
    ) -> torch.Tensor:
        """Identity (pixel-space prior), counted as one encoder pass of B rows. ``[B, 3, H, W]`` → same."""
        if mode not in ("sample", "mean"):
            raise UserError(f"encode mode must be 'sample' or 'mean', got {mode!r}")
        self.counter.add("encode", x.shape[0])
        return x.clone()

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Identity (pixel-space prior), counted as one decoder pass of B rows. ``[B, 3, H, W]`` → same."""
        self.counter.add("decode", z.shape[0])
        return z.clone()

    def model_output(self, z_t: torch.Tensor, t: int, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The network's 6 output channels split as ``(ε, v)``, each ``[B, 3, H, W]`` in ``z_t``'s dtype (``v`` is
        ``None`` for a network without learned variance).

        ``v`` (nominally in [−1, 1]) interpolates the log-variance (:func:`learned_range_log_variance`). One
        ``unet`` call of B rows; the UNet runs in ``self.dtype`` and is differentiable with respect to ``z_t``.

        Args:
            z_t: ``[B, 3, H, W]`` noisy images (x_t in [−1, 1] scale); t: the integer timestep 0 … 999;
            cond: ``[B, 0]`` or ``[B, 1]`` class indices, from :meth:`embed_text` / :meth:`null_embedding`.
        """
        self._require_loaded()
        t = int(t)
        if not 0 <= t < self.schedule.num_train_timesteps:
            raise UserError(f"timestep {t} outside 0..{self.schedule.num_train_timesteps - 1}")
        if z_t.dim() != 4 or z_t.shape[1] != 3:
            raise UserError(f"{self.name} takes [B, 3, H, W] images, got {list(z_t.shape)}")
        self._check_size(*z_t.shape[-2:])
        labels = self._labels(cond, z_t.shape[0])
        timestep = torch.tensor(t, device=z_t.device, dtype=torch.long)
        out = self.unet(z_t.to(self.dtype), timestep, class_labels=labels, return_dict=False)[0].to(z_t.dtype)
        self.counter.add("unet", z_t.shape[0], out.requires_grad)
        if out.shape[1] == 3:  # a model without learned variance
            return out, None
        eps, v = out.split(3, dim=1)
        return eps, v

    @property
    def has_learned_variance(self) -> bool:
        """True: the ADM checkpoints have ``learn_sigma`` (6 output channels, guided-diffusion's ``learned_range``)."""
        return self.architecture.learn_sigma

    def learned_log_variance(
        self, v: torch.Tensor | None, alpha_bars: Sequence[float], index: int
    ) -> torch.Tensor | None:
        """guided-diffusion's ``LEARNED_RANGE`` log σ² (:func:`learned_range_log_variance`; formula in
        :meth:`DiffusionPrior.learned_log_variance`), ``None`` for ``v = None``."""
        if v is None:
            return None
        return learned_range_log_variance(v, alpha_bars, index, self.schedule.final_alpha_cumprod)

    def eps(self, z_t: torch.Tensor, t: int, cond: torch.Tensor) -> torch.Tensor:
        """ε(x_t, t, c) ``[B, 3, H, W]``: the first 3 of the network's 6 output channels (learned variance)."""
        return self.model_output(z_t, t, cond)[0]
