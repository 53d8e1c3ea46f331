"""PSLD: posterior sampling with latent diffusion (Rout et al., NeurIPS 2023; arXiv 2307.00619).

Source: the official code ``LituRout/PSLD``, ``stable-diffusion/ldm/models/diffusion/psld.py`` (``p_sample_ddim``,
the ``general_inverse`` and ``inpainting`` branches, which compute the same thing) driven by
``stable-diffusion/scripts/inverse.py`` and ``run/*.sh``. GML-DPS (:mod:`treg_exp.solvers.gml_dps`) with the
"gluing" image projected onto the measurement first. Per step of the LDPS loop (notation in
:mod:`treg_exp.solvers.ldps`)::

    ε̂, ẑ0 = ε(z_t, c_∅), Tweedie;   x̂0 = D(ẑ0)
    x̃  = Aᵀy + (I − AᵀA)·x̂0                             (``parallel_project + ortho_project``)
    z′ = DDIM(ẑ0, ε̂; η)
    z_{t−1} = z′ − ∇_{z_t} [ ω·‖y − A(x̂0)‖₂ + γ·‖E(x̃) − ẑ0‖₂ ]

Defaults (official): 1000 DDIM steps, η = 0, ω = ``step_size`` = 1, γ = ``gluing_weight`` = 0.1 (box inpainting
ω = 0.1, γ = 0.01, ``run/inverse_bip.sh``: ``conf/solver_task/psld_inpaint_box.yaml``), the encoder's posterior
sample, ``alpha_index_shift=auto`` (the code's 1000-step grid pairs UNet t = 1000 … 1 with ᾱ_999 … ᾱ_0; at other
step counts its sampler pairs t with ᾱ_t), the decoded final latent as output; SD v1.5 (``experiment=psld_sd15``;
the model is a config choice). Two official quirks, both on by default because they produced the published numbers,
each a flag:

- ``renoise_residual``: the residual is ``‖y − (A(x̂0) + σ_y n)‖`` with a fresh ``n`` each step
  (``meas_pred = noiser(meas_pred)``).
- ``gluing_transpose=official``: ``Aᵀ`` in ``x̃`` is the DPS code's ``operator.transpose``
  (``diffusion-posterior-sampling/guided_diffusion/measurements.py``), which is *not* the adjoint: the identity for
  blur, motion blur, inpainting and denoising, and nearest-neighbour upsampling for super-resolution. So for
  deblurring ``x̃ = y + x̂0 − A x̂0``. Here: the identity when the measurement has the image's shape, nearest
  upsampling for super-resolution (``SeparableDownsample``), an error otherwise (e.g. the SVD operators).
  ``gluing_transpose=adjoint`` uses the operator's true adjoint, the paper's formula (P2L ran it so, via ``jax.vjp``).
  For inpainting the two agree (``y`` is zero in the holes here; the official ``y`` carries noise there).

The TReg tables' PSLD rows ran other code: the TReg repository's ``psld`` (``TReg-inverse/TReg``,
``solver/latent_diffusion.py``, ``LDPSSolver.sample``, 200 steps from ``configs/solver/psld.yaml``). The same loop
with γ = 0.5 and ω = 1 hard-coded, the true adjoint ``A.At`` in the gluing image, the residual not renoised, ᾱ_{t−1}
with the network's ``t`` at every step count, CFG between its null prompt and the prompt at the caller's scale
(``solve.py`` default 4.0), and ``D(ẑ0)`` of the last step as output; those settings are
``conf/solver_protocol/psld_treg_repo.yaml`` (``protocol=treg_repo``). At ω = 1 that code runs the null branch only;
here ω = 1 is ``ε(c)`` (the project-wide CFG).

Other departures: the family's (per-image norms, one CFG row for the empty prompt, float32 state). The adjoint path
needs a differentiable ``A.adjoint`` (every operator here has a closed form; the generic VJP adjoint is refused).

Cost per image: per step one UNet row, one decode and one encode, each with its backward pass, and two operator
applications more than GML-DPS; one output decode. Diagnostics: as GML-DPS (``dps/gluing`` = ``‖E(x̃) − ẑ0‖``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from treg_exp.common.errors import UserError
from treg_exp.operators.base import LinearOperator
from treg_exp.operators.sr import SeparableDownsample
from treg_exp.solvers.gml_dps import GMLDPS
from treg_exp.solvers.ldps import StepContext

TRANSPOSES = ("official", "adjoint")


def official_transpose(v: torch.Tensor, image_shape: torch.Size) -> torch.Tensor:
    """The DPS code's ``operator.transpose``: identity on image-shaped ``v``, nearest upsampling of a smaller image.

    Args:
        v: ``[B, 3, h, w]`` a measurement-space tensor; image_shape: ``[B, 3, H, W]``.
    """
    if tuple(v.shape) == tuple(image_shape):
        return v
    return F.interpolate(v, size=tuple(image_shape[-2:]), mode="nearest")


class PSLD(GMLDPS):
    """PSLD (module docstring). Args as :class:`GMLDPS`, and:

    Args:
        gluing_transpose: ``official`` (the DPS code's transpose, default) or ``adjoint`` (the paper's ``Aᵀ``).
    """

    name = "PSLD"

    def __init__(self, gluing_transpose: str = "official", **gml_dps) -> None:
        super().__init__(**gml_dps)
        if gluing_transpose not in TRANSPOSES:
            raise UserError(f"solver.gluing_transpose must be one of {TRANSPOSES}, got {gluing_transpose!r}")
        self.gluing_transpose = gluing_transpose

    def check(self, y: torch.Tensor, prior, operator: LinearOperator, image_shape) -> None:
        super().check(y, prior, operator, image_shape)
        if self.gluing_transpose == "adjoint":
            if type(operator).adjoint is LinearOperator.adjoint:
                raise UserError(
                    f"PSLD: {type(operator).__name__} has no closed-form adjoint to differentiate through; "
                    "use solver.gluing_transpose=official"
                )
            return
        if tuple(y.shape[1:]) == tuple(image_shape[1:]):
            return  # blur, inpainting, denoising: the DPS code's transpose is the identity
        if isinstance(operator, SeparableDownsample) and y.dim() == 4:
            return  # super-resolution: nearest upsampling by the factor
        raise UserError(
            f"PSLD: the official transpose is defined for image-shaped measurements and super-resolution, not "
            f"{type(operator).__name__} (measurements {tuple(y.shape)}); use solver.gluing_transpose=adjoint"
        )

    def glued_image(self, x0: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """``x̃ = Aᵀy + (I − AᵀA)·x̂0`` with the configured ``Aᵀ``, ``[B, 3, H, W]``."""
        y = ctx.y.to(x0.dtype)
        if self.gluing_transpose == "adjoint":
            return ctx.operator.adjoint(y).to(x0.dtype) + x0 - ctx.operator.normal(x0).to(x0.dtype)
        predicted = ctx.operator(x0).to(x0.dtype)
        return official_transpose(y, x0.shape) + x0 - official_transpose(predicted, x0.shape)
