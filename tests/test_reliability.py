"""Reliability: every bad input is one line and changes nothing; one bad file or NaN never sinks a dataset; image
modes convert with their scale; non-finite metrics are reported; exit codes say what happened; kill -9 at any
moment resumes exactly; processes sharing a run directory never lose rows.

In-process runs use the exact Gaussian prior at 32 px; the process tests use real processes (tests/_processes.py).
"""

from __future__ import annotations

import colorsys
import errno
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from PIL import Image

from tests import _processes
from treg_exp.common.errors import OutputError
from treg_exp.data.images import ImageReadError, load_image, to_tensor
from treg_exp.experiment import app
from treg_exp.tracking import files

ROOT = Path(__file__).parents[1]
CONF = ROOT / "conf"
GAUSS = [
    "model=gaussian",
    "solver=posterior_mean",
    "task=gauss_deblur",
    "task.kernel_size=9",
    "task.kernel_sigma=1.5",
    "task.padding=circular",
    "data.resolution=32",
    "data.prompt=''",
    "metrics=fast",
]


def write_images(folder: Path, count: int, size: int = 32, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for k in range(count):
        path = folder / f"img_{k}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def compose_cfg(run_dir: Path, *overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    OmegaConf.set_struct(cfg, False)
    cfg.paths.run_dir = str(run_dir)
    return cfg


def run_app(capsys, run_dir: Path, *overrides: str) -> tuple[int, list[str]]:
    """``app.main`` in this process: its exit status and its ``error:`` lines on stderr."""
    capsys.readouterr()
    try:
        app.main(compose_cfg(run_dir, *overrides))
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.startswith("error:")]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def rows_of(run_dir: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (run_dir / "rows").glob("*.json")}


def without_seconds(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "seconds"}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    write_images(folder, 3)
    return folder


