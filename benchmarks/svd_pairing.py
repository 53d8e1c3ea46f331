"""What TReg's official SVD pairing changes, the numbers quoted in treg_exp/operators/svd.py's docstring.

    python benchmarks/svd_pairing.py [N]        # N px (default 512), σ = 5 blur, a Gaussian-prior draw

Prints the modes the official pairing zeroes or gives a scale, how much it changes the measurement of a prior draw
against the consistent operator, and how sensitive that is to the sort's tie-breaking and to a float32 SVD.
"""

from __future__ import annotations

import sys

import common  # noqa: F401 - puts the checkout on sys.path
import torch

from treg_exp.models.gaussian import GaussianPrior
from treg_exp.operators.kernels import svd_gaussian_taps
from treg_exp.operators.svd import blur_matrix, official_scales, truncated_svd


def main(n: int = 512) -> None:
    """Print what the official pairing changes at ``n`` px (σ = 5 blur)."""
    matrix = blur_matrix(n, svd_gaussian_taps(61, 5.0))
    u, kept, vh = truncated_svd(matrix, 0.03)
    own = torch.outer(kept, kept)
    official = official_scales(kept, kept, 3)
    print(
        f"1-D kept: {int((kept > 0).sum())} of {n}; "
        f"kept coefficients set to 0: {int(((own > 0) & (official == 0)).sum())}"
        f" of {3 * int((own > 0).sum())}; zero modes given a scale: {int(((own == 0) & (official > 0)).sum())},"
        f" up to {float(official[(own == 0).expand_as(official)].max()):.3f}"
    )
    x = (
        GaussianPrior(pixel_std=0.5, dtype="float64")
        .load("cpu")
        .sample(torch.zeros(1, 3, dtype=torch.float64), [torch.Generator().manual_seed(0)], n, n)[0]
    )

    def measure(u_: torch.Tensor, vh_: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        return u_ @ (scales * (vh_ @ x @ vh_.T)) @ u_.T

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).norm() / b.norm())

    y_official = measure(u, vh, official)
    print(f"official vs consistent measurement of a prior draw: {rel(y_official, measure(u, vh, own)):.3f}")
    # CPU sort (ties broken otherwise)
    products = own.reshape(-1)
    order = torch.sort(products, descending=True).indices
    cpu = torch.empty(3, n * n, dtype=torch.float64)
    for c in range(3):
        cpu[c, order] = products[order][(3 * torch.arange(n * n) + c) % (n * n)]
    print(f"ties broken by torch's CPU sort instead: {rel(measure(u, vh, cpu.reshape(3, n, n)), y_official):.3f}")
    u32, s32, vh32 = torch.linalg.svd(matrix.float())
    kept32 = torch.where(s32 >= 0.03, s32, torch.zeros_like(s32)).double()
    official32 = official_scales(kept32, kept32, 3)
    print(
        f"float32 SVD: scales moved {int(((official32 - official).abs() > 1e-5).sum())}; measurement changed "
        f"{rel(measure(u32.double(), vh32.double(), official32), y_official):.3f} (consistent: "
        f"{rel(measure(u32.double(), vh32.double(), torch.outer(kept32, kept32)), measure(u, vh, own)):.1e})"
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 512)
