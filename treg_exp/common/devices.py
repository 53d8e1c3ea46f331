"""Where and in which precision a run computes."""

from __future__ import annotations

import torch

from treg_exp.common.errors import UserError


def resolve_device(device: str) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; an explicit CUDA device without CUDA is a one-line error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise UserError(f"device={device} is not a device ({error})") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"device={device} requested but CUDA is not available; device=auto uses CUDA when present, else the CPU"
        )
    return resolved


DTYPES = {
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float32": torch.float32,
    "fp32": torch.float32,
    "float64": torch.float64,
    "fp64": torch.float64,
}


def parse_dtype(dtype: str | torch.dtype, allowed: tuple[torch.dtype, ...] | None = None) -> torch.dtype:
    """``"float16"`` / ``"bfloat16"`` / ``"float32"`` / ``"float64"`` (or a torch dtype) → torch dtype.

    ``allowed``: the dtypes the caller supports (a one-line error names them otherwise).
    """
    resolved = dtype if isinstance(dtype, torch.dtype) else DTYPES.get(str(dtype).lower().removeprefix("torch."))
    names = [n for n, d in DTYPES.items() if (allowed is None or d in allowed) and not n.startswith(("fp", "bf16"))]
    if resolved is None or (allowed is not None and resolved not in allowed):
        raise UserError(f"unknown or unsupported dtype {dtype!r}; use one of {', '.join(names)}")
    return resolved
