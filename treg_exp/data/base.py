"""Datasets of ground-truth images with prompts."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Sample:
    """One ground-truth image.

    Attributes:
        id: a stable identifier (file stem); names the output files and seeds the image's random streams.
        image: ``[3, H, W]`` float32 in [−1, 1].
        prompt: the text prompt for this image.
    """

    id: str
    image: torch.Tensor
    prompt: str


class ImageDataset(torch.utils.data.Dataset):
    """A sequence of :class:`Sample`; subclasses implement ``__len__`` and ``__getitem__``."""

    def __getitem__(self, index: int) -> Sample:
        raise NotImplementedError
