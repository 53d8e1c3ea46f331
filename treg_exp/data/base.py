"""Datasets of ground-truth images with prompts."""

from __future__ import annotations

from abc import ABC, abstractmethod
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


class ImageDataset(ABC):
    """A sequence of :class:`Sample`."""

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __getitem__(self, index: int) -> Sample: ...

    def image_id(self, index: int) -> str:
        """The id of image ``index`` (override where it is cheaper than loading the image)."""
        return self[index].id
