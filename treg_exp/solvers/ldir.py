"""LDIR: latent DPS with an Adam-like history of the gradient (He et al., arXiv 2307.12070).

Source: no official code; the update as P2L states and ran it (Chung et al., ICML 2024, appendix B.3 eq. 21–24, and
B.2: P2L's own "Adam" gradient type is this update). Per step of the LDPS loop (notation in
:mod:`treg_exp.solvers.ldps`), with ``k`` the step count so far::

    ε̂, ẑ0 = ε(z_t, c_∅), Tweedie;   x̂0 = D(ẑ0)
    g   = ∇_{z_t} ‖y − A(x̂0)‖₂
    m_k = β₁ m_{k−1} + (1−β₁) g,   v_k = β₂ v_{k−1} + (1−β₂) g⊙g
    m̂  = m_k/(1−β₁ᵏ),   v̂ = v_k/(1−β₂ᵏ)
    z′ = DDIM(ẑ0, ε̂; η)
    z_{t−1} = z′ − η_step · m̂/(√v̂ + ε)

the history being :class:`treg_exp.solvers.core.AdamHistory` (elementwise, so per image), shared with P2L.

Defaults: 1000 DDIM steps, η = 0 [unverified: P2L grid-searched η and the value was lost in the text extraction],
β = (0.9, 0.999), ε = 1e-8 (Adam's defaults, "the default setting" in P2L), ``step_size`` η_step = 0.05 (P2L's grid
search; 0.1 for ImageNet motion deblurring, which depends on the dataset and so is set in an experiment, not per
task), the null text, ``alpha_index_shift=1`` (the SD grid of the PSLD code, which P2L compares with), no renoising,
output the decoded final latent. ``squared_norm=true`` differentiates ``‖·‖₂²`` instead, as REFERENCE.md's reading
of the LDIR paper has it [unverified]; Adam's direction is invariant to a constant scale of ``g`` but not to a
time-varying one, so the two differ. Departures: the family's (:mod:`treg_exp.solvers.ldps`).

Cost per image: as LDPS, ``num_steps`` UNet rows and decodes with a backward pass each, one output decode.
"""

from __future__ import annotations

import torch

from treg_exp.solvers.core import AdamHistory
from treg_exp.solvers.ldps import DPSFamily, StepContext


class LDIR(DPSFamily):
    """LDIR (module docstring). Args as :class:`DPSFamily` (``step_size`` is η_step), and:

    Args:
        beta1, beta2, adam_eps: the history's β₁, β₂ and ε.
        squared_norm: differentiate ``‖y − A(x̂0)‖₂²`` instead of the norm.
    """

    name = "LDIR"

    def __init__(
        self,
        step_size: float = 0.05,
        beta1: float = 0.9,
        beta2: float = 0.999,
        adam_eps: float = 1e-8,
        squared_norm: bool = False,
        **family,
    ) -> None:
        super().__init__(step_size=step_size, **family)
        AdamHistory(beta1, beta2, adam_eps)  # a bad β or ε is a config error now, not at the first step
        self.beta1, self.beta2, self.adam_eps = float(beta1), float(beta2), float(adam_eps)
        self.squared_norm = bool(squared_norm)

    def loss(self, z0: torch.Tensor, x0: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """``‖y − A(x̂0)‖₂`` per image (its square with ``squared_norm``); the step size acts in :meth:`direction`."""
        norm = self.measurement_norm(x0, ctx)
        return norm * norm if self.squared_norm else norm

    def direction(self, grad: torch.Tensor, state: dict) -> torch.Tensor:
        """``η_step · m̂/(√v̂ + ε)`` from this solve's history (created at the first step)."""
        history = state.setdefault("adam", AdamHistory(self.beta1, self.beta2, self.adam_eps))
        return self.step_size * history.direction(grad)
