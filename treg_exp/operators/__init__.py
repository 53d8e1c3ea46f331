"""Forward operators ``y = A x + σ_y n`` of the papers (see ``conf/task/*.yaml``) and batched conjugate gradient."""

from treg_exp.operators.base import LinearOperator, compute_dtype
from treg_exp.operators.blur import Blur, MotionBlur, RandomGaussianBlur, gaussian_deblur, motion_deblur
from treg_exp.operators.cg import conjugate_gradient
from treg_exp.operators.denoise import Denoising
from treg_exp.operators.inpaint import Inpainting
from treg_exp.operators.sr import SeparableDownsample, super_resolution
from treg_exp.operators.svd import SeparableSVD, svd_downsample, svd_gaussian_blur

__all__ = [
    "Blur",
    "Denoising",
    "Inpainting",
    "LinearOperator",
    "MotionBlur",
    "RandomGaussianBlur",
    "SeparableDownsample",
    "SeparableSVD",
    "compute_dtype",
    "conjugate_gradient",
    "gaussian_deblur",
    "motion_deblur",
    "super_resolution",
    "svd_downsample",
    "svd_gaussian_blur",
]
