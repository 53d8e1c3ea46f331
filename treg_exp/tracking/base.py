"""Run loggers: where per-image rows, images and the summary go besides the run directory's own files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


class RunLogger:
    """Receives a run's config, its per-image rows and images, and its summary. This base logs nothing.

    A logger must never stop a run: implementations catch their own failures and warn.
    """

    def start(self, config: dict[str, Any], run_dir: Path) -> None:
        """Called once before the first image, with the resolved config."""

    def log_image(self, row: dict[str, Any], images: dict[str, torch.Tensor]) -> None:
        """One finished image: its metrics ``row`` and ``{"measurement"|"reconstruction"|"ground_truth": [3, H, W]
        in [−1, 1]}`` (the measurement shown as an image where it is one)."""

    def finish(self, summary: dict[str, Any] | None) -> None:
        """Called once at the end, also after an error (``summary`` is then None)."""


class NullLogger(RunLogger):
    """``logger=none``: only the run directory's files."""
