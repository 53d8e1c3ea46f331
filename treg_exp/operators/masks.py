"""Inpainting masks ``[1, H, W]`` (float32, 1 = observed, 0 = hole), one per image, drawn from its generator.

- :func:`box_mask`: a square hole of ``box_fraction`` of the side (half: DPS's 128 px at 256, PSLD's 256 px at 512),
  placed at a random position (DPS: top-left uniform with a margin of 1/16 of the side, i.e. 16 px at 256) or centred.
- :func:`random_mask`: exactly ``round(drop_ratio·H·W)`` pixels dropped, all channels together (DPS's random mask).
- :func:`freeform_mask`: DeepFill-v2-style brush strokes (random polylines with round joints, widths scaled with the
  image size) added until the hole ratio reaches a target drawn uniformly in ``hole_range`` (10–20 %, the hole
  ratio of Palette's free-form test masks); a stroke that would pass the upper bound is redrawn thinner and shorter.
- :func:`load_mask_file`: masks from a ``.npz`` file (e.g. Palette's), one picked per image from its generator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from treg_exp.common import checks, seeding
from treg_exp.common.errors import UserError


def box_mask(
    height: int,
    width: int,
    generator: torch.Generator,
    box_fraction: float = 0.5,
    placement: str = "random",
    margin_fraction: float = 1 / 16,
) -> torch.Tensor:
    """A square hole of side ``round(box_fraction·min(H, W))``; ``placement`` ``random`` (within the margin) or
    ``center``. Returns ``[1, H, W]`` float32."""
    if not 0.0 < box_fraction < 1.0:
        raise UserError(f"task.box_fraction must be in (0, 1), got {box_fraction}")
    if placement not in ("random", "center"):
        raise UserError(f"unknown task.placement {placement!r}; use 'random' or 'center'")
    side = round(box_fraction * min(height, width))
    mask = torch.ones(1, height, width)
    if placement == "center":
        top, left = (height - side) // 2, (width - side) // 2
    else:
        mh, mw = int(margin_fraction * height), int(margin_fraction * width)
        # top-left uniform in [margin, size − side − margin] (the whole range if the margin leaves none)
        # DPS's random_sq_bbox: np.random.randint(margin, H − margin − side), upper bound excluded
        top = seeding.randint(generator, mh, max(height - side - mh, mh + 1))
        left = seeding.randint(generator, mw, max(width - side - mw, mw + 1))
    mask[:, top : top + side, left : left + side] = 0.0
    return mask


def random_mask(
    height: int, width: int, generator: torch.Generator, drop_ratio: float | Sequence[float] = 0.7
) -> torch.Tensor:
    """Exactly ``round(r·H·W)`` pixels (all channels) dropped, chosen by ``generator``. ``[1, H, W]``.

    ``drop_ratio``: the ratio ``r``, or ``[low, high]`` to draw ``r ~ U(low, high)`` per image first (DPS's code:
    ``mask_prob_range (0.3, 0.7)``).
    """
    if not isinstance(drop_ratio, (int, float)) and len(drop_ratio) != 2:
        raise UserError(f"task.drop_ratio must be a number or [low, high], got {list(drop_ratio)}")
    low, high = (drop_ratio, drop_ratio) if isinstance(drop_ratio, (int, float)) else tuple(drop_ratio)
    if not 0.0 <= low <= high < 1.0:
        raise UserError(f"task.drop_ratio must be in [0, 1) (or a [low, high] range in it), got {drop_ratio}")
    if high > low:
        drop_ratio = seeding.uniform(generator, low, high)
    else:
        drop_ratio = low
    n = height * width
    holes = torch.randperm(n, generator=generator)[: int(drop_ratio * n)]
    mask = torch.ones(n)
    mask[holes] = 0.0
    return mask.view(1, height, width)


def _stroke(
    draw: ImageDraw.ImageDraw, height: int, width: int, generator: torch.Generator, scale: float, shrink: int
) -> None:
    """One DeepFill-v2 brush stroke (``shrink`` halves its width and vertex count, for retries)."""
    mean_angle, angle_range = 2 * math.pi / 5, 2 * math.pi / 15
    max_vertices = max(12 >> shrink, 2)
    num_vertex = seeding.randint(generator, min(4, max_vertices - 1), max_vertices)
    angle_min = mean_angle - seeding.uniform(generator, 0, angle_range)
    angle_max = mean_angle + seeding.uniform(generator, 0, angle_range)
    average_radius = math.sqrt(height * height + width * width) / 8 / (1 << shrink)
    vertex = [(seeding.randint(generator, 0, width), seeding.randint(generator, 0, height))]
    for i in range(num_vertex):
        angle = seeding.uniform(generator, angle_min, angle_max)
        angle = 2 * math.pi - angle if i % 2 == 0 else angle
        r = float(torch.randn((), generator=generator, dtype=torch.float64)) * (average_radius / 2) + average_radius
        r = min(max(r, 0.0), 2 * average_radius)
        x = min(max(vertex[-1][0] + r * math.cos(angle), 0), width)
        y = min(max(vertex[-1][1] + r * math.sin(angle), 0), height)
        vertex.append((int(x), int(y)))
    stroke_width = max(int(seeding.uniform(generator, 12, 40) * scale / (1 << shrink)), 1)
    draw.line(vertex, fill=1, width=stroke_width)
    for vx, vy in vertex:
        half = stroke_width // 2
        draw.ellipse((vx - half, vy - half, vx + half, vy + half), fill=1)


def freeform_mask(
    height: int,
    width: int,
    generator: torch.Generator,
    hole_range: tuple[float, float] = (0.1, 0.2),
    max_tries: int = 200,
) -> torch.Tensor:
    """Brush-stroke holes covering a fraction in ``hole_range`` of the image. ``[1, H, W]`` float32."""
    if len(hole_range) != 2:
        raise UserError(f"task.hole_range must be [low, high], got {list(hole_range)}")
    lo, hi = float(hole_range[0]), float(hole_range[1])
    if not 0.0 < lo <= hi < 1.0:
        raise UserError(f"task.hole_range must satisfy 0 < low ≤ high < 1, got {list(hole_range)}")
    target = seeding.uniform(generator, lo, hi)
    scale = min(height, width) / 512  # DeepFill's widths (12–40 px) are for 512 px images
    holes = Image.new("L", (width, height), 0)
    shrink = 0
    for _ in range(max_tries):
        trial = holes.copy()
        _stroke(ImageDraw.Draw(trial), height, width, generator, scale, shrink)
        ratio = float(np.asarray(trial, dtype=np.float32).mean())
        if ratio > hi:  # overshoot: redraw a thinner, shorter stroke
            shrink = min(shrink + 1, 4)
            continue
        holes = trial
        if ratio >= target:
            break
    ratio = float(np.asarray(holes, dtype=np.float32).mean())
    if not lo <= ratio <= hi:
        raise UserError(f"could not draw a free-form mask with a hole ratio in {[lo, hi]} at {height}×{width}")
    return 1.0 - torch.from_numpy(np.asarray(holes, dtype=np.float32).copy())[None]


def load_mask_file(path: str | Path, holes: str = "nonzero") -> torch.Tensor:
    """All masks of a ``.npz`` file as ``[N, 1, H, W]`` float32 (1 = observed).

    The file holds one array (or one named ``mask``/``masks``) of shape ``[H, W]``, ``[N, H, W]`` or
    ``[N, 1, H, W]``; ``holes`` says which entries are holes: ``nonzero`` (Palette's convention) or ``zero``.
    """
    path = checks.existing_path("task.mask_file", path, "a .npz of masks [H, W], [N, H, W] or [N, 1, H, W]")
    if holes not in ("nonzero", "zero"):
        raise UserError(f"task.mask_holes must be 'nonzero' or 'zero', got {holes!r}")
    with np.load(path) as data:
        keys = [k for k in ("mask", "masks") if k in data.files] or list(data.files)
        if len(keys) != 1:
            raise UserError(f"mask file {path} must hold one array (or one named 'mask'); found {data.files}")
        arr = np.asarray(data[keys[0]], dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[None, None]
    elif arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4 or arr.shape[1] != 1:
        raise UserError(f"masks in {path} must be [H, W], [N, H, W] or [N, 1, H, W]; got {arr.shape}")
    is_hole = arr != 0 if holes == "nonzero" else arr == 0
    return torch.from_numpy((~is_hole).astype(np.float32))


def pick_mask(masks: torch.Tensor, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """One of ``masks`` ``[N, 1, h, w]`` chosen by ``generator``, resized (nearest) to ``[1, H, W]``."""
    mask = masks[seeding.randint(generator, 0, masks.shape[0])]
    if mask.shape[-2:] != (height, width):
        mask = F.interpolate(mask[None], size=(height, width), mode="nearest")[0]
    return mask
