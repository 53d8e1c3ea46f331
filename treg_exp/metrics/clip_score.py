"""CLIP score (Hessel et al., 2021) between each image's prompt and its reconstruction, with torchmetrics.

``clip_score = 100 · max(cos(E_img(x̂), E_txt(prompt)), 0)`` per image, torchmetrics' ``CLIPScore`` on one image at a
time (its ``compute`` averages over what it was given). The model is OpenAI CLIP ViT-L/14 by default, loaded
with transformers from a Hub id (resolved in ``HF_HOME``, offline when ``paths.weights`` is staged) or a local
folder. Images reach CLIP's processor as 8-bit values (it rescales by 1/255 and normalises itself). Images with
an empty prompt get NaN: a score against no text means nothing.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from treg_exp.common.errors import WeightsNotFoundError
from treg_exp.metrics import treg
from treg_exp.metrics.base import ImageMetric, MetricContext
from treg_exp.metrics.image import to_uint8_levels
from treg_exp.models import weights


def _projected(output: Any) -> torch.Tensor:
    """The projected embedding, whether ``get_*_features`` returned it (transformers 4) or a model output (5)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class _ProjectedFeatures(torch.nn.Module):
    """A CLIP model whose ``get_image_features`` / ``get_text_features`` return tensors, as torchmetrics expects.

    transformers 5 returns ``BaseModelOutputWithPooling`` (the projection in ``pooler_output``) from both.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.config = model.config

    def get_image_features(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return _projected(self.model.get_image_features(*args, **kwargs))

    def get_text_features(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return _projected(self.model.get_text_features(*args, **kwargs))


class CLIPScore(ImageMetric):
    """Column ``clip_score`` (0 … 100, higher is closer to the prompt).

    Args:
        model: a Hub id (``openai/clip-vit-large-patch14``) or a folder holding a transformers CLIP model.
    """

    def __init__(self, model: str = weights.CLIP_MODEL) -> None:
        self.model = str(model)
        self.metric = None
        self.device = torch.device("cpu")

    def use_protocol(self, protocol: str) -> list[str]:
        super().use_protocol(protocol)
        return [treg.STRETCH] if protocol == "treg" else []

    def _local_path(self) -> str:
        """A folder holding the model: ``model`` itself, or its snapshot in the Hugging Face cache."""
        if Path(self.model).expanduser().is_dir():
            return str(Path(self.model).expanduser())
        from huggingface_hub import try_to_load_from_cache

        config = try_to_load_from_cache(self.model, "config.json")
        if isinstance(config, str):
            return str(Path(config).parent)
        if not weights.downloads_allowed() or not weights.hub_reachable():
            # checked before from_pretrained, whose Hub client would otherwise retry for minutes on an offline node
            reason = "downloads are off" if not weights.downloads_allowed() else "the Hub is unreachable"
            raise WeightsNotFoundError(
                f"CLIP score needs the model {self.model}, which is not in the Hugging Face cache "
                f"(HF_HOME) and {reason}; {weights.STAGE_HINT}"
            )
        return self.model

    def prepare(self, device: torch.device | str) -> None:
        from torchmetrics.multimodal.clip_score import CLIPScore as TorchmetricsCLIPScore
        from transformers import CLIPModel, CLIPProcessor

        source = self._local_path()

        def load() -> tuple[CLIPModel, CLIPProcessor]:
            # a callable, because torchmetrics only accepts the Hub names it lists otherwise (not local folders)
            model = CLIPModel.from_pretrained(source).eval()
            return _ProjectedFeatures(model), CLIPProcessor.from_pretrained(source)

        try:
            metric = TorchmetricsCLIPScore(model_name_or_path=load)
        except Exception as error:  # noqa: BLE001 - missing or corrupt files: one line for the user
            raise WeightsNotFoundError(
                f"CLIP score could not load {source} ({type(error).__name__}: {error}); {weights.STAGE_HINT}"
            ) from None
        self.device = torch.device(device)
        self.metric = metric.to(self.device)
        self.metric.model.eval().requires_grad_(False)

    @torch.no_grad()
    def __call__(self, recon: torch.Tensor, gt: torch.Tensor, context: MetricContext) -> dict[str, torch.Tensor]:
        """``recon``: ``[B, 3, H, W]`` in [−1, 1]; ``context.prompts``: ``B`` strings → ``{"clip_score": [B]}``."""
        if self.metric is None:
            self.prepare(self.device)
        if self.protocol == "treg":
            recon = treg.minmax_stretch(recon.float())
        levels = to_uint8_levels(recon.float()).to(torch.uint8).to(self.device)
        scores = []
        for image, prompt in zip(levels, context.prompts, strict=True):
            if not prompt:
                scores.append(math.nan)
                continue
            self.metric.reset()
            self.metric.update(image[None], [prompt])
            scores.append(float(self.metric.compute()))
        return {"clip_score": torch.tensor(scores, dtype=torch.float32)}
