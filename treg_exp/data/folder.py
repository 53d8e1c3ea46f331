"""``data=folder`` (and the paper datasets built on it): any folder of images, with subset rules and prompts."""

from __future__ import annotations

import csv
import errno
import json
import logging
import os
import stat
from pathlib import Path
from typing import Any

from treg_exp.common import checks
from treg_exp.common.errors import UserError
from treg_exp.data.base import ImageDataset, Sample, check_subset_options, parse_ids, select
from treg_exp.data.images import ImageReadError, load_image

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm", ".pnm"}
CAPTIONS_FALLBACKS = ("prompt", "empty")
CAPTIONS_EXPECTED = "a .json file {id: caption} or a .csv file with columns id, prompt"


def load_captions(path: str | Path) -> dict[str, str]:
    """Captions by image id from ``.json`` (``{id: caption}``) or ``.csv`` (columns ``id``, ``prompt``).

    A file that is not such a mapping is a one-line error naming what is wrong.
    """
    path = checks.existing_path("data.captions", path, CAPTIONS_EXPECTED)
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise UserError(f"captions file {path} is not valid JSON ({error})") from error
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise UserError(f"captions file {path} must hold one JSON object {{id: caption}} of strings")
        return {str(k): v for k, v in data.items()}
    if path.suffix.lower() != ".csv":
        raise UserError(f"captions file {path} must be .json ({{id: caption}}) or .csv (columns id, prompt)")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in ("id", "prompt") if c not in columns]
        if missing:
            raise UserError(
                f"captions file {path} lacks the column(s) {', '.join(missing)} (has: {', '.join(columns) or 'none'})"
            )
        reader.fieldnames = columns
        captions = {}
        for line, row in enumerate(reader, start=2):
            if row.get("id") in (None, "") or row.get("prompt") is None:
                raise UserError(f"captions file {path}, line {line}: every row needs an id and a prompt")
            captions[row["id"]] = row["prompt"]
        return captions


def _not_a_file(path: Path) -> str | None:
    """Why the entry ``path`` (with an image suffix) cannot be read as a regular file, or ``None`` when it can.
    Nothing is opened: a FIFO would block the reader forever."""
    try:
        mode = os.stat(path).st_mode  # follows links
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "a symbolic link loop"
        if path.is_symlink():
            return f"a dangling symbolic link (to {os.readlink(path)}: {error.strerror})"
        return f"cannot be read ({error.strerror})"
    if stat.S_ISREG(mode):
        return None
    kinds = {stat.S_ISFIFO: "a FIFO (named pipe)", stat.S_ISSOCK: "a socket", stat.S_ISCHR: "a character device"}
    return next((f"{kind}, not a file" for test, kind in kinds.items() if test(mode)), "not a regular file")


def scan_images(root: Path) -> tuple[list[Path], dict[Path, str]]:
    """Every entry under ``root`` whose name has an image suffix, sorted by path, and why each one that is not a
    readable regular file is not (a dangling link, a link loop, a FIFO, a socket ...), so that none is left out
    unseen. Linked subfolders are followed, as torchvision's ``ImageFolder`` does, each real folder once (a link
    back up the tree is not walked again). A folder that cannot be listed is a one-line :class:`UserError`."""
    found: list[Path] = []
    visited: set[tuple[int, int]] = set()
    pending = [root]
    while pending:
        folder = pending.pop()
        try:
            info = os.stat(folder)
            if (info.st_dev, info.st_ino) in visited:
                continue
            visited.add((info.st_dev, info.st_ino))
            with os.scandir(folder) as listing:
                entries = list(listing)
        except OSError as error:
            raise UserError(
                f"data.root: cannot list {folder} ({error.strerror}); its images would be left out: fix its "
                "permissions (or mount), or move it out of data.root"
            ) from None
        for entry in entries:
            path = Path(entry.path)
            try:
                is_folder = entry.is_dir()  # follows links: a linked subfolder is walked
            except OSError:
                is_folder = False
            if is_folder:
                pending.append(path)
            elif path.suffix.lower() in IMAGE_SUFFIXES:
                found.append(path)
    found.sort()
    return found, {p: why for p in found if (why := _not_a_file(p)) is not None}


