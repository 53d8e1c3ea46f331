"""Per-image reductions on batches ``[B, ...]``: every image of a batch is its own problem."""

from __future__ import annotations

import torch


def batch_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image inner products ``⟨a_b, b_b⟩``: ``[B, ...]`` × ``[B, ...]`` → ``[B]``."""
    return (a * b).flatten(1).sum(1)


def batch_norm(v: torch.Tensor) -> torch.Tensor:
    """Per-image Euclidean norms ``‖v_b‖``: ``[B, ...]`` → ``[B]``."""
    return v.flatten(1).norm(dim=1)


def per_image(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``[B]`` → ``[B, 1, …, 1]`` broadcastable against ``like`` ``[B, ...]``."""
    return values.view(-1, *([1] * (like.dim() - 1)))
