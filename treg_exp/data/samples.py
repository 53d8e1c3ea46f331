"""``data=samples``: colour photographs shipped inside scikit-image, each with a short prompt (no download)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from treg_exp.common import checks
from treg_exp.common.errors import UserError
from treg_exp.data.base import ImageDataset, Sample, check_subset_options, parse_ids, select
from treg_exp.data.images import ImageReadError, to_tensor

#: id → (scikit-image loader name, prompt, class: what prompt=class_name names)
SAMPLES: dict[str, tuple[str, str, str]] = {
    "astronaut": ("astronaut", "a photo of an astronaut", "astronaut"),
    "coffee": ("coffee", "a photo of a cup of coffee", "cup"),
    "chelsea": ("chelsea", "a photo of a cat", "cat"),
    "rocket": ("rocket", "a photo of a rocket on a launch pad", "rocket"),
    "immunohistochemistry": ("immunohistochemistry", "a microscope image of stained tissue", "tissue"),
    "motorcycle": ("stereo_motorcycle", "a photo of a motorcycle", "motorcycle"),
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
        ids: keep these ids (after ``names``; a list or a file of ids), validated like ``data=folder``'s.
        strict: stop the run at an image that cannot be loaded instead of recording it.
    """

    def __init__(
        self,
        resolution: int = 256,
        names: list[str] | None = None,
        prompt: str | None = None,
        limit: int | None = None,
        stride: int = 1,
        ids: list[str] | str | None = None,
        strict: bool = False,
    ) -> None:
        names = [str(n) for n in names] if names is not None else list(SAMPLES)
        if not names:
            raise UserError("data.names is an empty list: it selects nothing (null keeps every sample)")
        unknown = [n for n in names if n not in SAMPLES]
        if unknown:
            raise UserError(f"unknown sample image(s) {unknown}; known: {', '.join(SAMPLES)}")
        limit, stride = check_subset_options(limit, stride)
        self.names = [names[k] for k in select(names, parse_ids(ids), stride, limit, "data=samples")]
        self.resolution = checks.integer("data.resolution", resolution, minimum=1)
        self.prompt = prompt
        self.strict = checks.boolean("data.strict", strict)

    def __len__(self) -> int:
        return len(self.names)

    def image_id(self, index: int) -> str:
        return self.names[index]

    def source(self, index: int) -> str:
        return f"skimage.data.{SAMPLES[self.names[index]][0]}"

    def __getitem__(self, index: int) -> Sample:
        name = self.names[index]
        loader, prompt, label = SAMPLES[name]
        try:
            image = to_tensor(Image.fromarray(_load(loader)), self.resolution, f"skimage.data.{loader}")
        except Exception as error:  # noqa: BLE001 - a sample scikit-image cannot provide fails that image only
            message = f"cannot load skimage.data.{loader}: {type(error).__name__}: {error}"
            if self.strict:
                raise UserError(f"{message} (data.strict=true stops at the first unreadable image)") from error
            raise ImageReadError(message) from error
        text = self.prompt.format(label=name) if self.prompt is not None else prompt
        return Sample(id=name, image=image, prompt=text, label=label)
