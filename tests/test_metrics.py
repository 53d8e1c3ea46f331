"""Metrics: TReg protocol pieces, LPIPS, CLIP score, FID/KID with stand-in weights, missing-weights errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.test_weights import isolate_staging, stage_standins
from treg_exp.common.errors import UserError, WeightsNotFoundError
from treg_exp.metrics import MetricContext, MetricSuite, treg
from treg_exp.metrics import fid as fid_module
from treg_exp.metrics.image import PSNR, SSIM, MeasurementConsistency, psnr, ssim
from treg_exp.models import weights
from treg_exp.operators.base import LinearOperator


class HalfOperator(LinearOperator):
    """``A x = x / 2`` (a test operator with a known residual)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / 2


def images(seed: int, n: int = 2, size: int = 32) -> torch.Tensor:
    """``[n, 3, size, size]`` smooth random images quantised to 8 bits, in [−1, 1]."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1
    x = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return ((x.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1


def context(x: torch.Tensor, prompts: list[str] | None = None) -> MetricContext:
    return MetricContext(y=HalfOperator()(x), operator=HalfOperator(), prompts=prompts or [""] * x.shape[0])


def save_pngs(folder: Path, batch: torch.Tensor, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for x, name in zip(batch, names, strict=True):
        levels = ((x + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
        Image.fromarray(levels).save(folder / f"{name}.png")


def lowrank_frechet(mu1, sigma1, mu2, sigma2, rank: int = 16) -> float:
    """The Fréchet distance for covariances of rank ≤ ``rank`` without a d×d square root (tests only).

    ``Σ1 = Y (ΩᵀY)⁺ Yᵀ`` exactly for ``Y = Σ1 Ω`` (Nyström with ``rank`` probes), so with ``Σ1 = B Bᵀ``,
    ``tr √(Σ1 Σ2) = tr √(Bᵀ Σ2 B)``, a ``rank × rank`` problem. Checked against clean-fid's own formula below.
    """
    omega = np.random.default_rng(0).normal(size=(sigma1.shape[0], rank))
    y = sigma1 @ omega
    core_values, core_vectors = np.linalg.eigh(omega.T @ y)
    keep = core_values > core_values.max() * 1e-10
    b = y @ core_vectors[:, keep] / np.sqrt(core_values[keep])
    inner = np.linalg.eigvalsh(b.T @ sigma2 @ b).clip(min=0)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.sqrt(inner).sum())


@pytest.fixture
def staged(tmp_path_factory, tmp_path, monkeypatch) -> Path:
    """The stand-in weights (tests/test_weights.py), staged for one test."""
    return stage_standins(tmp_path_factory, tmp_path, monkeypatch)


@pytest.fixture
def fast_frechet(monkeypatch):
    """FID over 2048-d features of a handful of images: the exact low-rank formula instead of an 80 s sqrtm."""
    monkeypatch.setattr(fid_module, "frechet_distance", lowrank_frechet)


# --- TReg protocol pieces ----------------------------------------------------------------------------------
def test_minmax_stretch_is_what_torchvision_save_image_normalize_writes(tmp_path):
    from torchvision.utils import save_image

    x = images(3, n=1) * 0.4 + 0.1  # a low-contrast image: the stretch changes it a lot
    save_image(x, tmp_path / "official.png", normalize=True)
    official = torch.from_numpy(np.asarray(Image.open(tmp_path / "official.png"), dtype=np.float32))
    ours = (treg.minmax_stretch(x)[0] + 1) * 127.5
    assert torch.equal(ours.round().permute(1, 2, 0), official)
    assert float(ours.min()) == 0 and float(ours.max()) == 255
    # the clean-fid hook on uint8 arrays agrees with the tensor version on the same 8-bit image
    levels = ((x[0] + 1) * 127.5).round()
    stretched = torch.from_numpy(treg.minmax_stretch_uint8(levels.to(torch.uint8).permute(1, 2, 0).numpy()))
    expected = (treg.minmax_stretch(levels[None] / 127.5 - 1)[0] + 1) * 127.5
    assert torch.equal(stretched.float(), expected.round().permute(1, 2, 0))


def test_treg_protocol_psnr_ssim_score_stretched_images_and_consistency_adds_y_mse():
    recon, gt = images(1), images(2)
    suite = MetricSuite(image=[PSNR(), SSIM(), MeasurementConsistency()], protocol="treg")
    ctx = context(gt)
    values = suite.per_image(recon, gt, ctx)
    assert torch.allclose(values["psnr"], psnr(treg.minmax_stretch(recon), treg.minmax_stretch(gt)))
    assert torch.allclose(values["ssim"], ssim(treg.minmax_stretch(recon), treg.minmax_stretch(gt)))
    residual = (recon / 2 - ctx.y).flatten(1)
    assert torch.allclose(values["y_mse"], residual.pow(2).mean(1))
    assert torch.allclose(values["consistency"], residual.norm(dim=1) / ctx.y.flatten(1).norm(dim=1))
    # an affine change of contrast is undone by the stretch (up to 8-bit rounding), not under the standard protocol
    dimmed = ((recon * 0.5 + 1) * 127.5).round() / 127.5 - 1
    assert abs(float(suite.per_image(dimmed, gt, ctx)["psnr"][0] - values["psnr"][0])) < 0.5
    standard = MetricSuite(image=[PSNR(), MeasurementConsistency()])
    assert "y_mse" not in standard.per_image(recon, gt, ctx)
    assert float(standard.per_image(dimmed, gt, ctx)["psnr"][0]) != pytest.approx(float(values["psnr"][0]), abs=0.5)
    assert standard.departures() == [] and standard.describe()["protocol"] == "standard"
    assert treg.STRETCH in suite.departures() and treg.Y_MSE in suite.departures()


def test_unknown_protocol_is_a_user_error():
    with pytest.raises(UserError, match="metrics.protocol"):
        MetricSuite(protocol="paper")


# --- LPIPS -----------------------------------------------------------------------------------------------------
def test_lpips_vgg_matches_the_lpips_package_on_minus_one_one_and_treg_feeds_zero_one(staged):
    import lpips as lpips_package

    from treg_exp.metrics.lpips import LPIPS

    recon, gt = images(1), images(2)
    metric = LPIPS(net="vgg", batch_size=1)
    metric.prepare("cpu")
    ours = metric(recon, gt, context(gt))["lpips"]
    reference = lpips_package.LPIPS(net="vgg", verbose=False).eval()
    with torch.no_grad():
        expected = reference(recon, gt).flatten()
        expected_treg = reference((treg.minmax_stretch(recon) + 1) / 2, (treg.minmax_stretch(gt) + 1) / 2).flatten()
    assert ours.shape == (2,) and torch.allclose(ours, expected, atol=1e-6)
    assert float(metric(gt, gt, context(gt))["lpips"].abs().max()) < 1e-6
    suite = MetricSuite(image=[metric], protocol="treg")
    treg_values = suite.per_image(recon, gt, context(gt))["lpips"]
    assert torch.allclose(treg_values, expected_treg, atol=1e-6)
    assert not torch.allclose(treg_values, ours)
    assert treg.LPIPS_01 in suite.departures()


# --- CLIP score ------------------------------------------------------------------------------------------------
def test_clip_score_per_image_matches_torchmetrics_and_skips_empty_prompts(staged):
    from transformers import CLIPModel, CLIPProcessor

    from treg_exp.metrics.clip_score import CLIPScore

    recon = images(5, n=3)
    metric = CLIPScore()  # the Hub id, resolved in the staged HF_HOME with the Hub offline
    metric.prepare("cpu")
    prompts = ["a photo of ice cream", "fried rice", ""]
    values = metric(recon, recon, context(recon, prompts))["clip_score"]
    folder = str(Path(weights.stage_weights(staged)["HF_HOME"]) / "hub")
    snapshot = next(Path(folder).glob("models--openai--clip-vit-large-patch14/snapshots/*"))
    model, processor = CLIPModel.from_pretrained(snapshot).eval(), CLIPProcessor.from_pretrained(snapshot)
    levels = ((recon + 1) * 127.5).round().to(torch.uint8)
    for b in range(2):
        # the definition, by hand: 100 · max(cos(image embedding, text embedding), 0)
        with torch.no_grad():
            pixels = processor(images=[levels[b]], return_tensors="pt")["pixel_values"]
            tokens = processor(text=[prompts[b]], return_tensors="pt", padding=True)
            image = model.get_image_features(pixel_values=pixels)
            text = model.get_text_features(**tokens)
        image = image if isinstance(image, torch.Tensor) else image.pooler_output
        text = text if isinstance(text, torch.Tensor) else text.pooler_output
        expected = max(100 * float(torch.nn.functional.cosine_similarity(image, text)[0]), 0.0)
        assert float(values[b]) == pytest.approx(expected, abs=1e-4)
        assert 0 <= float(values[b]) <= 100
    assert math.isnan(float(values[2]))
    # one image's score does not depend on its batch neighbours
    alone = metric(recon[1:2], recon[1:2], context(recon[1:2], prompts[1:2]))["clip_score"]
    assert float(alone[0]) == pytest.approx(float(values[1]), abs=1e-5)


# --- FID / KID ---------------------------------------------------------------------------------------------------
def test_lowrank_frechet_helper_equals_cleanfid_frechet_distance():
    from cleanfid.fid import frechet_distance

    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(4, 12)), rng.normal(size=(5, 12)) + 0.3
    args = (a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert lowrank_frechet(*args) == pytest.approx(float(frechet_distance(*args)), rel=1e-6, abs=1e-8)


def test_fid_clean_mode_scores_ids_only_and_reference_folder_equals_stats_file(staged, fast_frechet, tmp_path):
    recon_dir, gt_dir, other_dir = tmp_path / "recon", tmp_path / "gt", tmp_path / "other"
    save_pngs(gt_dir, images(1, n=3), ["a", "b", "c"])
    save_pngs(recon_dir, images(1, n=3), ["a", "b", "c"])  # identical to gt
    save_pngs(other_dir, images(9, n=3), ["a", "b", "c"])
    metric = fid_module.FID(modes=["clean"], kid_subsets=10)
    metric.prepare("cpu")
    same = metric(recon_dir, gt_dir)
    assert set(same) == {"fid_clean", "kid_clean", "fid_images"} and same["fid_images"] == 3
    assert abs(same["fid_clean"]) < 1e-3
    different = metric(other_dir, gt_dir)
    assert different["fid_clean"] > 1e-2 and math.isfinite(different["kid_clean"])
    assert metric(other_dir, gt_dir)["kid_clean"] == different["kid_clean"]  # KID subsets are seeded
    # an extra sample recon/<id>_1.png is not part of the set
    save_pngs(other_dir, images(4, n=1), ["a_1"])
    assert metric(other_dir, gt_dir)["fid_clean"] == pytest.approx(different["fid_clean"], rel=1e-9)
    # the reference as a folder, and as a statistics file made from that folder, give the same FID
    stats = fid_module.save_reference_stats(gt_dir, tmp_path / "ref_{mode}.npz", mode="clean")
    assert stats.name == "ref_clean.npz"
    by_folder = fid_module.FID(modes=["clean"], reference=str(gt_dir), kid_subsets=10)
    by_stats = fid_module.FID(modes=["clean"], kid_subsets=10)
    MetricSuite(dataset=[by_stats], fid_reference=str(tmp_path / "ref_{mode}.npz"))  # metrics.fid_reference
    assert by_stats.reference == str(tmp_path / "ref_{mode}.npz")
    for m in (by_folder, by_stats):
        m.prepare("cpu")
    # gt/ still names the ids of the set (recon/a_1.png stays out); the reference replaces its images
    folder_values, stats_values = by_folder(other_dir, gt_dir), by_stats(other_dir, gt_dir)
    assert folder_values["fid_clean"] == pytest.approx(different["fid_clean"], rel=1e-9)
    assert stats_values["fid_clean"] == pytest.approx(different["fid_clean"], rel=1e-6)
    assert stats_values["kid_clean"] == pytest.approx(different["kid_clean"], rel=1e-6)


def test_fid_treg_protocol_stretches_before_the_features(staged, fast_frechet, tmp_path):
    gt = images(1, n=3)
    save_pngs(tmp_path / "gt", gt, ["a", "b", "c"])
    save_pngs(tmp_path / "recon", gt * 0.5, ["a", "b", "c"])  # lower contrast: the stretch undoes it
    standard = fid_module.FID(modes=["clean"], kid=False)
    suite = MetricSuite(dataset=[fid_module.FID(modes=["clean"], kid=False)], protocol="treg")
    standard.prepare("cpu")
    suite.prepare("cpu")
    plain = standard(tmp_path / "recon", tmp_path / "gt")["fid_clean"]
    stretched = suite.per_dataset(tmp_path / "recon", tmp_path / "gt")["fid_clean"]
    assert stretched < plain / 10
    assert treg.FID_STRETCH in suite.departures()
    with pytest.raises(UserError, match="metrics.fid_reference: not found: .*absent; it expects a folder of images"):
        MetricSuite(dataset=[fid_module.FID(modes=["clean"])], fid_reference=str(tmp_path / "absent"))


# --- missing weights ---------------------------------------------------------------------------------------------
def test_paper_metrics_without_weights_stop_in_prepare_with_the_staging_command(tmp_path, monkeypatch):
    from hydra.utils import instantiate

    from treg_exp.reporting.score import metrics_config

    empty = tmp_path / "weights"
    empty.mkdir()
    isolate_staging(monkeypatch, tmp_path / "cleanfid_tmp")
    weights.stage_weights(empty)
    suite = instantiate(metrics_config("paper"))
    with pytest.raises(WeightsNotFoundError) as info:
        suite.prepare("cpu")
    message = str(info.value)
    assert "\n" not in message and weights.VGG16_FILE in message and "scripts/fetch_weights.py" in message
    # each metric names its own file
    from treg_exp.metrics.clip_score import CLIPScore

    with pytest.raises(WeightsNotFoundError, match="clip-vit-large-patch14"):
        CLIPScore().prepare("cpu")
    with pytest.raises(WeightsNotFoundError, match=weights.PT_INCEPTION_FILE):
        fid_module.FID(modes=["legacy_pytorch"]).prepare("cpu")
    with pytest.raises(WeightsNotFoundError, match=weights.CLEANFID_INCEPTION_FILE):
        fid_module.FID(modes=["clean"]).prepare("cpu")
    # metrics=fast needs no weights
    instantiate(metrics_config("fast")).prepare("cpu")
