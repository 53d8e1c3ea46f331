"""Datasets of ground-truth images with prompts, and the subset rules they share."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from treg_exp.common import checks
from treg_exp.common.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class Sample:
    """One ground-truth image.

    Attributes:
        id: a stable identifier (file stem); names the output files and seeds the image's random streams.
        image: ``[3, H, W]`` float32 in [−1, 1].
        prompt: the text prompt for this image (the dataset's: its captions file or ``data.prompt``; a prompt
            source of :mod:`treg_exp.prompts` may replace it before the solve).
        label: the image's class (ImageNet's class name, Food-101's folder ``ice_cream``), ``None`` when unknown.
        label_set: which list the label comes from (``imagenet_p2l_1k``, ``food101_treg``), so that a class-name
            prompt can take that list's template; ``None`` for a plain folder.
    """

    id: str
    image: torch.Tensor
    prompt: str
    label: str | None = None
    label_set: str | None = None


class ImageDataset(ABC):
    """A sequence of :class:`Sample`.

    ``dataset[k]`` may raise :class:`treg_exp.data.images.ImageReadError` for an image that cannot be read: the
    runner records it as that image's failure and goes on (a :class:`UserError` instead stops the run).
    """

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __getitem__(self, index: int) -> Sample: ...

    def image_id(self, index: int) -> str:
        """The id of image ``index`` (override where it is cheaper than loading the image)."""
        return self[index].id

    def source(self, index: int) -> str | None:
        """Where image ``index`` comes from (a file path), for failure records; ``None`` when generated."""
        return None


# --- subset rules -----------------------------------------------------------------------------------------------
def check_subset_options(limit: Any, stride: Any) -> tuple[int | None, int]:
    """``data.limit`` (≥ 1 or null) and ``data.stride`` (≥ 1) as integers, or one line saying what is wrong."""
    limit = checks.integer("data.limit", limit, minimum=1, allow_none=True)
    stride = checks.integer("data.stride", stride, minimum=1)
    return limit, stride


def parse_ids(ids: Any) -> list[str] | None:
    """``data.ids``: a list of ids, or a text file of ids (one a line; blank lines and ``#`` comments ignored)."""
    if ids is None:
        return None
    if isinstance(ids, (str, Path)):
        path = Path(ids)
        if path.is_file():
            lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
            ids = [line for line in lines if line]
            if not ids:
                raise UserError(f"data.ids file {path} lists no id")
        elif not str(ids).strip():
            raise UserError("data.ids is empty; give a list of ids, a file of ids, or null for all images")
        elif checks.looks_like_path(str(ids)):
            checks.existing_path("data.ids", ids, "a list of ids or a text file of ids, one a line")
        else:
            ids = [str(ids)]
    try:
        ids = [str(i) for i in ids]
    except TypeError:
        raise UserError(f"data.ids must be a list of ids or a file of ids, got {ids!r}") from None
    if not ids:
        raise UserError("data.ids is an empty list: it selects nothing (null selects every image)")
    return ids


def select(names: Sequence[str], ids: list[str] | None, stride: int, limit: int | None, where: str) -> list[int]:
    """Indices into ``names`` kept by ``ids`` (in ``names`` order), then every ``stride``-th, then the first ``limit``.

    An id not in ``names`` and a rule that selects nothing are one-line errors; a ``limit`` above what is left is
    a warning (the subset is then smaller than asked).
    """
    indices = list(range(len(names)))
    if ids is not None:
        known = set(names)
        missing = [i for i in dict.fromkeys(ids) if i not in known]
        if missing:
            shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
            raise UserError(f"data.ids: {len(missing)} id(s) not in {where}: {shown}")
        wanted = set(ids)
        indices = [k for k in indices if names[k] in wanted]
    indices = indices[::stride]
    if limit is not None:
        if limit > len(indices):
            log.warning("data.limit=%d but only %d images are selected in %s", limit, len(indices), where)
        indices = indices[:limit]
    if not indices:
        raise UserError(f"the subset rules select no image in {where}")
    return indices