@pytest.fixture(scope="module")
def finished(tmp_path_factory, images) -> Path:
    """A finished 3-image run of the exact posterior mean on data=folder."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    cfg = compose_cfg(run_dir, *GAUSS, "data=folder", f"data.root={images}")
    app.main(cfg)
    assert json.loads((run_dir / "summary.json").read_text())["counts"]["ok"] == 3
    return run_dir


def folder_args(images: Path) -> list[str]:
    return [*GAUSS, "data=folder", f"data.root={images}"]


# --- every refused start: one line, exit 2, nothing written earlier changed -------------------------------------
def _captions(text: str, name: str):
    def setup(run_dir, tmp, monkeypatch):
        path = tmp / name
        path.write_text(text)
        return run_dir, [f"data.captions={path}"]

    return setup


def _parent_is_a_file(run_dir, tmp, monkeypatch):
    return run_dir / "table.md" / "again", []


def _subfolder_is_a_file(run_dir, tmp, monkeypatch):
    shutil.rmtree(run_dir / "diagnostics")
    (run_dir / "diagnostics").write_text("not a folder")
    return run_dir, []


def _disk_full(run_dir, tmp, monkeypatch):
    class Full:
        def __init__(self, handle):
            self.handle = handle

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    original = files._open_temp
    monkeypatch.setattr(files, "_open_temp", lambda path, binary: (lambda t, h: (t, Full(h)))(*original(path, binary)))
    return run_dir, []


def _unreadable_config(run_dir, tmp, monkeypatch):
    (run_dir / "config.yaml").write_text("data: [unclosed\n  - {")
    return run_dir, []


def _no_weights(run_dir, tmp, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp / "no_weights"))
    return run_dir, ["metrics=paper"]


REFUSALS = [
    # values, checked where they enter
    ("sigma_y<0", ["task.sigma_y=-0.1"], "task.sigma_y must be at least 0", None),
    ("resolution=0", ["data.resolution=0"], "data.resolution must be at least 1", None),
    ("seed=abc", ["seed=abc"], "seed must be an integer, got 'abc'", None),
    ("seed=1.5", ["seed=1.5"], "seed must be an integer, got 1.5", None),
    ("seed empty", ["seed="], "seed must be an integer, got an empty value", None),
    ("batch_size=two", ["batch_size=two"], "batch_size must be an integer", None),
    ("num_samples=0", ["num_samples=0"], "num_samples must be at least 1", None),
    ("device empty", ["device="], "device must be a non-empty string", None),
    # subset rules
    ("limit=0", ["data.limit=0"], "data.limit must be at least 1", None),
    ("limit<0", ["data.limit=-1"], "data.limit must be at least 1", None),
    ("stride<0", ["data.stride=-2"], "data.stride must be at least 1", None),
    ("unknown id", ["data.ids=[img_0,img_9]"], "data.ids: 1 id(s) not in", None),
    ("no ids", ["data.ids=[]"], "selects nothing", None),
    ("unknown class", ["data.classes=[cats]"], "no images of class(es) cats", None),
    ("shard.index", ["shard.count=2", "shard.index=2"], "shard.index must be in 0..1", None),
    ("shard.count=0", ["shard.count=0"], "shard.count must be at least 1", None),
    ("empty shard", ["shard.count=4", "shard.index=3"], "holds no image", None),
    (
        "captions lack ids",
        [],
        "lacks 2 of the 3 selected ids (img_1, img_2)",
        _captions("id,prompt\nimg_0,\n", "c.csv"),
    ),
    ("captions columns", [], "lacks the column(s) prompt (has: id, text)", _captions("id,text\nimg_0,a\n", "c.csv")),
    ("captions not a map", [], "must hold one JSON object", _captions('["img_0"]', "c.json")),
    # the environment
    ("parent is a file", [], "table.md: Not a directory; a file stands where a folder is needed", _parent_is_a_file),
    ("subfolder is a file", [], "diagnostics: Not a directory; a file stands where a folder", _subfolder_is_a_file),
    ("disk full", [], "the disk or quota is full", _disk_full),
    ("config.yaml unreadable", [], "config.yaml is unreadable", _unreadable_config),
    ("other settings", ["solver.tol=1e-3"], "other settings (solver.tol)", None),
    ("missing weights", [], "fetch_weights", _no_weights),
]


@pytest.mark.parametrize("overrides, message, setup", [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_a_refused_start_is_one_line_and_changes_nothing(
    overrides, message, setup, finished, images, tmp_path, capsys, monkeypatch
):
    """Each class of bad input (values, subset rules, captions, environment, settings, weights) must stop with
    exit 2 and one line naming the problem, before anything is written: catches a traceback, a silently
    different subset, a run that claims (rewrites config.yaml) or touches a finished directory on refusal, and a
    refusal that leaves the directory unusable for the corrected command."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    extra = []
    if setup is not None:
        run_dir_for_run, extra = setup(run_dir, tmp_path, monkeypatch)
    else:
        run_dir_for_run = run_dir
    before = snapshot(run_dir)
    code, errors = run_app(capsys, run_dir_for_run, *folder_args(images), *overrides, *extra)
    assert code == 2
    assert len(errors) == 1 and message in errors[0], errors
    assert snapshot(run_dir) == before
    if setup is None:  # the corrected command (the bad value left out) resumes the finished run in that directory
        assert run_app(capsys, run_dir, *folder_args(images)) == (0, [])


