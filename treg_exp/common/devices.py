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


def thread_count(setting: int | str, environ: dict[str, str], launcher_cpus: int | None = None) -> int | None:
    """CPU threads per job for ``threads`` (``conf/config.yaml``); ``None``: leave torch's default (every core).

    ``auto``: ``OMP_NUM_THREADS`` when set (torch already follows it), else the CPUs a scheduler gave the job
    (``SLURM_CPUS_PER_TASK``), else those the launcher gives each of the jobs it runs side by side
    (``hydra.launcher.cpus_per_task``), else every core — right for one run alone, ruinous for several: torch's
    threads spin-wait, and 3 processes of all cores each on 2 cores ran 10× slower than one thread each. A number
    sets it.
    """
    if str(setting) != "auto":
        try:
            count = int(setting)
        except (TypeError, ValueError):
            count = 0
        if count < 1:
            raise UserError(f"threads must be auto or a positive integer, got {setting!r}")
        return count
    if environ.get("OMP_NUM_THREADS"):
        return None
    for value in (environ.get("SLURM_CPUS_PER_TASK"), launcher_cpus):
        if value is not None and str(value).isdigit() and int(value) > 0:
            return int(value)
    return None
