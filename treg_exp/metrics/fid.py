"""FID and KID of a run's reconstructions, with clean-fid (Parmar et al., CVPR 2022).

Columns (``summary.json``):

- ``fid``, ``kid``: clean-fid's ``legacy_pytorch`` mode — pytorch-fid's Inception weights and its bilinear resize
  to 299, which is how the papers computed FID;
- ``fid_clean``, ``kid_clean``: clean-fid's ``clean`` mode (TorchScript Inception, antialiased PIL bicubic resize).

KID (Bińkowski et al., 2018) is the unbiased polynomial-kernel MMD² of clean-fid, averaged over ``kid_subsets``
random subsets of ``min(n_recon, n_ref, kid_subset_size)`` images (drawn with a fixed seed here, so a run scores the
same every time); it is less biased than FID for the small sets of the papers (TReg: 250 images per class).

The reference set is the run's ``gt/`` folder unless ``reference`` names a folder of images or a ``.npz`` file of
statistics (``mu``, ``sigma`` and optionally ``feats`` for KID, as :func:`save_reference_stats` writes; a
``{mode}`` in the file name is replaced by the mode, since the two modes' features differ).
Only ``<id>.png`` files are scored: extra samples ``<id>_<k>.png`` of ``recon/`` are left out.

Weights: ``legacy_pytorch`` loads ``TORCH_HOME/hub/checkpoints/pt_inception-2015-12-05-6726825d.pth`` through
torch.hub; ``clean`` loads the TorchScript ``inception-2015-12-05.pt`` from clean-fid's fixed folder (``/tmp``),
where :func:`treg_exp.models.weights.stage_weights` places it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from cleanfid.fid import frechet_distance, get_files_features, kernel_distance

from treg_exp.common.errors import UserError, WeightsNotFoundError
from treg_exp.metrics import treg
from treg_exp.metrics.base import DatasetMetric
from treg_exp.models import weights

MODES = ("legacy_pytorch", "clean")
SUFFIX = {"legacy_pytorch": "", "clean": "_clean"}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
#: what a FID reference is (said when it is not found)
FID_REFERENCE_EXPECTED = "a folder of images or a .npz of Inception statistics ({mode} is replaced by the mode)"


def image_files(folder: Path, ids: set[str] | None = None) -> list[Path]:
    """The images of ``folder`` (sorted; only ``ids`` when given, matched on the file stem)."""
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    return [p for p in files if ids is None or p.stem in ids]


def build_extractor(mode: str, device: torch.device | str) -> Callable[[torch.Tensor], torch.Tensor]:
    """clean-fid's feature extractor for ``mode`` (images ``[B, 3, 299, 299]`` in [0, 255] → ``[B, 2048]``).

    Raises :class:`WeightsNotFoundError` when the mode's file is missing and downloads are off.
    """
    from cleanfid.features import feature_extractor
    from cleanfid.inception_torchscript import InceptionV3W

    device = torch.device(device)
    if mode == "legacy_pytorch":
        path = weights.torch_checkpoint(weights.PT_INCEPTION_FILE)
        what = "FID (clean-fid legacy_pytorch)"
        weights.require_file(path, what)
        try:
            return feature_extractor(name="pytorch_inception", device=device, use_dataparallel=False)
        except Exception as error:  # noqa: BLE001 - failed download or corrupt file: one line for the user
            raise WeightsNotFoundError(f"{what} could not load {path} ({error}); {weights.STAGE_HINT}") from None
    if mode == "clean":
        path = weights.cleanfid_inception_path()
        what = "FID (clean-fid clean)"
        # clean-fid itself would download into /tmp when missing; build its wrapper on the checked folder instead
        download = not weights.require_file(path, what)
        try:
            model = InceptionV3W(str(path.parent), download=download, resize_inside=False).to(device).eval()
        except Exception as error:  # noqa: BLE001
            raise WeightsNotFoundError(f"{what} could not load {path} ({error}); {weights.STAGE_HINT}") from None
        return model
    raise UserError(f"FID mode {mode} is not one of {', '.join(MODES)}")


def folder_features(
    files: Sequence[Path],
    extractor: Callable[[torch.Tensor], torch.Tensor],
    mode: str,
    device: torch.device | str,
    batch_size: int = 32,
    num_workers: int = 0,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """Inception features ``[N, 2048]`` of ``files`` with clean-fid's resize for ``mode`` (and ``transform`` first)."""
    return get_files_features(
        [str(f) for f in files],
        extractor,
        num_workers=num_workers,
        batch_size=batch_size,
        device=torch.device(device),
        mode=mode,
        custom_image_tranform=transform,
        verbose=False,
    )


def frechet(feats: np.ndarray, mu_ref: np.ndarray, sigma_ref: np.ndarray) -> float:
    """clean-fid's Fréchet distance between the Gaussian fit of ``feats`` and ``(mu_ref, sigma_ref)``."""
    if feats.shape[0] < 2 or np.ndim(sigma_ref) < 2:
        return float("nan")
    return float(frechet_distance(feats.mean(0), np.cov(feats, rowvar=False), mu_ref, sigma_ref))


