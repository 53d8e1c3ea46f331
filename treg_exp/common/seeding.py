"""Per-image random streams.

Every image gets its own CPU `torch.Generator` per stream, seeded from SHA-256 of ``(seed, image_id, stream)``.
The measurement stream draws operator parameters (kernels, masks) and the noise of ``y``, so the same image gets
the same measurement whatever the solver; the solver stream draws everything the solver samples. Draws happen on
the CPU and are moved to the device afterwards, so CPU and GPU runs see the same numbers, and a batch of B images
draws exactly what B runs of one image draw.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

MEASUREMENT = "measurement"
SOLVER = "solver"


def derive_seed(seed: int, image_id: str, stream: str) -> int:
    """63-bit seed from SHA-256 of ``f"{seed}/{image_id}/{stream}"``."""
    digest = hashlib.sha256(f"{seed}/{image_id}/{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def image_generator(seed: int, image_id: str, stream: str) -> torch.Generator:
    """A CPU generator for one image and one stream."""
    return torch.Generator(device="cpu").manual_seed(derive_seed(seed, image_id, stream))


def batch_generators(seed: int, image_ids: Sequence[str], stream: str) -> list[torch.Generator]:
    return [image_generator(seed, image_id, stream) for image_id in image_ids]


def randn(
    shape: Sequence[int],
    generators: Sequence[torch.Generator],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal draws ``[B, *shape]``, row ``b`` from ``generators[b]`` (drawn on the CPU in float32).

    Drawing in float32 whatever ``dtype`` keeps a float64 run on the same noise as a float32 run.
    """
    rows = [torch.randn(tuple(shape), generator=g, dtype=torch.float32) for g in generators]
    return torch.stack(rows).to(device=device, dtype=dtype)


def rand(
    shape: Sequence[int],
    generators: Sequence[torch.Generator],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Uniform [0, 1) draws ``[B, *shape]``, row ``b`` from ``generators[b]``."""
    rows = [torch.rand(tuple(shape), generator=g, dtype=torch.float32) for g in generators]
    return torch.stack(rows).to(device=device, dtype=dtype)


def uniform(generator: torch.Generator, low: float = 0.0, high: float = 1.0) -> float:
    """One float64 draw from U(low, high)."""
    return low + (high - low) * float(torch.rand((), generator=generator, dtype=torch.float64))


def randint(generator: torch.Generator, low: int, high: int) -> int:
    """One integer draw from ``[low, high)`` (``numpy.random.randint``'s convention)."""
    return int(torch.randint(low, high, (), generator=generator))