def test_a_truncated_row_is_solved_again_and_the_run_finishes(finished, images, tmp_path, capsys, caplog):
    """A row file cut short (copy, quota) must not crash the resume: catches a JSONDecodeError traceback and a
    row silently taken as done; the image is solved again, to the same bytes, and the others are not touched."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    row = run_dir / "rows" / "img_1.json"
    original = json.loads(row.read_text())
    row.write_text(row.read_text()[:25])
    untouched = (run_dir / "recon" / "img_0.png").stat().st_mtime_ns
    with caplog.at_level(logging.WARNING):
        code, errors = run_app(capsys, run_dir, *folder_args(images))
    assert code == 0 and not errors
    assert str(row) in caplog.text and "unreadable" in caplog.text
    assert without_seconds(json.loads(row.read_text())) == without_seconds(original)
    assert (run_dir / "recon" / "img_1.png").read_bytes() == (finished / "recon" / "img_1.png").read_bytes()
    assert (run_dir / "recon" / "img_0.png").stat().st_mtime_ns == untouched


def test_atomic_write_on_a_full_disk_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    """A write that fails half-way (ENOSPC) must leave the previous file whole and no temporary beside it, and
    say so in one line naming the path: catches in-place writes and leaked temporaries."""
    target = tmp_path / "summary.json"
    files.write_json(target, {"old": 1})

    def fail_half_way(handle):
        handle.write('{"new": ')
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputError) as error:
        files.atomic_write(target, fail_half_way)
    assert str(target) in str(error.value) and "disk or quota is full" in str(error.value)
    assert "\n" not in str(error.value)
    assert json.loads(target.read_text()) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_files_take_the_process_umask(images, tmp_path, capsys):
    """Results must be readable by the group on shared clusters: catches files created 0600 (mkstemp)."""
    old = os.umask(0o007)
    try:
        code, _ = run_app(capsys, tmp_path / "run", *folder_args(images), "data.limit=1")
    finally:
        os.umask(old)
    assert code == 0
    modes = {str(p.relative_to(tmp_path)): p.stat().st_mode & 0o777 for p in (tmp_path / "run").rglob("*")}
    assert modes and all(m == (0o770 if (tmp_path / p).is_dir() else 0o660) for p, m in modes.items()), modes


# --- data: one bad file never sinks a dataset ------------------------------------------------------------------
def test_unreadable_images_are_recorded_retried_and_counted(tmp_path, capsys):
    """Unreadable, truncated, empty, non-image and scale-less files must each be that image's failure — in
    failures.jsonl with id, path and error, counted in the summary, exit 3 with the count — while the good ones
    finish; a rerun retries only the failures, and a repaired file then succeeds. data.strict=true stops at the
    first with one line. Catches one bad file stopping the run (and every rerun) with a traceback."""
    folder = tmp_path / "images"
    good = write_images(folder, 2)
    (folder / "text.png").write_text("not an image")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "truncated.png").write_bytes(good[0].read_bytes()[:300])
    Image.fromarray(np.full((32, 32), 2.0, np.float32), "F").save(folder / "float.tiff")
    bad = {"empty": "empty.jpg", "float": "float.tiff", "text": "text.png", "truncated": "truncated.png"}
    run_dir = tmp_path / "run"
    args = [*GAUSS, "data=folder", f"data.root={folder}"]

    code, errors = run_app(capsys, run_dir, *args)
    assert code == 3 and len(errors) == 1 and "4 of 6 images failed" in errors[0]
    records = [json.loads(line) for line in (run_dir / "failures.jsonl").read_text().splitlines()]
    assert {r["id"]: Path(r["path"]).name for r in records} == bad
    assert all(r["stage"] == "load" and r["error"] for r in records)
    assert "values in [2, 2]" in next(r["error"] for r in records if r["id"] == "float")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["counts"] == {"seen": 6, "images": 6, "ok": 2, "failed": 4, "pending": 0}

    finished = (run_dir / "recon" / "img_0.png").stat().st_mtime_ns
    shutil.copy(good[1], folder / "truncated.png")  # repaired
    code, errors = run_app(capsys, run_dir, *args)
    assert code == 3 and "3 of 6 images failed" in errors[0]
    assert (run_dir / "recon" / "img_0.png").stat().st_mtime_ns == finished  # not solved again
    assert rows_of(run_dir)["truncated"]["status"] == "ok"

    code, errors = run_app(capsys, tmp_path / "strict", *args, "data.strict=true")
    assert code == 2 and len(errors) == 1 and "empty.jpg" in errors[0] and "data.strict" in errors[0]


def test_captions_fallback_goes_on_with_a_warning(images, tmp_path, capsys, caplog):
    """With data.captions_fallback set, ids missing from the captions get the prompt and a warning naming how
    many: catches the fallback silently hiding a mismatched captions file."""
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps({"img_0": ""}))
    with caplog.at_level(logging.WARNING):
        code, _ = run_app(
            capsys, tmp_path / "run", *folder_args(images), f"data.captions={captions}", "data.captions_fallback=prompt"
        )
    assert code == 0 and "lacks 2 of the 3 selected ids" in caplog.text


# --- image modes: each against a reference conversion -------------------------------------------------------
RNG = np.random.default_rng(1)
SIZE = 6
LEVELS = RNG.integers(1, 256, (SIZE, SIZE, 4), dtype=np.uint8)  # ≥ 1: premultiplied modes divide by alpha
PALETTE = RNG.integers(0, 256, 256 * 3, dtype=np.uint8)


def _palette_image(mode: str) -> Image.Image:
    image = Image.fromarray(LEVELS[..., 0], "L").convert("P")
    image.putpalette(PALETTE.tobytes())
    if mode == "PA":
        image = image.convert("PA")
        image.putalpha(Image.fromarray(LEVELS[..., 3], "L"))
    return image


def _reference_levels(mode: str) -> np.ndarray:
    """What each mode means, written from its definition: RGB levels 0..255 (floats) of LEVELS in that mode."""
    v = LEVELS.astype(np.float64)
    grey = np.repeat(v[..., :1], 3, axis=2)
    if mode in ("L", "LA"):
        return grey
    if mode == "1":
        return np.repeat((v[..., :1] >= 128) * 255.0, 3, axis=2)
    if mode in ("P", "PA"):
        return PALETTE.reshape(256, 3)[LEVELS[..., 0]].astype(np.float64)
    if mode in ("RGB", "RGBA", "RGBX"):
        return v[..., :3]
    if mode in ("RGBa", "La"):  # premultiplied: the stored colour / alpha
        colour = v[..., :3] if mode == "RGBa" else grey
        return np.clip(colour * 255 / v[..., 3:], 0, 255)
    if mode == "CMYK":
        return (255 - v[..., :3]) * (255 - v[..., 3:]) / 255
    if mode == "YCbCr":  # JPEG (JFIF) full-range BT.601
        y, cb, cr = v[..., 0], v[..., 1] - 128, v[..., 2] - 128
        rgb = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], axis=-1)
        return np.clip(rgb, 0, 255)
    if mode == "HSV":
        flat = [colorsys.hsv_to_rgb(*(p / 255)) for p in v[..., :3].reshape(-1, 3)]
        return np.asarray(flat).reshape(SIZE, SIZE, 3) * 255
    if mode == "LAB":  # scikit-image's CIE L*a*b* (D65) → sRGB
        from skimage.color import lab2rgb

        lab = np.stack([v[..., 0] * 100 / 255, v[..., 1] - 128, v[..., 2] - 128], axis=-1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # out-of-gamut colours are clipped (both sides)
            return lab2rgb(lab) * 255
    raise AssertionError(mode)


def _make(mode: str) -> Image.Image:
    if mode in ("P", "PA"):
        return _palette_image(mode)
    if mode == "1":
        return Image.fromarray(LEVELS[..., 0] >= 128)
    if mode == "La":
        return Image.merge("La", [Image.fromarray(LEVELS[..., 0], "L"), Image.fromarray(LEVELS[..., 3], "L")])
    if mode in ("RGBa", "RGBX"):
        return Image.fromarray(LEVELS, mode)
    channels = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4, "CMYK": 4, "YCbCr": 3, "HSV": 3, "LAB": 3}[mode]
    data = LEVELS[..., 0] if channels == 1 else LEVELS[..., :channels]
    if mode == "LA":
        return Image.merge("LA", [Image.fromarray(LEVELS[..., 0], "L"), Image.fromarray(LEVELS[..., 1], "L")])
    return Image.fromarray(np.ascontiguousarray(data), mode)


#: (mode, file format it is read from, or None: built in memory; tolerance in 8-bit levels)
EIGHT_BIT_MODES = [
    ("1", "PNG", 0),
    ("L", "PNG", 0),
    ("LA", "PNG", 0),
    ("P", "PNG", 0),
    ("PA", "TIFF", 0),
    ("RGB", "PNG", 0),
    ("RGBA", "PNG", 0),
    ("RGBX", None, 0),
    ("CMYK", "TIFF", 0.5),  # Pillow rounds the product
    ("YCbCr", "TIFF", 1),  # Pillow's fixed-point arithmetic
    ("HSV", None, 0.5),
    ("LAB", "TIFF", 0.51),  # float path: only the final 8-bit rounding of the reference differs
    ("RGBa", None, 1),  # integer un-premultiplication
    ("La", None, 0.5),
]


def _read(image: Image.Image, fmt: str | None, tmp_path: Path, mode: str) -> torch.Tensor:
    if fmt is None:
        return to_tensor(image, SIZE)
    path = tmp_path / f"image.{fmt.lower()}"
    image.save(path, format=fmt)
    with Image.open(path) as reopened:
        assert reopened.mode == mode  # the file really holds this mode
    return load_image(str(path), SIZE)


@pytest.mark.parametrize("mode, fmt, tolerance", EIGHT_BIT_MODES, ids=[m for m, _, _ in EIGHT_BIT_MODES])
def test_eight_bit_modes_convert_as_their_definition(mode, fmt, tolerance, tmp_path, caplog):
    """Every 8-bit mode Pillow reads must give the RGB of its definition (palette lookup, CMYK product, JPEG's
    YCbCr, HSV hexcone, CIE Lab, premultiplied alpha) in [−1, 1]; alpha is dropped with a warning. Catches a
    mode that loads 'ok' with wrong values (Pillow's own LAB → RGB is one)."""
    with caplog.at_level(logging.WARNING):
        got = _read(_make(mode), fmt, tmp_path, mode)
    expected = torch.from_numpy(_reference_levels(mode)).permute(2, 0, 1).float() / 127.5 - 1
    assert got.shape == (3, SIZE, SIZE)
    torch.testing.assert_close(got, expected, rtol=0, atol=(tolerance + 1e-3) / 127.5)
    assert ("alpha" in caplog.text) == (mode in ("LA", "PA", "RGBA", "RGBa", "La"))


HIGH_BIT = np.array([[0, 1, 255, 256], [1000, 32768, 65534, 65535]], dtype=np.uint16)


@pytest.mark.parametrize(
    "mode, fmt", [("I;16", "PNG"), ("I;16B", "TIFF"), ("I;16L", None), ("I;16N", None), ("I", "TIFF")]
)
def test_sixteen_bit_and_integer_modes_scale_by_65535(mode, fmt, tmp_path):
    """16-bit grey (and ``I``, which older Pillows use for 16-bit PNGs) must scale by 65535, not clip at 255:
    catches Pillow's convert('RGB'), which turns every value above 255 white."""
    if mode == "I":
        image = Image.fromarray(HIGH_BIT.astype(np.int32), "I")
    else:
        image = Image.new(mode, (4, 2))
        for (r, c), value in np.ndenumerate(HIGH_BIT):
            image.putpixel((c, r), int(value))
    path = tmp_path / f"image.{(fmt or 'x').lower()}"
    if fmt is not None:
        image.save(path, format=fmt)
        image = Image.open(path)
    levels = np.asarray(image.crop((1, 0, 3, 2)))  # to_tensor takes the centre square
    got = to_tensor(image, 2)
    expected = torch.from_numpy(levels.astype(np.float64) / 65535 * 2 - 1).float().expand(3, 2, 2)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_float_images_are_read_as_unit_range_and_anything_else_fails_the_image(tmp_path):
    """``F`` images are taken as [0, 1]; values outside it, NaN, and ``I`` values outside 0..65535 have no
    defined scale and must fail the image with a line naming the range — never clip silently."""
    values = np.array([[0.0, 0.25], [0.5, 1.0]], np.float32)
    path = tmp_path / "float.tiff"
    Image.fromarray(values, "F").save(path)
    torch.testing.assert_close(load_image(str(path), 2), torch.from_numpy(values * 2 - 1).expand(3, 2, 2))
    for array, mode, message in [
        (np.array([[0, 2.5]], np.float32), "F", "values in [0, 2.5]"),
        (np.array([[0, np.nan]], np.float32), "F", "non-finite"),
        (np.array([[-1, 70000]], np.int32), "I", "values in [-1, 70000]"),
    ]:
        with pytest.raises(ImageReadError, match=message.replace("[", r"\[").replace("]", r"\]")):
            to_tensor(Image.fromarray(array, mode), 1)


def test_small_images_are_upsampled_with_a_warning_naming_them(tmp_path, caplog):
    path = tmp_path / "small.png"
    Image.fromarray(np.zeros((8, 12, 3), np.uint8)).save(path)
    with caplog.at_level(logging.WARNING):
        assert load_image(str(path), 16).shape == (3, 16, 16)
    assert str(path) in caplog.text and "upsampled" in caplog.text


# --- NaN and non-finite metrics ---------------------------------------------------------------------------------
def test_a_nan_in_one_image_of_a_batch_fails_only_that_image(finished, images, tmp_path):
    """NaN injected into one reconstruction of a batch of 3: that image is a recorded failure with no PNGs,
    and the other two are bit-identical to the batch-size-1 run. Catches a NaN failing its whole batch."""
    cfg = compose_cfg(tmp_path, *folder_args(images), "batch_size=3")
    runner = app.build_runner(cfg, tmp_path)
    runner.progress = False
    solve = runner.solver.solve

    def poisoned(*args, **kwargs):
        x = solve(*args, **kwargs)
        x[1, 0, 5, 5] = float("nan")
        return x

    runner.solver.solve = poisoned
    summary = runner.run()
    assert summary["counts"] == {"seen": 3, "images": 3, "ok": 2, "failed": 1, "pending": 0}
    rows = rows_of(tmp_path)
    assert rows["img_1"]["status"] == "failed" and "non-finite" in rows["img_1"]["error"]
    assert not (tmp_path / "recon" / "img_1.png").exists() and not (tmp_path / "gt" / "img_1.png").exists()
    for image_id in ("img_0", "img_2"):
        for folder in ("recon", "gt", "measurement"):
            assert (tmp_path / folder / f"{image_id}.png").read_bytes() == (
                finished / folder / f"{image_id}.png"
            ).read_bytes()
        assert without_seconds(rows[image_id]) == without_seconds(rows_of(finished)[image_id])
    assert runner.shard_counts == {"images": 3, "ok": 2, "failed": 1}


def test_non_finite_metrics_are_counted_and_explained_not_averaged(images, tmp_path):
    """An exact reconstruction (denoising with σ_y = 0, solver returns y) has PSNR = +inf: the summary must say
    how many and why, hold null (strict JSON) instead of a NaN mean over zero images, and the table must show
    it. Catches non-finite values vanishing from the summary, or a NaN token in summary.json."""
    args = [a for a in folder_args(images) if not a.startswith("task")]
    cfg = compose_cfg(tmp_path, *args, "task=denoise", "task.sigma_y=0")
    runner = app.build_runner(cfg, tmp_path)
    runner.progress = False
    runner.solver.solve = lambda y, *args, **kwargs: y.clone()
    runner.run()
    text = (tmp_path / "summary.json").read_text()

    def no_constants(name):
        raise AssertionError(f"summary.json holds {name}")

    summary = json.loads(text, parse_constant=no_constants)
    assert summary["metrics"]["psnr"] == {"mean": None, "std": None, "n": 0, "non_finite": {"+inf": 3}}
    assert summary["non_finite"]["psnr"]["count"] == 3 and "identical" in summary["non_finite"]["psnr"]["why"]
    assert summary["metrics"]["ssim"]["n"] == 3 and summary["metrics"]["ssim"]["mean"] == pytest.approx(1.0)
    assert "+inf ×3" in app.format_table([("exact", summary)])


# --- exit codes and the multirun ------------------------------------------------------------------------------
def test_multirun_goes_on_past_a_refused_job_and_lists_it(images, tmp_path):
    """`-m` with one job refused (task.sigma_y<0): the next job still runs, the end lists the refused job and
    why, and the exit status is 2; with fail_fast=true the sweep stops at the refused job. Catches one job's
    config error ending a whole local multirun, and a sweep that exits 0 with failed jobs."""
    sweep, log = tmp_path / "sweep", tmp_path / "sweep.log"
    args = ["-m", *folder_args(images), "task.sigma_y=-1,0.01", f"hydra.sweep.dir={sweep}"]
    code = _processes.wait(_processes.start(args, log))
    output = log.read_text()
    assert code == 2, output[-3000:]
    assert "1 of 2 jobs did not finish" in output
    assert "task.sigma_y=-1): refused: task.sigma_y must be at least 0, got -1" in output
    (done,) = sweep.rglob("summary.json")  # job folders are <task>/<solver>/<settings> (the table sweeper)
    assert json.loads(done.read_text())["counts"]["ok"] == 3

    stopped, log = tmp_path / "stopped", tmp_path / "stopped.log"
    args = ["-m", *folder_args(images), "task.sigma_y=-1,0.01", "fail_fast=true", f"hydra.sweep.dir={stopped}"]
    assert _processes.wait(_processes.start(args, log)) == 2
    assert not list(stopped.rglob("summary.json")), log.read_text()[-3000:]


def _make_read_only(folder: Path) -> None:
    """Read-only even for root: the immutable attribute (``chattr +i``) as root, ``chmod 555`` otherwise."""
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(folder)], check=True)
    else:
        os.chmod(folder, 0o555)


