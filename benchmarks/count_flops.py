"""Floating-point operations of one forward pass of each prior's networks, counted, for the cost plan's estimates.

    python benchmarks/count_flops.py        # writes benchmarks/flops.json (a few seconds; no weights, no GPU)

Each network is built at full size on PyTorch's ``meta`` device (shapes only: no memory, no arithmetic) and run once
under ``torch.utils.flop_counter.FlopCounterMode``, which counts the matrix products and convolutions (2 FLOPs per
multiply-add; normalisations and activations, a few per cent, are not counted). Passes, as
``benchmarks/results.json`` names them: ``unet_1row`` (one image, one UNet/ADM call), ``decode`` and ``encode``
(the VAE at the benchmark resolution: 512 px for SD, the model's own for ADM), ``clip_image`` (CLIP ViT-L/14's image
tower at 224 px). :mod:`treg_exp.experiment.cost` turns these into hours where no machine measured an architecture
and for GPUs no run of this project measured (A100, H100), always labelled as estimates.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "flops.json"


def counted(module: torch.nn.Module, *args: torch.Tensor, **kwargs: torch.Tensor) -> float:
    with FlopCounterMode(display=False) as counter:
        module(*args, **kwargs)
    return float(counter.get_total_flops())


def sd15() -> dict[str, float]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from treg_exp.models.tiny import ARCHITECTURES

    shapes = ARCHITECTURES["sd15"]
    with torch.device("meta"):
        unet = UNet2DConditionModel(in_channels=4, out_channels=4, **shapes["unet"])
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            **shapes["vae"],
        )
        vision = CLIPVisionModelWithProjection(CLIPVisionConfig(**shapes["vision"]))
        latent = torch.zeros(1, 4, 64, 64)
        text = torch.zeros(1, 77, shapes["unet"]["cross_attention_dim"])
        return {
            "resolution": 512,
            "unet_1row": counted(unet, latent, torch.zeros(1), encoder_hidden_states=text),
            "decode": counted(vae.decode, latent),
            "encode": counted(vae.encode, torch.zeros(1, 3, 512, 512)),
            "clip_image": counted(vision, pixel_values=torch.zeros(1, 3, 224, 224)),
        }


def adm(name: str) -> dict[str, float]:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    from treg_exp.models.adm import build_unet

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        arch = instantiate(compose("config", overrides=[f"model={name}"]).model).architecture
    with torch.device("meta"):
        network = build_unet(arch)
        x = torch.zeros(1, 3, arch.image_size, arch.image_size)
        labels = {"class_labels": torch.zeros(1, dtype=torch.long)} if arch.num_classes else {}
        return {"resolution": arch.image_size, "unet_1row": counted(network, x, torch.zeros(1), **labels)}


def main() -> None:
    flops = {"sd15": sd15(), **{name: adm(name) for name in ("adm_ffhq256", "adm_imagenet256", "adm_imagenet512")}}
    note = "forward FLOPs per pass (2 per multiply-add), counted on the meta device by benchmarks/count_flops.py"
    OUT.write_text(json.dumps({"note": note, "architectures": flops}, indent=2) + "\n")
    for name, passes in flops.items():
        print(name, {k: f"{v / 1e9:.0f} GFLOP" if k != "resolution" else v for k, v in passes.items()})


if __name__ == "__main__":
    main()
