"""The official TReg script's scoring protocol (``metrics.protocol=treg``), to compare with the TReg paper.

The official ``solve.py`` (TReg-inverse/TReg) saves the label and the reconstruction with
``torchvision.utils.save_image(x, normalize=True)`` (``utils/img_util.draw_img``): each image is min–max stretched
over all its pixels and channels to [0, 1] and stored as ``floor(255·v + 0.5)``. The repository has no scoring
script; what follows is the protocol as the issue describes it [unverified against the authors' scoring code]:
PSNR on those 8-bit values (data range 255), LPIPS-VGG fed the [0, 1] images (without mapping them to [−1, 1]),
FID with pytorch-fid's Inception features (clean-fid's ``legacy_pytorch`` mode reproduces them), and the
measurement error ``‖A x̂ − y‖² / m`` (``m`` = entries of ``y``). The metrics here apply :func:`minmax_stretch` to
what this project saved (the plain 8-bit PNGs, so the stretch quantises a second time: ±1 level against
stretching the float output), so that one run can be scored under both protocols.

Each metric lists the departures it introduces (``use_protocol``); the run's ``summary.json`` names them.
"""

from __future__ import annotations

import numpy as np
import torch

# The departures, named once so that summary.json says the same words for every metric that applies them.
STRETCH = "images min-max stretched per image and re-quantised to 8 bits (torchvision save_image(normalize=True))"
LPIPS_01 = "LPIPS fed [0, 1] images instead of [-1, 1]"
FID_STRETCH = "FID/KID features of the min-max stretched images"
Y_MSE = "adds y_mse = ||A x - y||^2 / m (on the unstretched reconstruction)"


def minmax_stretch(x: torch.Tensor) -> torch.Tensor:
    """What ``save_image(x, normalize=True)`` stores, back in [−1, 1].

    ``x``: ``[B, 3, H, W]`` in [−1, 1]. Each image is mapped by ``(x − min)/max(max − min, 1e−5)`` (torchvision's
    ``norm_ip``), then to the 8-bit level ``clamp(floor(255·v + 0.5), 0, 255)``, returned as ``level/127.5 − 1``.
    """
    flat = x.flatten(1)
    low = flat.min(dim=1).values.view(-1, 1, 1, 1)
    high = flat.max(dim=1).values.view(-1, 1, 1, 1)
    unit = (x - low) / (high - low).clamp_min(1e-5)
    levels = torch.floor(unit * 255 + 0.5).clamp(0, 255)
    return levels / 127.5 - 1.0


def minmax_stretch_uint8(image: np.ndarray) -> np.ndarray:
    """:func:`minmax_stretch` for an ``[H, W, 3]`` uint8 array (clean-fid's ``custom_image_tranform`` hook)."""
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
    levels = (minmax_stretch(x)[0] + 1.0) * 127.5
    return levels.round().to(torch.uint8).permute(1, 2, 0).numpy()