def _make_writable(folder: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    os.chmod(folder, 0o755)


def test_an_unwritable_output_location_is_one_line_before_anything_starts(tmp_path):
    """A read-only output location must be one line naming it, before Hydra creates anything there. Catches a
    PermissionError traceback from Hydra's or the runner's first write."""
    location = tmp_path / "read_only"
    location.mkdir()
    _make_read_only(location)
    try:
        command = [sys.executable, str(ROOT / "run.py"), "model=gaussian", f"hydra.run.dir={location / 'run'}"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode == 2, result.stderr[-3000:]
        assert len(errors) == 1 and str(location) in errors[0] and "not writable" in errors[0]
        assert "Traceback" not in result.stderr and list(location.iterdir()) == []
    finally:
        _make_writable(location)


# --- concurrency: processes sharing one run directory ---------------------------------------------------------
def write_rows_and_tables(run_dir: str, prefix: str, count: int) -> None:
    """In a process of its own: ``count`` rows, each followed by the store's table rebuild (as after a batch)."""
    from treg_exp.tracking.run_store import RunStore

    store = RunStore(Path(run_dir))
    for k in range(count):
        store.write_row({"id": f"{prefix}_{k:03d}", "status": "ok"})
        store.write_tables()


def test_processes_rebuilding_the_tables_at_once_never_lose_a_row(tmp_path):
    """Four processes each write 25 rows and rebuild metrics.csv after each one, all at once: the final table
    must hold all 100 rows and no process may crash on another's temporary file. Catches unlocked
    read-then-write table rebuilds (the last writer's table lacks rows) and shared temp names."""
    processes = [_processes.call(write_rows_and_tables, str(tmp_path), f"p{k}", 25) for k in range(4)]
    assert [_processes.wait(p, timeout=120) for p in processes] == [0, 0, 0, 0]
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert len(lines) == 101 and len(set(lines)) == 101
    assert not list(tmp_path.rglob("*.tmp"))


def test_two_shards_and_a_duplicate_job_in_one_directory_leave_every_row(tmp_path):
    """Two processes started at once into one run directory — shard 0 of 2, and (a user's mistake) the whole
    set — must both exit 0 and leave metrics.csv, failures.jsonl, summary.json and table.md holding every image.
    Catches tables built from one process's rows only, and crashes on shared files."""
    run_dir = tmp_path / "run"
    base = [*GAUSS, "data=samples", "data.limit=4", f"hydra.run.dir={run_dir}"]
    jobs = [[*base, "shard.count=2", "shard.index=0"], [*base, "shard.count=1"]]
    processes = [_processes.start(args, tmp_path / f"job{k}.log") for k, args in enumerate(jobs)]
    codes = [_processes.wait(p) for p in processes]
    assert codes == [0, 0], [(tmp_path / f"job{k}.log").read_text()[-2000:] for k in range(2)]
    ids = ["astronaut", "coffee", "chelsea", "rocket"]
    lines = (run_dir / "metrics.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in lines[1:]] == ids
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (
        summary["counts"] == {"seen": 4, "images": 4, "ok": 4, "failed": 0, "pending": 0} and summary["covers_dataset"]
    )
    assert "| 4/4 |" in (run_dir / "table.md").read_text()
    assert (run_dir / "failures.jsonl").read_text() == ""
    for image_id in ids:
        Image.open(run_dir / "recon" / f"{image_id}.png").load()
    assert not list(run_dir.rglob("*.tmp"))


# --- kill -9 at several points, including during a write ------------------------------------------------------
def test_a_run_killed_at_any_point_resumes_to_the_same_results(tmp_path):
    """A model=tiny run SIGKILLed half-way through a PNG write, half-way through a table write after the first
    image, and at a random moment, then resumed, must end with the same per-image metrics and the same PNG and
    measurement bytes as an uninterrupted run, and no temporary files. Catches non-atomic writes, rows written
    before their images, and resumes that trust half-written files."""
    args = ["model=tiny", "solver=ddim", "solver.num_steps=3", "data.limit=2", "data.resolution=32"]
    reference = tmp_path / "reference"
    assert _processes.wait(_processes.start([*args, f"hydra.run.dir={reference}"], tmp_path / "ref.log")) == 0

    run_dir, log = tmp_path / "killed", tmp_path / "killed.log"
    argv = [*args, f"hydra.run.dir={run_dir}"]
    # writes: config, shard record, 3 .hydra files; then per image gt, measurement png, .pt, recon, diagnostics,
    # row, then metrics.csv and failures.jsonl
    assert _processes.wait(_processes.start(argv, log, kill_at_write=7)) == -signal.SIGKILL
    assert (run_dir / "gt" / "astronaut.png").is_file() and not (run_dir / "measurement" / "astronaut.png").exists()
    assert len(list((run_dir / "measurement").glob(".astronaut.png.*.tmp"))) == 1  # killed during that write
    assert _processes.wait(_processes.start(argv, log, kill_at_write=12)) == -signal.SIGKILL
    assert rows_of(run_dir)["astronaut"]["status"] == "ok" and not (run_dir / "metrics.csv").exists()
    # the second start removed the first one's half-written file; its own (metrics.csv's) is left
    assert [p.name.split(".")[1] for p in run_dir.rglob("*.tmp")] == ["metrics"]
    process = _processes.start(argv, log)
    time.sleep(random.Random(13).uniform(0.5, 3.0))
    if process.is_alive():
        os.kill(process.pid, signal.SIGKILL)
    _processes.wait(process)
    assert _processes.wait(_processes.start(argv, log)) == 0, log.read_text()[-3000:]

    def metrics(rows: dict) -> dict:  # every column but the wall-clock seconds (network counts too)
        return {i: without_seconds(r) for i, r in rows.items()}

    assert metrics(rows_of(run_dir)) == metrics(rows_of(reference))
    for folder in ("gt", "measurement", "recon", "diagnostics"):
        assert snapshot(run_dir / folder) == snapshot(reference / folder), folder
    assert json.loads((run_dir / "summary.json").read_text())["counts"]["ok"] == 2
    assert not list(run_dir.rglob("*.tmp"))