def kid(feats: np.ndarray, ref: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> float:
    """clean-fid's KID with its subsets drawn from a generator seeded by ``seed`` (NumPy's global state is restored)."""
    if min(feats.shape[0], ref.shape[0]) < 2:
        return float("nan")
    state = np.random.get_state()
    np.random.seed(seed)  # kernel_distance draws its subsets from NumPy's global generator
    try:
        return float(kernel_distance(feats, ref, num_subsets=subsets, max_subset_size=subset_size))
    finally:
        np.random.set_state(state)


def save_reference_stats(
    folder: Path, out: Path, mode: str = "legacy_pytorch", device: str = "cpu", with_feats: bool = True
) -> Path:
    """Write ``mu``, ``sigma`` (and ``feats`` for KID) of the images in ``folder`` for ``FID(reference=out)``."""
    extractor = build_extractor(mode, device)
    feats = folder_features(image_files(folder), extractor, mode, device)
    arrays = {"mu": feats.mean(0), "sigma": np.cov(feats, rowvar=False)}
    if with_feats:
        arrays["feats"] = feats
    out = Path(str(out).replace("{mode}", mode))
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **arrays)
    return out


class FID(DatasetMetric):
    """FID (and KID) between ``recon/`` and ``gt/`` (or ``reference``) in each of ``modes``.

    Args:
        modes: clean-fid modes; ``legacy_pytorch`` → ``fid``/``kid``, ``clean`` → ``fid_clean``/``kid_clean``.
        kid: also compute KID.
        reference: ``null`` (the run's ``gt/``), a folder of images, or a ``.npz`` statistics file.
        batch_size, num_workers: clean-fid's loader settings.
        kid_subsets, kid_subset_size, seed: KID's subset sampling.
    """

    def __init__(
        self,
        modes: Sequence[str] = MODES,
        kid: bool = True,
        reference: str | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        kid_subsets: int = 100,
        kid_subset_size: int = 1000,
        seed: int = 0,
    ) -> None:
        self.modes = list(modes)
        for mode in self.modes:
            if mode not in MODES:
                raise UserError(f"FID mode {mode} is not one of {', '.join(MODES)}")
        self.kid = bool(kid)
        self.reference: str | None = None
        if reference not in (None, ""):
            self.set_reference(str(reference))
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.kid_subsets = int(kid_subsets)
        self.kid_subset_size = int(kid_subset_size)
        self.seed = int(seed)
        self.device = torch.device("cpu")
        self.extractors: dict[str, Callable] = {}

    def use_protocol(self, protocol: str) -> list[str]:
        super().use_protocol(protocol)
        return [treg.FID_STRETCH] if protocol == "treg" else []

    def set_reference(self, reference: str) -> None:
        """Compare with ``reference`` (a folder of images or a ``.npz``; ``{mode}`` is replaced) instead of ``gt/``."""
        if "{mode}" not in reference and not Path(reference).exists():
            raise UserError(f"metrics.fid_reference: not found: {reference}; it expects {FID_REFERENCE_EXPECTED}")
        self.reference = reference

    def prepare(self, device: torch.device | str) -> None:
        """Load every mode's Inception (so a missing file stops the run before the first image)."""
        self.device = torch.device(device)
        for mode in self.modes:
            self.extractors[mode] = build_extractor(mode, self.device)
        for mode in self.modes:
            path = self._reference_path(mode)
            if path is not None and not path.exists():
                raise UserError(f"metrics.fid_reference: not found: {path}; it expects {FID_REFERENCE_EXPECTED}")

    def _reference_path(self, mode: str) -> Path | None:
        return None if self.reference is None else Path(self.reference.replace("{mode}", mode))

    def __call__(self, recon_dir: Path, gt_dir: Path) -> dict[str, float]:
        """``{"fid", "kid", "fid_clean", "kid_clean", "fid_images"}`` from the ``<id>.png`` files of both folders."""
        # the ids are gt/'s (so recon/<id>_<k>.png extra samples stay out); with no gt/ (a reference set), all of recon/
        gt_files = image_files(gt_dir) if Path(gt_dir).is_dir() else []
        recon_files = image_files(recon_dir, {p.stem for p in gt_files} if gt_files else None)
        values: dict[str, float] = {"fid_images": float(len(recon_files))}
        if len(recon_files) < 2:
            warnings.warn(f"FID/KID need at least 2 images, {recon_dir} has {len(recon_files)}", stacklevel=2)
        transform = treg.minmax_stretch_uint8 if self.protocol == "treg" else None
        for mode in self.modes:
            if mode not in self.extractors:
                self.extractors[mode] = build_extractor(mode, self.device)
            extract = self.extractors[mode]

            def features(files: Sequence[Path], mode: str = mode, extract: Callable = extract) -> np.ndarray:
                return folder_features(
                    files, extract, mode, self.device, self.batch_size, self.num_workers, transform=transform
                )

            feats = features(recon_files) if recon_files else np.zeros((0, 2048))
            ref_feats, mu, sigma = self._reference(mode, gt_files, features)
            values[f"fid{SUFFIX[mode]}"] = frechet(feats, mu, sigma) if len(feats) else math.nan
            if self.kid:
                ok = ref_feats is not None and len(feats)
                score = kid(feats, ref_feats, self.kid_subsets, self.kid_subset_size, self.seed) if ok else math.nan
                values[f"kid{SUFFIX[mode]}"] = score
        return values

    def _reference(
        self, mode: str, gt_files: list[Path], features: Callable[[Sequence[Path]], np.ndarray]
    ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
        """``(feats or None, mu, sigma)`` of the reference set for ``mode``."""
        path = self._reference_path(mode)
        if path is None:
            feats = features(gt_files)
        elif path.is_dir():
            feats = features(image_files(path))
        else:
            stats = np.load(path)
            feats = stats["feats"] if "feats" in stats.files else None
            return feats, stats["mu"], stats["sigma"]
        if feats.shape[0] < 2:
            return feats, np.zeros(feats.shape[1]), np.zeros(())
        return feats, feats.mean(0), np.cov(feats, rowvar=False)
