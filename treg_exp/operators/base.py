"""Linear forward models ``y = A x + σ_y n`` on image batches ``[B, 3, H, W]`` in [−1, 1]."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import nn

from treg_exp.common import checks, seeding
from treg_exp.operators.cg import conjugate_gradient


def compute_dtype(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the dtype operators compute in: float16/bfloat16 promoted to float32, float32/64 kept."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class LinearOperator(nn.Module, ABC):
    """A linear forward model ``A`` with Gaussian measurement noise ``σ_y`` (on the [−1, 1] scale), named ``name``.

    Subclasses implement :meth:`forward` (noiseless ``A x``) and may override :meth:`adjoint` with a closed form;
    the default adjoint is the vector–Jacobian product of :meth:`forward`. Operators with random parameters
    (kernels, masks) draw them per image in :meth:`draw` from each image's measurement generator and keep them as
    buffers with a leading batch axis; :meth:`params` returns them for saving beside the measurement, and
    :meth:`with_params` rebuilds the operator from saved ones.

    Inputs in bfloat16/float16 are computed in float32 (and returned in float32).
    """

    def __init__(self, sigma_y: float = 0.01, name: str = "operator") -> None:
        super().__init__()
        self.sigma_y = checks.number("task.sigma_y", sigma_y, minimum=0.0)
        self.name = name  # the task's name, in messages and diagnostics

    # --- per-image parameters ------------------------------------------------------------------------------
    def draw(self, generators: Sequence[torch.Generator], image_shape: Sequence[int]) -> LinearOperator:
        """The operator for a batch whose image ``b`` draws its parameters from ``generators[b]``.

        Deterministic operators return ``self``.
        """
        return self

    def params(self) -> dict[str, torch.Tensor]:
        """Per-image parameters ``{name: [B, ...]}`` (empty for deterministic operators)."""
        return {}

    def with_params(self, params: dict[str, torch.Tensor]) -> LinearOperator:
        """The operator with the given per-image parameters (as returned by :meth:`params`)."""
        return self

    # --- the model ------------------------------------------------------------------------------------------
    @abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Noiseless ``A x``: ``[B, 3, H, W]`` → the measurement space ``[B, ...]``."""

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``Aᵀ y`` by the vector–Jacobian product of :meth:`forward` (override with a closed form where cheaper)."""
        y = y.float() if y.dtype in (torch.float16, torch.bfloat16) else y
        x = torch.zeros(self.input_shape(y), dtype=y.dtype, device=y.device, requires_grad=True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(self.forward(x), x, grad_outputs=y)
        return grad

    def input_shape(self, y: torch.Tensor) -> tuple[int, ...]:
        """The shape of ``x`` for a measurement ``y`` (needed by the default adjoint)."""
        raise TypeError(f"{type(self).__name__} must define input_shape (or a closed-form adjoint)")

    def measure(self, x: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """``y = A x + σ_y n`` with ``n`` drawn per image from ``generators``."""
        y = self.forward(x)
        noise = seeding.randn(y.shape[1:], generators, device=y.device, dtype=y.dtype)
        return y + self.sigma_y * noise

    def measurement_image(self, y: torch.Tensor) -> torch.Tensor:
        """A viewable picture ``[B, 3, H', W']`` in [−1, 1] of a measurement ``y`` (saved as ``measurement/<id>.png``).

        The default suits operators whose ``y`` is an image (blur, SR, denoising): ``y`` clamped, in float32.
        """
        return y.float().clamp(-1.0, 1.0)

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """``AᵀA x``."""
        return self.adjoint(self.forward(x))

    def solve_damped(
        self,
        y: torch.Tensor,
        x0: torch.Tensor,
        lam: float,
        iters: int,
        tol: float = 0.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``argmin_x ‖y − A x‖² + λ‖x − x₀‖²``: CG on ``(AᵀA + λI) x = Aᵀy + λx₀`` started at ``x₀``.

        Computed in float32 (float64 when ``x₀`` is float64) whatever the network dtype.

        Returns ``(x, residual_norm [B])``.
        """
        dtype = torch.float64 if x0.dtype == torch.float64 else torch.float32
        x0 = x0.to(dtype)
        y = y.to(dtype)
        rhs = self.adjoint(y) + lam * x0
        return conjugate_gradient(lambda v: self.normal(v) + lam * v, rhs, x0, iters, tol)

    # --- the exact proximal step of the data term (DiffPIR, RED-ADMM; see treg_exp.operators.prox) -----------
    def has_closed_form_prox(self) -> bool:
        """Whether :meth:`normal_inverse` is exact for this operator (otherwise :meth:`prox_l2` runs CG)."""
        return False

    def normal_inverse(self, rhs: torch.Tensor, lam: float) -> torch.Tensor:
        """``(AᵀA + λI)⁻¹ rhs`` in closed form, for operators whose :meth:`has_closed_form_prox` is true."""
        raise NotImplementedError(f"{type(self).__name__} has no closed-form (AᵀA + λI)⁻¹")

    def prox_l2(
        self,
        y: torch.Tensor,
        x0: torch.Tensor,
        lam: float | torch.Tensor,
        cg_iters: int = 50,
        cg_tol: float = 0.0,
    ) -> torch.Tensor:
        """``argmin_x ‖y − A x‖² + λ‖x − x₀‖²``, i.e. ``(AᵀA + λI) x = Aᵀy + λx₀``.

        Exact (:meth:`normal_inverse`) where the operator has a closed form and ``λ > 0``; otherwise
        :meth:`solve_damped` (CG from ``x₀``, at most ``cg_iters`` iterations, stop at ‖r‖ < ``cg_tol``). Computed in
        float32 (float64 when ``x₀`` is float64).

        Args:
            y: the measurement ``[B, ...]``; x0: ``[B, 3, H, W]`` the point the step is anchored at.
            lam: λ ≥ 0, one number or one per image (``[B, 1, 1, 1]``, LATINO's residual-scaled step).

        Returns:
            ``[B, 3, H, W]``.
        """
        if bool(torch.all(torch.as_tensor(lam) > 0)) and self.has_closed_form_prox():
            dtype = torch.float64 if x0.dtype == torch.float64 else torch.float32
            x0 = x0.to(dtype)
            return self.normal_inverse(self.adjoint(y.to(dtype)) + lam * x0, lam)
        return self.solve_damped(y, x0, lam, cg_iters, cg_tol)[0]


def measure_images(
    operator: LinearOperator, x: torch.Tensor, image_ids: Sequence[str], seed: int
) -> tuple[LinearOperator, torch.Tensor]:
    """Image ``b``'s operator parameters and measurement noise, both from its measurement stream
    ``(seed, image_ids[b], "measurement")``: ``(A drawn for the batch, y = A x + σ_y n)``.

    The one place a measurement is drawn, so that the solve and the captioner of ``prompt=caption`` see the same
    ``y`` whatever the batch.
    """
    generators = seeding.batch_generators(seed, image_ids, seeding.MEASUREMENT)
    operator = operator.draw(generators, x.shape).to(x.device)
    return operator, operator.measure(x, generators)
