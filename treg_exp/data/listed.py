"""The paper datasets: a prepared folder whose files are exactly those of a shipped list (``treg_exp/data/lists``).

A list names one prepared file per line, relative to the dataset folder (``00017.png``, ``fried_rice/1023430.png``),
optionally followed by tab-separated columns whose last is the image's label (ImageNet: the class name); ``#``
lines are comments. Images are taken in the list's order; ``limit``/``stride`` apply to it as in ``data=folder``.

Before the first image is read the folder is checked against the list, and against ``MANIFEST.sha256`` (written
by ``scripts/prepare_*.py``) when it is there: a listed file that is missing, or whose size (``verify: size``, the
default) or SHA-256 (``verify: sha256``) differs from the manifest, stops the run with one line naming the first
such file and the command that prepares the folder.

Prompts: ``captions`` wins, then ``prompt`` with ``{label}`` replaced by the label (its underscores as spaces); each
sample also carries its label and the list's name, which ``prompt=class_name`` and ``prompt=mismatch`` read.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

from PIL import Image

from treg_exp.common import checks
from treg_exp.common.errors import UserError
from treg_exp.data.base import Sample
from treg_exp.data.folder import ImageFolder, load_captions
from treg_exp.data.images import to_tensor

LISTS = Path(__file__).resolve().parent / "lists"
MANIFEST = "MANIFEST.sha256"
VERIFY_MODES = ("size", "sha256", "none")


def resolve_list(name: str | Path) -> Path:
    """A shipped list by name (``ffhq_1k`` → ``treg_exp/data/lists/ffhq_1k.txt``) or a path to the user's own."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = LISTS / f"{name}.txt"
    if shipped.is_file():
        return shipped
    options = ", ".join(sorted(p.stem for p in LISTS.glob("*.txt")))
    if checks.looks_like_path(str(name)):
        checks.existing_path("data.list_file", name, f"a file of relative paths, or a shipped list ({options})")
    raise UserError(f"data.list_file: {name} is neither a file nor one of the shipped lists ({options})")


def read_list(path: Path) -> list[tuple[str, str | None]]:
    """``[(relative file, label or None)]`` of a list file."""
    entries = []
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        columns = line.rstrip("\n").split("\t")
        entries.append((columns[0].strip(), columns[-1].strip() if len(columns) > 1 else None))
    return entries


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(folder: Path) -> dict[str, tuple[str, int]]:
    """``{relative file: (sha256, size)}`` from ``folder/MANIFEST.sha256`` (``{}`` when absent).

    Line format: ``<sha256>  <size>  <relative file>`` (two spaces apart).
    """
    path = folder / MANIFEST
    if not path.is_file():
        return {}
    manifest = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        digest, size, name = line.split("  ", 2)
        manifest[name] = (digest, int(size))
    return manifest


def first_mismatch(
    folder: Path, names: list[str], verify: str = "size", manifest: Mapping[str, tuple[str, int]] | None = None
) -> str | None:
    """A one-line description of the first listed file that is missing or differs from the manifest, or ``None``."""
    manifest = read_manifest(folder) if manifest is None else manifest
    for name in names:
        path = folder / name
        if not path.is_file():
            return f"{path} is missing"
        if verify == "none" or name not in manifest:
            continue
        digest, size = manifest[name]
        if path.stat().st_size != size:
            return f"{path} has {path.stat().st_size} bytes, {MANIFEST} says {size}"
        if verify == "sha256" and file_sha256(path) != digest:
            return f"{path} does not match its SHA-256 in {MANIFEST}"
    return None


class ListedImageFolder(ImageFolder):
    """Exactly the images of ``list_file`` under ``root`` (see the module docstring).

    Args:
        root: the prepared folder.
        list_file: a shipped list's name (``ffhq_1k``, ``imagenet_p2l_1k``, ``food101_treg``) or a path.
        resolution: output side; prepared files already have it, so they are not resampled again.
        prompt, captions, limit, stride: as :class:`ImageFolder`.
        verify: ``size`` (default: sizes against the manifest), ``sha256`` (hash every file once) or ``none``.
        prepare_hint: the command named in the error when a file is missing.
    """

    def __init__(
        self,
        root: str | None,
        list_file: str,
        resolution: int = 512,
        prompt: str = "",
        captions: str | None = None,
        limit: int | None = None,
        stride: int = 1,
        verify: str = "size",
        prepare_hint: str = "",
    ) -> None:
        super().__init__(root, resolution, prompt, captions, None, limit, stride)
        if verify not in VERIFY_MODES:
            raise UserError(f"data.verify={verify} is not one of {', '.join(VERIFY_MODES)}")
        self.list_path = resolve_list(list_file)
        entries = read_list(self.list_path)[:: self.stride][: self.limit]
        if not entries:
            raise UserError(f"{self.list_path} lists no image")
        self.entries = entries
        self.labels = {name: label for name, label in entries}
        self.verify = verify
        self.prepare_hint = prepare_hint

    def planned_size(self) -> int:
        """How many images the list gives (without reading the folder): for cost estimates."""
        return len(self.entries)

    @property
    def files(self) -> list[Path]:
        if self._files is None:
            expects = f"the dataset's prepared folder{self._hint()}"
            checks.existing_path("data.root", self.root, expects, folder=True)
            problem = first_mismatch(self.root, [name for name, _ in self.entries], self.verify)
            if problem is not None:
                raise UserError(f"{problem} (listed in {self.list_path.name}){self._hint()}")
            self._files = [self.root / name for name, _ in self.entries]
        return self._files

    def _hint(self) -> str:
        return f"; prepare it with {self.prepare_hint}" if self.prepare_hint else ""

    def label_of(self, path: Path) -> str:
        """The list's label of ``path``, else its parent folder's name."""
        label = self.labels.get(str(path.relative_to(self.root)))
        return label if label else path.parent.name

    def __getitem__(self, index: int) -> Sample:
        path = self.files[index]
        image_id = self._id_of(path)
        label = self.label_of(path)
        if self.captions_path is not None and self._captions is None:
            self._captions = load_captions(self.captions_path)
        if self._captions is not None and image_id in self._captions:
            prompt = self._captions[image_id]
        else:
            prompt = self.prompt.format(label=label.replace("_", " "))
        with Image.open(path) as image:
            tensor = to_tensor(image, self.resolution)
        return Sample(id=image_id, image=tensor, prompt=prompt, label=label, label_set=self.list_path.stem)
