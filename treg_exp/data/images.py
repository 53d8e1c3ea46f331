"""Image loading and the shared preprocessing: centre crop to a square, resize, map to [−1, 1]."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def center_square(image: Image.Image) -> Image.Image:
    """The largest centred square of ``image``."""
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return image.crop((left, top, left + side, top + side))


def to_tensor(image: Image.Image, resolution: int) -> torch.Tensor:
    """RGB ``image`` → centre square → ``resolution``² (PIL bicubic, antialiased) → ``[3, R, R]`` in [−1, 1]."""
    square = center_square(image.convert("RGB"))
    if square.size != (resolution, resolution):
        square = square.resize((resolution, resolution), Image.BICUBIC)
    array = np.asarray(square, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def to_pil(x: torch.Tensor) -> Image.Image:
    """``[3, H, W]`` in [−1, 1] → 8-bit RGB (clamped, rounded)."""
    levels = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(levels.permute(1, 2, 0).cpu().numpy())


def from_uint8(array: np.ndarray) -> torch.Tensor:
    """``[H, W, 3]`` uint8 → ``[3, H, W]`` in [−1, 1]."""
    return torch.from_numpy(np.asarray(array, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1).contiguous()
