"""Inpainting ``y = m ⊙ (x + σ_y n)`` with one mask ``m`` ``[B, 1, H, W]`` per image (1 = observed, 0 = hole).

``A = diag(m)`` is its own adjoint. The noise is masked too, so ``y`` is zero in the holes (the picture saved as the
measurement shows the holes at 0, i.e. mid-grey).

Decision on deepinv (0.5.0): ``deepinv.physics.Inpainting`` computes the same ``x · mask`` and offers the same
pixelwise masks; what is ours is the masks (:mod:`treg_exp.operators.masks`), drawn per image from the image's
measurement generator. Holding a deepinv module per batch only to multiply by a buffer would add state to keep in
sync and nothing else, so the product is written here directly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from treg_exp.common import checks, seeding
from treg_exp.common.errors import UserError
from treg_exp.operators import masks as mask_lib
from treg_exp.operators.base import LinearOperator, compute_dtype

MASK_TYPES = ("box", "random", "freeform", "file")


class Inpainting(LinearOperator):
    """Inpainting with per-image masks drawn in :meth:`draw`.

    Args:
        mask_type: ``box`` | ``random`` | ``freeform`` | ``file`` (``freeform`` with ``mask_file`` set reads the
            file too).
        box_fraction, placement: box side as a fraction of the image side; ``random`` or ``center``.
        drop_ratio: fraction of pixels dropped by ``random``, or ``[low, high]`` to draw it per image.
        hole_range: ``[low, high]`` hole ratio of ``freeform`` masks.
        mask_file, mask_holes: a ``.npz`` of masks and which of its entries are holes (``nonzero`` | ``zero``).
        sigma_y: measurement noise on the [−1, 1] scale.
        mask: ``[B, 1, H, W]`` masks (set by :meth:`draw` / :meth:`with_params`).
        file_masks: the already loaded masks of ``mask_file`` (so that rebuilding does not read it again).
    """

    def __init__(
        self,
        mask_type: str = "box",
        box_fraction: float = 0.5,
        placement: str = "random",
        drop_ratio: float | Sequence[float] = (0.3, 0.7),
        hole_range: Sequence[float] = (0.1, 0.2),
        mask_file: str | None = None,
        mask_holes: str = "nonzero",
        sigma_y: float = 0.01,
        name: str = "inpaint",
        mask: torch.Tensor | None = None,
        file_masks: torch.Tensor | None = None,
    ) -> None:
        super().__init__(sigma_y=sigma_y, name=name)
        checks.choice("task.mask_type", mask_type, MASK_TYPES)
        if mask_type == "file" and not mask_file:
            raise UserError("task.mask_type=file needs task.mask_file=<path to .npz>")
        self.options = dict(
            mask_type=mask_type,
            box_fraction=float(box_fraction),
            placement=placement,
            drop_ratio=float(drop_ratio) if isinstance(drop_ratio, (int, float)) else tuple(map(float, drop_ratio)),
            hole_range=tuple(float(v) for v in hole_range),
            mask_file=mask_file,
            mask_holes=mask_holes,
            sigma_y=sigma_y,
            name=name,
        )
        # validate the cheap options now, before any image is loaded
        if mask_type == "box":
            mask_lib.box_mask(16, 16, torch.Generator().manual_seed(0), box_fraction, placement)
        elif mask_type == "random":
            mask_lib.random_mask(4, 4, torch.Generator().manual_seed(0), self.options["drop_ratio"])
        elif mask_type == "freeform" and not (len(hole_range) == 2 and 0.0 < hole_range[0] <= hole_range[1] < 1.0):
            raise UserError(f"task.hole_range must be [low, high] with 0 < low ≤ high < 1, got {list(hole_range)}")
        if file_masks is None and mask_file:
            file_masks = mask_lib.load_mask_file(mask_file, mask_holes)
        self._file_masks = file_masks
        self.register_buffer("mask", None if mask is None else mask.float())

    # --- parameters ------------------------------------------------------------------------------------------
    def _one_mask(self, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
        o = self.options
        if self._file_masks is not None:
            return mask_lib.pick_mask(self._file_masks, height, width, generator)
        if o["mask_type"] == "box":
            return mask_lib.box_mask(height, width, generator, o["box_fraction"], o["placement"])
        if o["mask_type"] == "random":
            return mask_lib.random_mask(height, width, generator, o["drop_ratio"])
        return mask_lib.freeform_mask(height, width, generator, o["hole_range"])

    def _with_mask(self, mask: torch.Tensor) -> Inpainting:
        return Inpainting(**self.options, mask=mask, file_masks=self._file_masks)

    def draw(self, generators: Sequence[torch.Generator], image_shape: Sequence[int]) -> Inpainting:
        """One mask per image, mask ``b`` from ``generators[b]``; ``image_shape`` is ``[..., H, W]``."""
        height, width = int(image_shape[-2]), int(image_shape[-1])
        return self._with_mask(torch.stack([self._one_mask(height, width, g) for g in generators]))

    def params(self) -> dict[str, torch.Tensor]:
        return {} if self.mask is None else {"mask": self.mask}

    def with_params(self, params: dict[str, torch.Tensor]) -> Inpainting:
        """The operator with saved masks ``params["mask"]`` ``[B, 1, H, W]``."""
        return self._with_mask(params["mask"]) if "mask" in params else self

    # --- the model -------------------------------------------------------------------------------------------
    def _mask_for(self, x: torch.Tensor) -> torch.Tensor:
        if self.mask is None:
            raise UserError(f"{self.name}: masks are drawn per image; call draw(generators, shape) first")
        if self.mask.shape[0] not in (1, x.shape[0]) or self.mask.shape[-2:] != x.shape[-2:]:
            raise UserError(
                f"{self.name}: masks {tuple(self.mask.shape)} do not fit images {tuple(x.shape)}; draw them again"
            )
        return self.mask.to(device=x.device, dtype=x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``m ⊙ x``: ``[B, 3, H, W]`` → ``[B, 3, H, W]``."""
        x = compute_dtype(x)
        return self._mask_for(x) * x

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``m ⊙ y`` (``A`` is a diagonal projection)."""
        y = compute_dtype(y)
        return self._mask_for(y) * y

    def measure(self, x: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """``m ⊙ (x + σ_y n)``, ``n`` from ``generators`` (drawn after the masks, as :meth:`draw` came first)."""
        x = compute_dtype(x)
        noise = seeding.randn(x.shape[1:], generators, device=x.device, dtype=x.dtype)
        return self._mask_for(x) * (x + self.sigma_y * noise)

    def measurement_image(self, y: torch.Tensor) -> torch.Tensor:
        """The masked image with holes at 0, ``[B, 3, H, W]`` in [−1, 1]."""
        y = compute_dtype(y).float()
        return (self._mask_for(y) * y).clamp(-1.0, 1.0)

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """``AᵀA x = m ⊙ x`` (``m`` is binary)."""
        return self.forward(x)

    def input_shape(self, y: torch.Tensor) -> tuple[int, ...]:
        return tuple(y.shape)

    def has_closed_form_prox(self) -> bool:
        return True

    def normal_inverse(self, rhs: torch.Tensor, lam: float) -> torch.Tensor:
        """``rhs / (m + λ)`` (``AᵀA = diag(m)``, ``m`` binary; DiffPIR's ``(m·y + ρ·x̂0)/(m + ρ)``)."""
        rhs = compute_dtype(rhs)
        return rhs / (self._mask_for(rhs) + lam)
