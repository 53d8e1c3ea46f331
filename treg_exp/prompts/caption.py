"""``prompt=caption``: a captioning model's description of what the solver sees, cached in ``prompts.csv``.

What the captioner sees (``view``) is the measurement brought to image size: ``pinv`` (the pseudo-inverse ``A⁺y``,
for operators that have one: the SVD forms), ``adjoint`` (``Aᵀy``), ``upsample`` (``y`` resized bicubically to the
image size: blur and inpainting measurements are images already, SR's is smaller) or ``auto`` (``pinv`` where the
operator has one, else ``upsample`` for image-shaped ``y``, else ``adjoint``). The measurement is drawn exactly as
the solve draws it (:func:`~treg_exp.operators.base.measure_images`), so the caption describes the solver's ``y``.
``ground_truth`` captions the clean image instead: an oracle no real restoration has (P2L's "PaLI prompts from x"
row). ``template`` puts the caption into a prompt (P2L: "A high quality photo of a {caption}", because a bare
caption says nothing about image quality).

The cache: ``<cache_dir>/<key>/prompts.csv``, one row per image (``id, prompt, source, captioner, revision, task,
view, seed, input_sha256, key``), where ``key`` hashes the dataset, the task, the seed, the view and the captioner
(its name, revision and generation settings). Every solver, shard and rerun of the same data × task × captioner
reads the same file, so a sweep over solvers captions each image once; a changed task or captioner is another key
(nothing stale is reused). Rows are merged into the file under its lock after every captioning batch (atomic
rename), so a killed run resumes without captioning its finished images again. The subset rules (``data.limit``,
``data.ids``, ``data.stride``) are not part of the key: a larger subset reuses the captions it has.

A caption longer than the prior's text encoder takes (CLIP: 77 tokens with its start and end tokens) is cut to it,
with a warning naming the image; the cache keeps the caption as generated.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from treg_exp.common import checks
from treg_exp.common.errors import UserError
from treg_exp.data.base import ImageDataset, Sample
from treg_exp.operators.base import LinearOperator, measure_images
from treg_exp.prompts.captioners import Captioner
from treg_exp.prompts.sources import PromptContext, PromptSource
from treg_exp.tracking.files import locked, write_csv

log = logging.getLogger(__name__)

VIEWS = ("auto", "pinv", "adjoint", "upsample", "ground_truth")
CACHE_FILE = "prompts.csv"
CACHE_COLUMNS = ("id", "prompt", "source", "captioner", "revision", "task", "view", "seed", "input_sha256", "key")
#: data keys that choose images but do not change any image (a larger subset reuses the captions)
SUBSET_KEYS = ("limit", "ids", "stride", "strict")


def captioner_input(x: torch.Tensor, operator: LinearOperator, y: torch.Tensor, view: str) -> torch.Tensor:
    """What the captioner sees, ``[B, 3, H, W]`` in [−1, 1]: the measurement ``y`` of ``x`` brought to image size, or
    ``x`` itself for ``view=ground_truth`` (see the module docstring)."""
    image_shape = x.shape
    if view == "ground_truth":
        return x.float().clamp(-1.0, 1.0)
    if view == "auto":
        image_like = y.dim() == 4 and y.shape[1] == image_shape[1]
        view = "pinv" if hasattr(operator, "pinv") else "upsample" if image_like else "adjoint"
    if view == "pinv":
        if not hasattr(operator, "pinv"):
            raise UserError(
                f"prompt.view=pinv: the operator {type(operator).__name__} has no pseudo-inverse (use adjoint, "
                "upsample or auto)"
            )
        image = operator.pinv(y)
    elif view == "adjoint":
        image = operator.adjoint(y)
    else:
        if y.dim() != 4:
            raise UserError(f"prompt.view=upsample needs an image-shaped measurement, got {tuple(y.shape)}")
        image = F.interpolate(y.float(), size=tuple(image_shape[-2:]), mode="bicubic", align_corners=False)
    return image.float().reshape(image_shape).clamp(-1.0, 1.0)


def stable_hash(data: Any) -> str:
    """SHA-256 of ``data`` as canonical JSON."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def tensor_sha256(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()


def read_cache(path: Path, key: str) -> dict[str, dict[str, str]]:
    """The rows of ``path`` with this ``key``, by image id (``{}`` when the file is absent)."""
    if not path.is_file():
        return {}
    with path.open(newline="") as handle:
        return {row["id"]: row for row in csv.DictReader(handle) if row.get("key") == key}


def fit_to_tokens(text: str, tokenizer: Any, image_id: str) -> str:
    """``text`` cut to what ``tokenizer`` takes (its ``model_max_length`` with start and end tokens), warning when
    it is cut; unchanged without a tokenizer (a prior that reads no text through one)."""
    limit = getattr(tokenizer, "model_max_length", None)
    if tokenizer is None or not limit or limit > 100_000:
        return text
    ids = tokenizer(text, add_special_tokens=False).input_ids
    room = limit - 2
    if len(ids) <= room:
        return text
    cut = tokenizer.decode(ids[:room], skip_special_tokens=True).strip()
    log.warning("caption of %s has %d tokens, the text encoder takes %d: cut to %r", image_id, len(ids), room, cut)
    return cut