class ImageFolder(ImageDataset):
    """Images under ``root`` (recursively), sorted by relative path, centre-cropped and resized.

    Subset rules, applied in this order: ``classes`` (keep images whose parent folder is listed), ``ids`` (keep
    these ids), ``stride`` (every k-th image after sorting — P2L's ImageNet subset is every 10th of Palette's list),
    ``limit`` (the first n; FFHQ's first 1000). A class or id that is not in the folder, and a rule that selects
    nothing, are one-line errors; the folder is scanned (and the captions checked) on first use, which the runner
    does before any weights load.

    Prompts: ``captions`` (a file of id → prompt) wins and must hold every selected id, unless
    ``captions_fallback`` says what the others get (``prompt``: the ``prompt`` template; ``empty``: ""), with a
    warning. Else ``prompt``, where ``{label}`` is the parent folder's name with underscores as spaces (Food-101:
    ``ice_cream`` → "ice cream").

    An image that cannot be read (unreadable, truncated, not an image, no defined pixel scale) is that image's
    failure, recorded by the runner, and the run goes on; with ``strict`` it stops the run with one line.

    Args:
        root: the folder.
        resolution: output side in pixels.
        prompt: fixed prompt or template.
        captions: optional captions file (``.json`` or ``.csv``).
        classes: optional list of parent-folder names to keep.
        limit: keep at most this many images.
        stride: keep every ``stride``-th image.
        ids: keep these ids (a list, or a text file with one id a line).
        strict: stop at the first unreadable image instead of recording it.
        captions_fallback: what images missing from ``captions`` get (``prompt`` | ``empty``); null: an error.
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
        ids: Any = None,
        strict: bool = False,
        captions_fallback: str | None = None,
    ) -> None:
        if not root:
            raise UserError("data=folder needs the image folder: data.root=/path/to/images")
        self.root = Path(root)
        self.resolution = checks.integer("data.resolution", resolution, minimum=1)
        self.prompt = "" if prompt is None else str(prompt)
        self.captions_path = captions or None
        if classes is not None and isinstance(classes, str):
            classes = [classes]
        self.classes = [str(c) for c in classes] if classes is not None else None
        if self.classes is not None and not self.classes:
            raise UserError("data.classes is an empty list: it selects nothing (null keeps every class)")
        self.limit, self.stride = check_subset_options(limit, stride)
        self.ids = parse_ids(ids)
        self.strict = checks.boolean("data.strict", strict)
        if captions_fallback not in (None, *CAPTIONS_FALLBACKS):
            raise UserError(f"data.captions_fallback must be one of {', '.join(CAPTIONS_FALLBACKS)} or null")
        self.captions_fallback = captions_fallback
        self._files: list[Path] | None = None
        self._captions: dict[str, str] | None = None
        self._unreadable: dict[Path, str] = {}
        #: entries with an image suffix the scan found (before the subset rules), unreadable ones included
        self.seen: int | None = None

    @property
    def files(self) -> list[Path]:
        if self._files is None:
            self._files = self._scan()
        return self._files

    def _scan(self) -> list[Path]:
        checks.existing_path("data.root", self.root, "the folder of images (or set paths.data_root)", folder=True)
        files, self._unreadable = scan_images(self.root)
        self.seen = len(files)
        if self._unreadable:
            first, why = next(iter(self._unreadable.items()))
            log.warning(
                "%d of the %d image entries in %s are not readable files (e.g. %s: %s); each is recorded as a "
                "failed image",
                len(self._unreadable),
                len(files),
                self.root,
                first,
                why,
            )
        if not files:
            raise UserError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) found in {self.root}")
        if self.classes is not None:
            present = {p.parent.name for p in files}
            unknown = [c for c in self.classes if c not in present]
            if unknown:
                raise UserError(f"data.classes: no images of class(es) {', '.join(unknown)} in {self.root}")
            files = [p for p in files if p.parent.name in self.classes]
        names = [self._id_of(p) for p in files]
        if len(set(names)) != len(names):
            raise UserError(f"image ids (relative paths) are not unique in {self.root}")
        files = [files[k] for k in select(names, self.ids, self.stride, self.limit, str(self.root))]
        if self.captions_path is not None:
            self._captions = self._check_captions([self._id_of(p) for p in files])
        return files

    def _check_captions(self, ids: list[str]) -> dict[str, str]:
        captions = load_captions(self.captions_path)
        missing = [i for i in ids if i not in captions]
        if missing:
            shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
            what = f"captions file {self.captions_path} lacks {len(missing)} of the {len(ids)} selected ids ({shown})"
            if self.captions_fallback is None:
                raise UserError(f"{what}; add them, or set data.captions_fallback=prompt (or empty) to go on")
            log.warning("%s: they get the %s prompt (data.captions_fallback)", what, self.captions_fallback)
        return captions

    def _id_of(self, path: Path) -> str:
        """The id: the path relative to ``root`` without suffix, ``/`` → ``__`` (unique and file-name safe)."""
        return str(path.relative_to(self.root).with_suffix("")).replace("/", "__")

    def image_id(self, index: int) -> str:
        return self._id_of(self.files[index])

    def source(self, index: int) -> str:
        return str(self.files[index])

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Sample:
        path = self.files[index]
        image_id = self._id_of(path)
        if self._captions is not None and image_id in self._captions:
            prompt = self._captions[image_id]
        elif self._captions is not None and self.captions_fallback == "empty":
            prompt = ""
        else:
            prompt = self.prompt.format(label=path.parent.name.replace("_", " "))
        try:
            if path in self._unreadable:
                raise ImageReadError(f"{path} is {self._unreadable[path]}")
            tensor = load_image(path, self.resolution)
        except Exception as error:
            if self.strict:
                raise UserError(f"{error} (data.strict=true stops at the first unreadable image)") from error
            raise
        label = path.parent.name if path.parent != self.root else None
        return Sample(id=image_id, image=tensor, prompt=prompt, label=label)
