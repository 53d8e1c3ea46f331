"""``comparison.png``: measurement | reconstruction | ground truth for the first images of a run, one row each.

Built from the run directory's own PNGs (``measurement/``, ``recon/``, ``gt/``), so it can be drawn for any finished
run (``treg-exp score`` draws it too). A measurement smaller than the image (super-resolution) is enlarged with
nearest-neighbour so its pixels stay visible; tiles are separated by a white gap and captioned on top.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from treg_exp.tracking.files import save_image

COLUMNS = (("measurement", "measurement"), ("recon", "reconstruction"), ("gt", "ground truth"))
GAP = 4
CAPTION = 14
#: small images (64-px test runs) are enlarged by an integer factor to at least this width, so captions fit
MIN_TILE = 128


def comparison_ids(run_dir: Path, max_images: int) -> list[str]:
    """The first ``max_images`` ids (sorted) that have all three images."""
    run_dir = Path(run_dir)
    ids = sorted(p.stem for p in (run_dir / "gt").glob("*.png")) if (run_dir / "gt").is_dir() else []
    done = [i for i in ids if all((run_dir / folder / f"{i}.png").is_file() for folder, _ in COLUMNS)]
    return done[:max_images]


def write_comparison(run_dir: Path, max_images: int = 8, out: Path | None = None) -> Path | None:
    """Write ``run_dir/comparison.png`` (or ``out``) and return its path; ``None`` if no image is finished.

    The grid has ``len(ids)`` rows and 3 columns of ``H×W`` tiles (the ground truth's size), ``GAP`` pixels apart,
    under one caption row; tiles narrower than ``MIN_TILE`` are enlarged by an integer factor (nearest-neighbour).
    """
    run_dir = Path(run_dir)
    ids = comparison_ids(run_dir, max_images)
    if not ids:
        return None
    rows = []
    for image_id in ids:
        gt = Image.open(run_dir / "gt" / f"{image_id}.png").convert("RGB")
        tiles = []
        for folder, _ in COLUMNS:
            tile = Image.open(run_dir / folder / f"{image_id}.png").convert("RGB")
            if tile.size != gt.size:
                tile = tile.resize(gt.size, Image.NEAREST)
            tiles.append(tile)
        rows.append(tiles)
    width, height = rows[0][2].size
    scale = -(-MIN_TILE // width)  # ceil
    width, height = width * scale, height * scale
    grid = Image.new("RGB", (3 * width + 4 * GAP, CAPTION + len(rows) * (height + GAP) + GAP), "white")
    draw = ImageDraw.Draw(grid)
    for c, (_, caption) in enumerate(COLUMNS):
        draw.text((GAP + c * (width + GAP), 1), caption, fill="black")
    for r, tiles in enumerate(rows):
        for c, tile in enumerate(tiles):
            grid.paste(
                tile.resize((width, height), Image.NEAREST),
                (GAP + c * (width + GAP), CAPTION + GAP + r * (height + GAP)),
            )
    path = Path(out) if out is not None else run_dir / "comparison.png"
    save_image(path, grid)  # a temporary file of its own: processes sharing the folder never collide
    return path
