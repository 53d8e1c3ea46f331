"""``data=samples``: colour photographs shipped inside scikit-image, each with a short prompt (no download)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from treg_exp.data.base import ImageDataset, Sample
from treg_exp.data.images import to_tensor
from treg_exp.errors import UserError

#: id → (scikit-image loader name, prompt)
SAMPLES: dict[str, tuple[str, str]] = {
    "astronaut": ("astronaut", "a photo of an astronaut"),
    "coffee": ("coffee", "a photo of a cup of coffee"),
    "chelsea": ("chelsea", "a photo of a cat"),
    "rocket": ("rocket", "a photo of a rocket on a launch pad"),
    "immunohistochemistry": ("immunohistochemistry", "a microscope image of stained tissue"),
    "motorcycle": ("stereo_motorcycle", "a photo of a motorcycle"),
}


def _load(name: str) -> np.ndarray:
    import skimage.data

    image = getattr(skimage.data, name)()
    return image[0] if isinstance(image, tuple) else image  # stereo_motorcycle: (left, right, disparity)


class SampleImages(ImageDataset):
    """The scikit-image photos, centre-cropped to a square and resized to ``resolution``.

    Args:
        resolution: side in pixels (256 by default; 512 for paper-size runs).
        names: which samples (default: all, in :data:`SAMPLES` order).
        prompt: a fixed prompt for every image instead of each image's own (``{label}`` is replaced by its id).
        limit: keep the first ``limit`` images (after ``stride``).
        stride: keep every ``stride``-th image.
    """

    def __init__(
        self,
        resolution: int = 256,
        names: list[str] | None = None,
        prompt: str | None = None,
        limit: int | None = None,
        stride: int = 1,
    ) -> None:
        names = list(names) if names else list(SAMPLES)
        unknown = [n for n in names if n not in SAMPLES]
        if unknown:
            raise UserError(f"unknown sample image(s) {unknown}; known: {', '.join(SAMPLES)}")
        self.names = names[:: max(stride, 1)][:limit]
        self.resolution = resolution
        self.prompt = prompt

    def __len__(self) -> int:
        return len(self.names)

    def image_id(self, index: int) -> str:
        return self.names[index]

    def __getitem__(self, index: int) -> Sample:
        name = self.names[index]
        loader, prompt = SAMPLES[name]
        image = to_tensor(Image.fromarray(_load(loader)), self.resolution)
        text = self.prompt.format(label=name) if self.prompt is not None else prompt
        return Sample(id=name, image=image, prompt=text)
