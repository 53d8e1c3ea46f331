"""W&B logger (offline / disabled / online without network) and the comparison grid. Nothing leaves the machine:
online cases point W&B at a closed loopback port."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from treg_exp.common.errors import UserError
from treg_exp.tracking.comparison import write_comparison
from treg_exp.tracking.wandb_logger import RUN_ID_FILE, WandbLogger, flatten, to_uint8

CLOSED_PORT = "http://127.0.0.1:9"


@pytest.fixture(autouse=True)
def wandb_sandbox(tmp_path, monkeypatch):
    """Every W&B file of a test under tmp_path (a run's in its run directory: WANDB_DIR unset); no key unless a
    test sets one."""
    monkeypatch.delenv("WANDB_DIR", raising=False)
    for key, sub in (
        ("WANDB_CACHE_DIR", "cache"),
        ("WANDB_CONFIG_DIR", "config"),
        ("WANDB_DATA_DIR", "data"),
    ):
        monkeypatch.setenv(key, str(tmp_path / sub))
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")


def image(seed: int, size: int = 16) -> torch.Tensor:
    return torch.rand(3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def log_two_images(logger: WandbLogger, run_dir: Path) -> None:
    logger.start(
        {"seed": 0, "solver": {"steps": 4}, "choices": {"solver": "treg", "task": "sr4", "data": "samples"}}, run_dir
    )
    for k in range(2):
        row = {"id": f"img{k}", "status": "ok", "prompt": f"prompt {k}", "psnr": 20.0 + k, "ssim": 0.5}
        images = {"measurement": image(k, 4), "reconstruction": image(10 + k), "ground_truth": image(20 + k)}
        logger.log_image(row, images)


def offline_run_folder(run_dir: Path) -> Path:
    (folder,) = (run_dir / "wandb").glob("offline-run-*")
    return folder


def test_to_uint8_rounds_like_the_saved_pngs_and_flatten_nests():
    x = torch.tensor([[[-1.0, 0.0], [1.0, 0.2]]]).expand(3, 2, 2)
    out = to_uint8(x)
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    assert out[..., 0].tolist() == [[0, 128], [255, 153]]  # round((x + 1) · 127.5)
    assert flatten({"metrics": {"psnr": {"mean": 1.5}}, "protocol": "standard", "ids": [1]}) == {
        "metrics/psnr/mean": 1.5,
        "protocol": "standard",
    }


def test_offline_run_holds_config_table_and_summary_and_keeps_its_id(tmp_path):
    run_dir = tmp_path / "run"
    logger = WandbLogger(mode="offline", max_images=1)
    log_two_images(logger, run_dir)
    run_id = logger.run.id
    assert logger.run.name == "treg_sr4_samples" and set(logger.run.tags) == {"treg", "sr4", "samples"}
    summary = {"metrics": {"psnr": {"mean": 20.5, "std": 0.7, "n": 2}}, "dataset_metrics": {"fid": 12.25}}
    logger.finish(summary)
    assert logger.run is None
    assert (run_dir / RUN_ID_FILE).read_text().strip() == run_id
    folder = offline_run_folder(run_dir)
    (table_file,) = (folder / "files" / "media" / "table").glob("images_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["id", "prompt", "measurement", "reconstruction", "ground_truth", "psnr", "ssim"]
    assert [row[0] for row in table["data"]] == ["img0"]  # max_images=1: only the first image's pictures
    assert table["data"][0][5] == 20.0
    keys = (b"dataset_metrics/fid", b"metrics/psnr/mean", b"image/psnr", b"12.25")
    records = b""
    for _ in range(100):  # W&B's service writes the records file in the background: wait for it (≤ 10 s)
        records = (folder / f"run-{run_id}.wandb").read_bytes()
        if all(key in records for key in keys):
            break
        time.sleep(0.1)
    for key in keys:
        assert key in records  # the summary, per-image metrics and the config went into the run's records

    # a resumed run directory continues the same W&B run
    again = WandbLogger(mode="offline")
    again.start({"seed": 0}, run_dir)
    assert again.run.id == run_id
    again.finish(None)


def test_disabled_mode_logs_nothing(tmp_path):
    logger = WandbLogger(mode="disabled")
    log_two_images(logger, tmp_path)
    logger.finish({"metrics": {}})
    assert not (tmp_path / "wandb").exists() and not (tmp_path / RUN_ID_FILE).exists()
    with pytest.raises(UserError, match="logger.mode"):
        WandbLogger(mode="sometimes")


def test_online_without_a_key_warns_and_falls_back_to_offline(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("WANDB_BASE_URL", CLOSED_PORT)
    logger = WandbLogger(mode="online", init_timeout=5)
    log_two_images(logger, tmp_path)
    assert "W&B start failed" in caplog.text and "wandb sync" in caplog.text
    assert logger.run is not None and logger.run.settings.mode == "offline"
    logger.finish({"metrics": {"psnr": {"mean": 1.0}}})
    assert offline_run_folder(tmp_path).is_dir()


def test_online_with_a_bad_key_and_no_network_is_bounded_and_the_run_goes_on(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("WANDB_BASE_URL", CLOSED_PORT)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    logger = WandbLogger(mode="online", init_timeout=3, offline_fallback=False)
    started = time.monotonic()
    log_two_images(logger, tmp_path)
    assert time.monotonic() - started < 30  # without init_timeout this waits ~100 s
    assert logger.run is None and "W&B start failed" in caplog.text
    assert not (tmp_path / RUN_ID_FILE).exists()
    caplog.clear()
    logger.finish(None)
    assert caplog.text == ""  # a quiet logger stays quiet


def test_finish_after_an_error_marks_the_run_failed_and_is_called_once(tmp_path):
    logger = WandbLogger(mode="offline")
    log_two_images(logger, tmp_path)
    calls = []
    original = logger.run.finish

    def finish(exit_code: int = 0, **kwargs) -> None:
        calls.append(exit_code)
        original(exit_code=exit_code, **kwargs)

    logger.run.finish = finish
    logger.finish(None)
    logger.finish(None)
    assert calls == [1]


def test_a_failed_first_image_keeps_the_metric_columns(tmp_path):
    logger = WandbLogger(mode="offline", max_images=4)
    logger.start({"seed": 0}, tmp_path)
    logger.log_image({"id": "bad", "status": "failed", "prompt": "p", "error": "boom"}, {})
    logger.log_image(
        {"id": "good", "status": "ok", "prompt": "p", "psnr": 21.0},
        {"measurement": image(0), "reconstruction": image(1), "ground_truth": image(2)},
    )
    logger.finish({"counts": {"ok": 1}})
    (table_file,) = (offline_run_folder(tmp_path) / "files" / "media" / "table").glob("images_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"][-1] == "psnr" and table["data"][-1][-1] == 21.0


def test_a_finish_that_hangs_is_abandoned_after_finish_timeout(tmp_path, caplog):
    logger = WandbLogger(mode="offline", finish_timeout=0.5)
    log_two_images(logger, tmp_path)
    original = logger.run.finish
    logger.run.finish = lambda **kwargs: time.sleep(30)  # an upload retrying against a server that went away
    started = time.monotonic()
    logger.finish({"counts": {"ok": 2}})
    assert time.monotonic() - started < 5
    assert "finish did not complete" in caplog.text
    original()


def test_comparison_grid_has_a_row_per_image_and_the_three_columns(tmp_path):
    size = 8
    colours = {"measurement": (255, 0, 0), "recon": (0, 255, 0), "gt": (0, 0, 255)}
    for folder, colour in colours.items():
        (tmp_path / folder).mkdir()
        for k in range(3):
            side = size // 2 if folder == "measurement" else size  # a super-resolution measurement is smaller
            Image.new("RGB", (side, side), colour).save(tmp_path / folder / f"id{k}.png")
    Image.new("RGB", (size, size), (9, 9, 9)).save(tmp_path / "recon" / "id0_1.png")  # extra sample: not a row
    (tmp_path / "gt" / "id3.png").write_bytes((tmp_path / "gt" / "id0.png").read_bytes())  # failed: no recon
    path = write_comparison(tmp_path, max_images=2)
    grid = np.asarray(Image.open(path))
    from treg_exp.tracking.comparison import CAPTION, GAP, MIN_TILE

    size = MIN_TILE  # 8-px tiles are enlarged 16x so the captions fit
    assert grid.shape == (CAPTION + 2 * (size + GAP) + GAP, 3 * size + 4 * GAP, 3)
    for r in range(2):
        top = CAPTION + GAP + r * (size + GAP)
        for c, colour in enumerate(colours.values()):
            left = GAP + c * (size + GAP)
            assert (grid[top : top + size, left : left + size] == colour).all()
    assert write_comparison(tmp_path / "empty") is None