def readable_samples(dataset: ImageDataset, indices: Sequence[int]) -> list[Sample]:
    """The samples of ``indices`` that can be read; an unreadable one is left out here and recorded as that image's
    failure when the runner loads it (a :class:`UserError` stops the run)."""
    samples = []
    for k in indices:
        try:
            samples.append(dataset[k])
        except UserError:
            raise
        except Exception as error:  # noqa: BLE001 - the runner records it; captioning goes on
            log.warning("not captioned: %s: %s", dataset.image_id(k), error)
    return samples


class CaptionPrompt(PromptSource):
    """``prompt=caption``: each image's prompt is a caption of its measurement (see the module docstring).

    Args:
        captioner: the captioning model (``conf/prompt/captioner/``).
        view: what the captioner sees: ``auto`` | ``pinv`` | ``adjoint`` | ``upsample`` | ``ground_truth``.
        template: the prompt made of a caption; ``{caption}`` is replaced by it.
        cache_dir: the folder of the caches (one sub-folder per key).
    """

    name = "caption"

    def __init__(
        self, captioner: Captioner, view: str = "auto", template: str = "{caption}", cache_dir: str = "prompt_cache"
    ) -> None:
        if view not in VIEWS:
            raise UserError(f"prompt.view={view} is not one of {', '.join(VIEWS)}")
        self.template = checks.text("prompt.template", template)
        if "{caption}" not in self.template:
            raise UserError(f"prompt.template={template!r} has no {{caption}} for the caption")
        self.captioner = captioner
        self.view = view
        self.cache_dir = Path(checks.text("prompt.cache_dir", cache_dir))
        self.captions: dict[str, str] = {}
        self.tokenizer: Any = None

    def check(self) -> None:
        self.captioner.check()

    def cache_key(self, context: PromptContext) -> str:
        data = {k: v for k, v in (context.inputs.get("data") or {}).items() if k not in SUBSET_KEYS}
        task = context.inputs.get("task")
        return stable_hash(
            {"data": data, "task": task, "seed": context.seed, "view": self.view, **self.captioner.identity()}
        )[:16]

    def prepare(self, dataset: ImageDataset, indices: Sequence[int], context: PromptContext) -> None:
        """Caption the images of ``indices`` not in the cache, a captioner batch at a time, merging each batch's
        rows into ``prompts.csv``; then every image's caption is in :attr:`captions`."""
        self.tokenizer = context.text_tokenizer
        key = self.cache_key(context)
        folder = self.cache_dir / key
        path = folder / CACHE_FILE
        cached = read_cache(path, key)
        ids = [dataset.image_id(k) for k in indices]
        todo = [k for k, image_id in zip(indices, ids, strict=True) if image_id not in cached]
        self.captions = {i: cached[i]["prompt"] for i in ids if i in cached}
        size = self.captioner.batch_size
        log.info(
            "prompt=caption: %d image(s) to caption with %s (%d generate call(s) of at most %d images and %d new "
            "tokens), %d cached in %s",
            len(todo),
            self.captioner.name,
            -(-len(todo) // size),
            size,
            self.captioner.max_new_tokens,
            len(ids) - len(todo),
            path,
        )
        if not todo:
            return
        self.captioner.load(context.device)
        task = json.dumps(context.inputs.get("task"), sort_keys=True, default=str)
        started = time.perf_counter()
        with tqdm(total=len(todo), desc="captions", unit="img", disable=not context.progress) as bar:
            for start in range(0, len(todo), size):
                samples = readable_samples(dataset, todo[start : start + size])
                rows = self._caption(samples, context, key, task) if samples else []
                with locked(folder):
                    merged = {**read_cache(path, key), **{row["id"]: row for row in rows}}
                    write_csv(path, list(merged.values()), CACHE_COLUMNS)
                self.captions.update({row["id"]: row["prompt"] for row in rows})
                bar.update(len(todo[start : start + size]))
        log.info("captioned %d image(s) in %.1f s", len(todo), time.perf_counter() - started)
        self.captioner.release()

    def _caption(self, samples: list[Sample], context: PromptContext, key: str, task: str) -> list[dict[str, Any]]:
        ids = [s.id for s in samples]
        x = torch.stack([s.image for s in samples]).to(context.device, context.dtype)
        operator, y = measure_images(context.operator, x, ids, context.seed)
        seen = captioner_input(x, operator, y, self.view)
        captions = self.captioner.caption(seen)
        return [
            {
                "id": image_id,
                "prompt": caption,
                "source": self.name,
                "captioner": self.captioner.name,
                "revision": self.captioner.revision,
                "task": task,
                "view": self.view,
                "seed": context.seed,
                "input_sha256": tensor_sha256(seen[b]),
                "key": key,
            }
            for b, (image_id, caption) in enumerate(zip(ids, captions, strict=True))
        ]

    def prompts(self, samples: Sequence[Sample]) -> list[str]:
        missing = [s.id for s in samples if s.id not in self.captions]
        if missing:
            raise RuntimeError(f"no caption for {missing[0]}: prepare() did not run on it")
        texts = [self.template.replace("{caption}", self.captions[s.id]) for s in samples]
        return [fit_to_tokens(text, self.tokenizer, s.id) for text, s in zip(texts, samples, strict=True)]
