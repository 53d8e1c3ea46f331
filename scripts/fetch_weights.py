"""Download every weight a run may need into one folder, for clusters without internet.

    python scripts/fetch_weights.py --out /shared/treg-weights            # SD 1.5 + metrics
    python scripts/fetch_weights.py --out DIR --models sd15 sd14 sd21base
    python scripts/fetch_weights.py --out DIR --models sdxl sdxl_vae_fp16     # + OpenCLIP ViT-bigG/14 image tower
    python scripts/fetch_weights.py --out DIR --models sd15 lcm_lora_sd15     # + LCM-LoRA (solver=latino)
    python scripts/fetch_weights.py --out DIR --models sdxl dmd2_sdxl_unet    # + DMD2's UNet (official LATINO)
    python scripts/fetch_weights.py --out DIR --models adm_ffhq256 adm_imagenet512   # pixel ADM priors (.pt)
    python scripts/fetch_weights.py --out DIR --models sd15 paligemma          # + a captioner (prompt=caption)
    python scripts/fetch_weights.py --out DIR --dry-run                   # list what would be fetched

then run with ``paths.weights=DIR`` (``HF_HOME``, ``HF_HUB_OFFLINE``, ``TORCH_HOME`` and clean-fid's file are set
and placed by :func:`treg_exp.models.weights.stage_weights`). The layout is described in :mod:`treg_exp.models.weights`.
Files already present are kept.

It needs network: on a cluster, run it on a login node that has it (compute nodes often have none) into a shared
folder. Gated models (the PaliGemma captioner) also need ``HF_TOKEN`` from an account that accepted their licence.
Without network, with ``HF_HUB_OFFLINE`` set, or when a download fails, it stops with one ``error:`` line saying
what it needs (exit 2), before writing anything when the hosts cannot be reached.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from treg_exp.models import loading, weights  # noqa: E402 - after the path insert, so the script runs from a checkout
from treg_exp.models.adm import RELEASES as ADM_RELEASES  # noqa: E402
from treg_exp.models.sdxl import CLIP_BIGG_MODEL  # noqa: E402

# Hugging Face repositories of the diffusion models (conf/model/*) and CLIP (TReg's adaptive negation, CLIP score).
HF_MODELS = {
    "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sd14": "CompVis/stable-diffusion-v1-4",
    "sd21base": "stabilityai/stable-diffusion-2-1-base",
    "sd21": "stabilityai/stable-diffusion-2-1",
    "sd3_medium": "stabilityai/stable-diffusion-3-medium-diffusers",
    "sd35_medium": "stabilityai/stable-diffusion-3.5-medium",
    "flux_dev": "black-forest-labs/FLUX.1-dev",
    "flux_schnell": "black-forest-labs/FLUX.1-schnell",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
    "sdxl_vae_fp16": "madebyollin/sdxl-vae-fp16-fix",
    "lcm_lora_sd15": "latent-consistency/lcm-lora-sdv1-5",  # LCM-LoRA (model.lora; solver=latino)
    "lcm_lora_sdxl": "latent-consistency/lcm-lora-sdxl",  # LCM-LoRA for model=sdxl
    "clip": weights.CLIP_MODEL,
    "clip_bigg": CLIP_BIGG_MODEL,
}
# single files of Hub repositories too large to stage whole: key → (repository, file)
HF_FILES = {"dmd2_sdxl_unet": ("tianweiy/DMD2", "dmd2_sdxl_4step_unet_fp16.bin")}  # model.unet_weights (LATINO, SDXL)
# the image towers every run stages (TReg's adaptive negation, CLIP score); SDXL's second one comes with model sdxl
ALWAYS = {"clip": None, "clip_bigg": "sdxl"}
# the captioners of prompt=caption (conf/prompt/captioner/<key>.yaml): transformers folders, sharded safetensors
CAPTIONERS = {
    "paligemma": "google/paligemma2-3b-mix-224",
    "blip2": "Salesforce/blip2-opt-2.7b",
    "florence2": "florence-community/Florence-2-large",
    "llava": "llava-hf/llava-1.5-7b-hf",
}
CAPTIONER_PATTERNS = ["*.json", "*.txt", "*.model", "*.jinja", "*.safetensors"]
# fp32 safetensors of each diffusers component plus configs and tokenizers (not the fp16/EMA/ckpt duplicates)
HF_PATTERNS = [
    "*.json",
    "*.txt",
    "tokenizer/*",
    "tokenizer_2/*",
    "tokenizer_3/*",
    "*/diffusion_pytorch_model-*.safetensors",
    "*/model-*.safetensors",
    "model-*.safetensors",
    "*/diffusion_pytorch_model.safetensors",
    "*/model.safetensors",
    "model.safetensors",
    "pytorch_lora_weights.safetensors",  # a LoRA repository's one file (diffusers' name)
]
# SD 1.x's safety checker (1.2 GB) is never loaded here
HF_SKIPPED = ["safety_checker/*"]
TORCH_FILES = {
    weights.VGG16_FILE: "https://download.pytorch.org/models/vgg16-397923af.pth",
    weights.ALEXNET_FILE: "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    weights.PT_INCEPTION_FILE: "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
}
CLEANFID_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"


@dataclass
class Item:
    """One thing to fetch to ``target``: a Hub repository (``kind="hf"``), one file of one (``"hf_file"``, source
    ``owner/name/file``) or a file from a URL (``"url"``)."""

    kind: str
    source: str
    target: Path


def plan(out: Path, models: list[str]) -> list[Item]:
    """What ``--out out --models ...`` fetches, and where (CLIP and the metric weights are always included)."""
    hub = out / "huggingface" / "hub"
    extra = [tower for tower, needed_by in ALWAYS.items() if needed_by is None or needed_by in models]
    items = [Item("hf", HF_MODELS[m], hub) for m in [*models, *extra] if m in HF_MODELS]
    items += [Item("hf", CAPTIONERS[m], hub) for m in models if m in CAPTIONERS]
    items += [Item("hf_file", "/".join(HF_FILES[m]), hub) for m in models if m in HF_FILES]
    checkpoints = out / "torch" / "hub" / "checkpoints"
    # ADM's official .pt files sit where torch.hub keeps downloads; model=adm_* looks there (cache_dir=paths.weights)
    items += [Item("url", ADM_RELEASES[m].url, checkpoints / ADM_RELEASES[m].file) for m in models if m in ADM_RELEASES]
    items += [Item("url", url, checkpoints / name) for name, url in TORCH_FILES.items()]
    items.append(Item("url", CLEANFID_URL, out / "cleanfid" / weights.CLEANFID_INCEPTION_FILE))
    return items


def fetch(item: Item) -> None:
    if item.kind == "hf":
        from huggingface_hub import snapshot_download

        if item.source in loading.GATED:
            print(loading.gated_note(item.source))

        captioner = item.source in CAPTIONERS.values()
        patterns = CAPTIONER_PATTERNS if captioner else HF_PATTERNS
        snapshot_download(item.source, cache_dir=str(item.target), allow_patterns=patterns, ignore_patterns=HF_SKIPPED)
    elif item.kind == "hf_file":
        from huggingface_hub import hf_hub_download

        repo, _, filename = item.source.rpartition("/")
        hf_hub_download(repo, filename, cache_dir=str(item.target))
    elif not item.target.is_file():
        import torch

        item.target.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(item.source, str(item.target), progress=True)


NETWORK_HINT = "run it on a machine with network (a cluster's login node), then copy or share the folder"
TOKEN_HINT = "gated or private: accept its licence on huggingface.co and export HF_TOKEN=<your token>"


def unreachable(items: list[Item]) -> str | None:
    """Why the items cannot be fetched from here (``None``: every host answers), asked before anything is written."""
    from urllib.parse import urlparse

    from treg_exp.models.loading import hub_offline, hub_reachable

    if hub_offline() and any(item.kind in ("hf", "hf_file") for item in items):
        return f"HF_HUB_OFFLINE is set, so nothing can be downloaded; unset it and {NETWORK_HINT}"
    hosts = {"the Hugging Face Hub": None} if any(item.kind in ("hf", "hf_file") for item in items) else {}
    hosts.update({urlparse(i.source).hostname or i.source: i.source for i in items if i.kind == "url"})
    for name, endpoint in hosts.items():
        if not hub_reachable(endpoint):
            return f"{name} is unreachable from this machine; {NETWORK_HINT}"
    return None


def failure(item: Item, error: BaseException) -> str:
    """One line for a failed download: what failed and what it needs (network, or HF_TOKEN for a gated model)."""
    detail = (str(error).strip().splitlines() or [""])[0][:160]
    status = getattr(getattr(error, "response", None), "status_code", None)
    gated = type(error).__name__ in ("GatedRepoError", "RepositoryNotFoundError") or status in (401, 403)
    need = TOKEN_HINT if gated else NETWORK_HINT
    if item.source in loading.GATED:  # the licence page to accept comes with the token
        need = f"{need}; {loading.gated_note(item.source)}"
    return f"fetching {item.source} failed ({type(error).__name__}: {detail}); {need}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the cache folder (later: paths.weights=OUT)")
    choices = [*(m for m in HF_MODELS if m not in ALWAYS), *ADM_RELEASES, *CAPTIONERS, *HF_FILES]
    parser.add_argument("--models", nargs="*", default=["sd15"], choices=choices)
    parser.add_argument("--dry-run", action="store_true", help="print the plan and download nothing")
    args = parser.parse_args(argv)
    items = plan(args.out.expanduser().resolve(), args.models)
    problem = None if args.dry_run else unreachable(items)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    for item in items:
        print(f"{item.kind:>3}  {item.source}  ->  {item.target}")
        if not args.dry_run:
            try:
                fetch(item)
            except KeyboardInterrupt:
                raise
            except Exception as error:  # noqa: BLE001 - hub, HTTP and OS errors alike: one line, not a traceback
                print(f"error: {failure(item, error)}", file=sys.stderr)
                return 2
    if not args.dry_run:
        print(f"done; run with paths.weights={args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
