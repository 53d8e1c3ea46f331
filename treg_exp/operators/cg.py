"""Batched conjugate gradient for symmetric positive-definite systems, one independent system per image."""

from __future__ import annotations

from collections.abc import Callable

import torch

from treg_exp.common.batch import batch_dot, per_image


def conjugate_gradient(
    apply_matrix: Callable[[torch.Tensor], torch.Tensor],
    rhs: torch.Tensor,
    x0: torch.Tensor,
    iters: int,
    tol: float = 0.0,
    preconditioner: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve ``M x = b`` per image by CG, started at ``x0`` (preconditioned CG when ``preconditioner`` is given).

    The stopping test runs before each iteration, on the current residual (also the initial one, so an image that
    starts converged does not move); the official TReg CG tests after each update instead, which differs only when
    ``x0`` already meets ``tol``.

    Each image has its own step sizes (per-image inner products), so a batch of B equals B solves of one. An image
    stops updating once its residual norm ``‖b − M x‖`` falls below ``tol`` (the official TReg code stops at 1e-4);
    the loop ends when all have, or after ``iters`` iterations.

    Args:
        apply_matrix: ``x ↦ M x`` for ``[B, ...]`` tensors, M symmetric positive-definite per image.
        rhs: ``b``, ``[B, ...]``.
        x0: initial guess, same shape.
        iters: maximum number of iterations.
        tol: absolute residual-norm tolerance per image.
        preconditioner: optional ``r ↦ K⁻¹ r`` with K symmetric positive-definite per image (K ≈ M); the
            tolerance still applies to the unpreconditioned residual ``‖b − M x‖``.

    Returns:
        ``(x, residual_norm)`` with ``residual_norm`` ``[B]`` the final ‖r‖ of each image.
    """
    x = x0.clone()
    r = rhs - apply_matrix(x)
    z = r if preconditioner is None else preconditioner(r)
    p = z.clone()
    rs = batch_dot(r, r)
    rz = rs if preconditioner is None else batch_dot(r, z)
    for _ in range(iters):
        active = rs.sqrt() >= tol if tol > 0 else torch.ones_like(rs, dtype=torch.bool)
        if not bool(active.any()):
            break
        mp = apply_matrix(p)
        denom = batch_dot(p, mp)
        alpha = torch.where(active & (denom > 0), rz / torch.where(denom > 0, denom, 1.0), 0.0)
        x = x + per_image(alpha, x) * p
        r = r - per_image(alpha, r) * mp
        rs_new = batch_dot(r, r)
        z = r if preconditioner is None else preconditioner(r)
        rz_new = rs_new if preconditioner is None else batch_dot(r, z)
        beta = torch.where(active & (rz > 0), rz_new / torch.where(rz > 0, rz, 1.0), 0.0)
        p = torch.where(per_image(active, p), z + per_image(beta, p) * p, p)
        rs = torch.where(active, rs_new, rs)
        rz = torch.where(active, rz_new, rz)
    return x, rs.sqrt()
