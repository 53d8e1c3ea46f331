"""LPIPS (Zhang et al., CVPR 2018) with the ``lpips`` package: the papers use the VGG variant, version 0.1.

Weights: the backbone comes from torchvision (``TORCH_HOME/hub/checkpoints/vgg16-397923af.pth`` for VGG,
``alexnet-owt-7be5be79.pth`` for AlexNet; staged by ``scripts/fetch_weights.py``); the linear calibration layers
ship inside the ``lpips`` package (``lpips/weights/v0.1/vgg.pth``).
Inputs: the standard protocol feeds [−1, 1] images (the package's convention); ``protocol: treg`` feeds the min–max
stretched images in [0, 1] without remapping, as the official TReg evaluation did.
"""

from __future__ import annotations

import torch

from treg_exp.common.errors import UserError, WeightsNotFoundError
from treg_exp.metrics import treg
from treg_exp.metrics.base import ImageMetric, MetricContext
from treg_exp.models import weights

BACKBONE_FILES = {"vgg": weights.VGG16_FILE, "alex": weights.ALEXNET_FILE}


class LPIPS(ImageMetric):
    """Column ``lpips`` (``lpips_alex`` for AlexNet): LPIPS distance per image, lower is closer.

    Args:
        net: ``vgg`` (the papers') or ``alex``.
        batch_size: images per forward pass (VGG at 512 px holds several GB of activations).
    """

    def __init__(self, net: str = "vgg", batch_size: int = 4) -> None:
        if net not in BACKBONE_FILES:
            raise UserError(f"LPIPS net={net} is not one of {', '.join(BACKBONE_FILES)}")
        self.net = net
        self.batch_size = int(batch_size)
        self.column = "lpips" if net == "vgg" else f"lpips_{net}"
        self.model: torch.nn.Module | None = None
        self.device = torch.device("cpu")

    def use_protocol(self, protocol: str) -> list[str]:
        super().use_protocol(protocol)
        return [treg.STRETCH, treg.LPIPS_01] if protocol == "treg" else []

    def prepare(self, device: torch.device | str) -> None:
        import lpips  # imported here: the package prints and builds torchvision models at import of its modules

        path = weights.torch_checkpoint(BACKBONE_FILES[self.net])
        weights.require_file(path, f"LPIPS-{self.net}")
        try:
            model = lpips.LPIPS(net=self.net, version="0.1", verbose=False)
        except Exception as error:  # noqa: BLE001 - a failed download or a corrupt file: one line for the user
            raise WeightsNotFoundError(
                f"LPIPS-{self.net} could not load {path} ({type(error).__name__}: {error}); {weights.STAGE_HINT}"
            ) from None
        self.device = torch.device(device)
        self.model = model.eval().requires_grad_(False).to(self.device)

    @torch.no_grad()
    def __call__(self, recon: torch.Tensor, gt: torch.Tensor, context: MetricContext) -> dict[str, torch.Tensor]:
        """``recon``, ``gt``: ``[B, 3, H, W]`` in [−1, 1] → ``{column: [B]}``."""
        if self.model is None:
            self.prepare(self.device)
        if self.protocol == "treg":
            # the official evaluation passed [0, 1] images to a network trained on [−1, 1] inputs
            recon = (treg.minmax_stretch(recon.float()) + 1) / 2
            gt = (treg.minmax_stretch(gt.float()) + 1) / 2
        values = []
        for start in range(0, recon.shape[0], self.batch_size):
            a = recon[start : start + self.batch_size].float().to(self.device)
            b = gt[start : start + self.batch_size].float().to(self.device)
            values.append(self.model(a, b).flatten().cpu())
        return {self.column: torch.cat(values)}
