"""GML-DPS: latent DPS with a pull of ẑ0 toward a fixed point of decoding and encoding (Rout et al., NeurIPS 2023).

Source: the PSLD paper (arXiv 2307.00619, "GML-DPS", the goodness-modified latent DPS), as P2L states it (appendix
B.3 eq. 25); the official PSLD code (``LituRout/PSLD``, ``stable-diffusion/ldm/models/diffusion/psld.py``) computes
PSLD, of which this is the gluing term without the projection (:mod:`treg_exp.solvers.psld`). Per step of the
LDPS loop (:mod:`treg_exp.solvers.ldps`, notation there)::

    ε̂, ẑ0 = ε(z_t, c_∅), Tweedie;   x̂0 = D(ẑ0)
    z′ = DDIM(ẑ0, ε̂; η)
    z_{t−1} = z′ − ∇_{z_t} [ ω·‖y − A(x̂0)‖₂ + γ·‖E(x̂0) − ẑ0‖₂ ]

in one backward pass through UNet, decoder and encoder (the PSLD code's ``error = inpaint_error * gamma +
meas_error * omega`` and ``z_prev − grad``). ``E`` is the encoder's posterior sample (``get_first_stage_encoding``,
``encode_mode=sample``; its noise from the image's generator, reparameterised so the gradient flows) or its mean.

Defaults (the PSLD code's ``scripts/inverse.py`` and ``run/*.sh``): 1000 DDIM steps, η = 0, ω = ``step_size`` = 1,
γ = ``gluing_weight`` = 0.1 (box inpainting ω = 0.1, γ = 0.01: ``conf/solver_task/gml_dps_inpaint_box.yaml``), the
renoising quirk on (``renoise_residual``: ``‖y − (A(x̂0) + σ_y n)‖`` with a fresh ``n``, as ``noiser(meas_pred)``),
``alpha_index_shift=auto`` (the code's rule: ᾱ_{t−1} on its 1000-step grid, ᾱ_t at other step counts), output the
decoded final latent. The model (SD v1.5 in the PSLD presets) is a config
choice (``experiment=psld_sd15``). Departures: those of the family (per-image norms, one CFG row for the empty prompt,
float32 state; :mod:`treg_exp.solvers.ldps`).

Cost per image: per step one UNet row, one decode and one encode, each with its backward pass; one output decode.
Diagnostics: the family's plus ``dps/gluing`` (``‖E(x̂0) − ẑ0‖``, ``[B]``).
"""

from __future__ import annotations

import torch

from treg_exp.common.batch import batch_norm
from treg_exp.common.errors import UserError
from treg_exp.solvers.ldps import DPSFamily, StepContext

ENCODE_MODES = ("sample", "mean")


class GMLDPS(DPSFamily):
    """GML-DPS (module docstring). Args as :class:`DPSFamily`, and:

    Args:
        gluing_weight: γ, the weight of ``‖E(x̂0) − ẑ0‖₂``.
        encode_mode: ``sample`` (official) or ``mean`` of the encoder's posterior.
    """

    name = "GML-DPS"

    def __init__(
        self,
        gluing_weight: float = 0.1,
        encode_mode: str = "sample",
        renoise_residual: bool = True,
        alpha_index_shift: int | str = "auto",
        **family,
    ) -> None:
        super().__init__(renoise_residual=renoise_residual, alpha_index_shift=alpha_index_shift, **family)
        if not gluing_weight >= 0:
            raise UserError(f"solver.gluing_weight must be >= 0, got {gluing_weight}")
        if encode_mode not in ENCODE_MODES:
            raise UserError(f"solver.encode_mode must be one of {ENCODE_MODES}, got {encode_mode!r}")
        self.gluing_weight = float(gluing_weight)
        self.encode_mode = encode_mode

    def glued_image(self, x0: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """The image whose encoding ẑ0 should equal: ``x̂0`` itself (PSLD projects it first)."""
        return x0

    def loss(self, z0: torch.Tensor, x0: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """``ω·‖y − A(x̂0)‖₂ + γ·‖E(glued(x̂0)) − ẑ0‖₂`` per image ``[B]`` (the measurement draw comes first)."""
        loss = self.step_size * self.measurement_norm(x0, ctx)
        if self.gluing_weight == 0.0:
            return loss
        encoded = ctx.prior.encode(self.glued_image(x0, ctx), ctx.generators, mode=self.encode_mode).to(z0.dtype)
        gluing = batch_norm(encoded - z0)
        ctx.extras["dps/gluing"] = gluing.detach()
        return loss + self.gluing_weight * gluing
