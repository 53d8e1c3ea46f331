"""The solver interface: ``solve(y, operator, prior, prompts, generators, callback) -> x̂``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import torch

from treg_exp.models.base import DiffusionPrior
from treg_exp.operators.base import LinearOperator

#: ``callback(step_index, values)``: per-step diagnostics, each value a ``[B]`` tensor (one number per image) or,
#: for keys starting with ``"image/"``, a ``[B, 3, H, W]`` image in [−1, 1].
Callback = Callable[[int, dict[str, torch.Tensor]], None]


class Solver(ABC):
    """An inverse-problem solver with a diffusion prior.

    A solver's hyperparameters are its constructor arguments (its Hydra config). :meth:`solve` works on a batch:
    image ``b`` has its own prompt and its own CPU generator (the image's solver stream), and the result for an
    image must not depend on the others in the batch.
    """

    #: False for solvers that ignore the measurement (plain text-to-image sampling).
    uses_measurement: bool = True

    def check_prior(self, prior: DiffusionPrior) -> None:  # noqa: B027 - most solvers take any prior
        """One-line :class:`UserError` when this solver's options cannot run on ``prior`` (built, weights not needed);
        the runner calls it before anything is written."""

    @abstractmethod
    def solve(
        self,
        y: torch.Tensor,
        operator: LinearOperator,
        prior: DiffusionPrior,
        prompts: Sequence[str],
        generators: Sequence[torch.Generator],
        image_shape: Sequence[int],
        callback: Callback | None = None,
    ) -> torch.Tensor:
        """Reconstruct a batch.

        Args:
            y: measurements ``[B, ...]`` (the operator's output space, noisy).
            operator: the forward model with this batch's per-image parameters.
            prior: a loaded :class:`DiffusionPrior` on the device of ``y``.
            prompts: one text prompt per image.
            generators: one CPU generator per image (the solver stream).
            image_shape: ``[B, 3, H, W]`` of the unknown images.
            callback: optional per-step diagnostics (see :data:`Callback`).

        Returns:
            ``x̂`` ``[B, 3, H, W]`` in [−1, 1] (clamped), float32.
        """
