"""Where an image's prompt comes from (``conf/prompt/``): the dataset's own, its class name, a deliberate mismatch,
no text at all, or a caption of the measurement (:mod:`treg_exp.prompts.caption`).

A source turns a batch of :class:`~treg_exp.data.base.Sample` into their prompts; the runner puts them into the
samples before the solve, so the solver, the per-image row (``prompt`` column), the W&B table and the HTML report
all see the same text. ``prompt=given`` returns each sample's prompt unchanged: runs without a ``prompt`` choice
compute exactly what they did before this config group existed.
"""

from __future__ import annotations

import csv
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from treg_exp.common import checks
from treg_exp.common.errors import UserError
from treg_exp.data.base import ImageDataset, Sample
from treg_exp.operators.base import LinearOperator

log = logging.getLogger(__name__)


@dataclass
class PromptContext:
    """What a source that looks at the measurement needs (``prompt=caption``).

    Attributes:
        operator: the task's forward model (per-image parameters are drawn as the solve draws them).
        seed: the run's seed (the measurement streams).
        device: where the captioner runs.
        dtype: the dtype the solve draws the measurement in (the prior's state dtype).
        text_tokenizer: the prior's tokenizer, whose limit a caption is cut to (``None`` when it has none).
        inputs: the resolved ``data`` and ``task`` configs, which key the cache.
        progress: show a progress bar.
    """

    operator: LinearOperator
    seed: int
    device: torch.device
    dtype: torch.dtype = torch.float32
    text_tokenizer: Any = None
    inputs: dict[str, Any] = field(default_factory=dict)
    progress: bool = True


class PromptSource(ABC):
    """Gives each sample its prompt. ``name`` is what the ``source`` column of ``prompts.csv`` and the tables say."""

    name: str = ""

    def check(self) -> None:
        """Check that what the source needs is there (a captioner's weights): one line when not, before any image
        is solved or any weight loaded. Text-only sources need nothing."""
        return None

    def prepare(self, dataset: ImageDataset, indices: Sequence[int], context: PromptContext) -> None:
        """Work done once for the images ``indices`` before any is solved (captioning); nothing for text sources."""
        return None

    @abstractmethod
    def prompts(self, samples: Sequence[Sample]) -> list[str]:
        """The prompt of each sample, in order."""


class GivenPrompt(PromptSource):
    """``prompt=given``: the dataset's prompt (its captions file, else ``data.prompt``), unchanged."""

    name = "given"

    def prompts(self, samples: Sequence[Sample]) -> list[str]:
        return [s.prompt for s in samples]


class EmptyPrompt(PromptSource):
    """``prompt=none``: the empty text (the prior's unconditional branch)."""

    name = "none"

    def prompts(self, samples: Sequence[Sample]) -> list[str]:
        return ["" for _ in samples]


def label_words(label: str) -> str:
    """A folder-style label as words: ``ice_cream`` → ``ice cream``."""
    return label.replace("_", " ").strip()


def require_labels(samples: Sequence[Sample], source: str) -> None:
    """One line naming the first sample without a class label (a flat folder, the shipped samples)."""
    unlabelled = [s.id for s in samples if not s.label]
    if unlabelled:
        raise UserError(
            f"prompt={source} needs each image's class, but {unlabelled[0]} has none (use a listed dataset such as "
            "data=imagenet or data=food101, or a folder with one sub-folder per class)"
        )


class ClassNamePrompt(PromptSource):
    """``prompt=class_name``: ``template`` with ``{name}`` = the image's class name (underscores as spaces).

    Args:
        template: the template of lists without their own (ImageNet: ``"a photo of a {name}"``).
        templates: ``{list name: template}``, e.g. ``food101_treg: "a photo of {name}, a type of food"``.
    """

    name = "class_name"

    def __init__(self, template: str = "a photo of a {name}", templates: Mapping[str, str] | None = None) -> None:
        self.templates = {str(k): checks.text(f"prompt.templates.{k}", v) for k, v in (templates or {}).items()}
        self.template = checks.text("prompt.template", template)
        for where, text in [("prompt.template", self.template), *self.templates.items()]:
            if "{name}" not in text:
                raise UserError(f"{where}={text!r} has no {{name}} for the class name")

    def prompts(self, samples: Sequence[Sample]) -> list[str]:
        require_labels(samples, self.name)
        return [
            self.templates.get(s.label_set or "", self.template).format(name=label_words(s.label or ""))
            for s in samples
        ]


def read_swaps(path: str | Path) -> dict[str, str]:
    """``{label: prompt}`` from a ``.json`` object or a ``.csv`` with columns ``label``, ``prompt``."""
    path = checks.existing_path(
        "prompt.swaps_file", path, "a .json file {label: prompt} or a .csv file with columns label, prompt"
    )
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise UserError(f"prompt.swaps_file {path} is not valid JSON ({error})") from error
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise UserError(f"prompt.swaps_file {path} must hold one JSON object {{label: prompt}} of strings")
        return {str(k): v for k, v in data.items()}
    if path.suffix.lower() != ".csv":
        raise UserError(f"prompt.swaps_file {path} must be .json ({{label: prompt}}) or .csv (columns label, prompt)")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if not {"label", "prompt"} <= set(reader.fieldnames or []):
            raise UserError(f"prompt.swaps_file {path} needs the columns label, prompt")
        return {row["label"]: row["prompt"] for row in reader}


class MismatchPrompt(PromptSource):
    """``prompt=mismatch``: a deliberately wrong prompt per class (TReg's Table 3: fried rice → "a photo of
    spaghetti", ice cream → "a photo of macarons"), so that text and measurement disagree.

    A class absent from the swaps keeps its given prompt, with one warning naming such classes.

    Args:
        swaps: ``{label: prompt}`` (labels as the dataset names them: ``fried_rice``).
        swaps_file: a user's ``.json`` / ``.csv`` of more swaps (its entries win over ``swaps``).
    """

    name = "mismatch"

    def __init__(self, swaps: Mapping[str, str] | None = None, swaps_file: str | None = None) -> None:
        self.swaps = {str(k): str(v) for k, v in (swaps or {}).items()}
        if swaps_file:
            self.swaps.update(read_swaps(swaps_file))
        if not self.swaps:
            raise UserError("prompt=mismatch has no swaps: set prompt.swaps or prompt.swaps_file")
        self._warned: set[str] = set()

    def prompts(self, samples: Sequence[Sample]) -> list[str]:
        require_labels(samples, self.name)
        unmapped = {s.label for s in samples if s.label not in self.swaps} - self._warned
        if unmapped:
            log.warning("prompt=mismatch: no swap for class(es) %s; they keep their given prompt", sorted(unmapped))
            self._warned |= unmapped
        return [self.swaps.get(s.label or "", s.prompt) for s in samples]
