"""``data=folder`` (and the paper datasets built on it): any folder of images, with subset rules and prompts."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from PIL import Image

from treg_exp.data.base import ImageDataset, Sample
from treg_exp.data.images import to_tensor
from treg_exp.errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


def load_captions(path: str | Path) -> dict[str, str]:
    """Captions by image id (file stem) from ``.json`` (``{id: caption}``) or ``.csv`` (columns ``id, prompt``)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"captions file not found: {path}")
    if path.suffix == ".json":
        return {str(k): str(v) for k, v in json.loads(path.read_text()).items()}
    with path.open(newline="") as handle:
        return {row["id"]: row["prompt"] for row in csv.DictReader(handle)}


class ImageFolder(ImageDataset):
    """Images under ``root`` (recursively), sorted by relative path, centre-cropped and resized.

    Subset rules, applied in this order: ``classes`` (keep images whose parent folder is listed), ``stride`` (every
    k-th image after sorting — P2L's ImageNet subset is every 10th of Palette's list), ``limit`` (the first n;
    FFHQ's first 1000).

    Prompts: ``captions`` (a file of id → prompt) wins; else ``prompt``, where ``{label}`` is the parent folder's
    name with underscores as spaces (Food-101: ``ice_cream`` → "ice cream").

    Args:
        root: the folder.
        resolution: output side in pixels.
        prompt: fixed prompt or template.
        captions: optional captions file (``.json`` or ``.csv``).
        classes: optional list of parent-folder names to keep.
        limit: keep at most this many images.
        stride: keep every ``stride``-th image.
    """

    def __init__(
        self,
        root: str | None,
        resolution: int = 512,
        prompt: str = "",
        captions: str | None = None,
        classes: list[str] | None = None,
        limit: int | None = None,
        stride: int = 1,
    ) -> None:
        if not root:
            raise UserError("data=folder needs the image folder: data.root=/path/to/images")
        self.root = Path(root)
        self.resolution = resolution
        self.prompt = prompt
        self.captions_path = captions
        self.classes = list(classes) if classes else None
        self.limit = limit
        self.stride = max(int(stride), 1)
        self._files: list[Path] | None = None
        self._captions: dict[str, str] | None = None

    @property
    def files(self) -> list[Path]:
        if self._files is None:
            if not self.root.is_dir():
                raise UserError(f"image folder not found: {self.root} (set data.root or paths.data_root)")
            files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if self.classes is not None:
                files = [p for p in files if p.parent.name in self.classes]
            files = files[:: self.stride][: self.limit]
            if not files:
                raise UserError(f"no images found in {self.root} with the given subset rules")
            stems = [self._id_of(p) for p in files]
            if len(set(stems)) != len(stems):
                raise UserError(f"image ids (relative paths) are not unique in {self.root}")
            self._files = files
        return self._files

    def _id_of(self, path: Path) -> str:
        """The id: the path relative to ``root`` without suffix, ``/`` → ``__`` (unique and file-name safe)."""
        return str(path.relative_to(self.root).with_suffix("")).replace("/", "__")

    def image_id(self, index: int) -> str:
        return self._id_of(self.files[index])

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Sample:
        path = self.files[index]
        image_id = self._id_of(path)
        if self.captions_path is not None and self._captions is None:
            self._captions = load_captions(self.captions_path)
        if self._captions is not None and image_id in self._captions:
            prompt = self._captions[image_id]
        else:
            prompt = self.prompt.format(label=path.parent.name.replace("_", " "))
        with Image.open(path) as image:
            tensor = to_tensor(image, self.resolution)
        return Sample(id=image_id, image=tensor, prompt=prompt)
