"""Prepare a paper dataset from the user's download: the listed images, centre-cropped and resized, plus a manifest.

``scripts/prepare_ffhq.py``, ``prepare_imagenet.py`` and ``prepare_food101.py`` call :func:`main`::

    python scripts/prepare_ffhq.py --src /data/ffhq/images1024x1024 [--out $TREG_DATA] [--resolution 512 256 1024]
    python scripts/prepare_ffhq.py --verify [--out $TREG_DATA]       # check a prepared folder only

For every file of the dataset's list (``treg_exp/data/lists``) the source image is found anywhere under ``--src`` by
its name (FFHQ ``00017.*``, ImageNet ``ILSVRC2012_val_00025275.*``, Food-101 ``<class>/<id>.*``), centre-cropped
to its largest square and resized to the resolution with PIL's antialiased bicubic filter — the loader's own
(:func:`treg_exp.data.images.to_tensor`), so a prepared folder gives the pixels that loading the originals at that
resolution gives; the papers do not state their resampling [unverified], ``--resample`` picks another — and saved as
PNG. ``MANIFEST.sha256`` records each file's SHA-256 and size; the dataset checks them before a run, and
``--verify`` hashes them all. Either stops at the first missing or wrong file with one line naming it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from treg_exp.common.errors import UserError
from treg_exp.data.images import center_square
from treg_exp.data.listed import MANIFEST, file_sha256, first_mismatch, read_list, read_manifest, resolve_list

RESAMPLE = {
    "bicubic": Image.BICUBIC,
    "lanczos": Image.LANCZOS,
    "bilinear": Image.BILINEAR,
    "box": Image.BOX,
}
SOURCE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}


@dataclass(frozen=True)
class DatasetSpec:
    """What a paper dataset is: its list, its prepared folders per resolution, how its sources are named."""

    name: str
    list_name: str
    folders: dict[int, str]
    key_depth: int  # 1: sources matched by file stem; 2: by "<parent folder>/<stem>"
    download: str


DATASETS = {
    "ffhq": DatasetSpec(
        "ffhq",
        "ffhq_1k",
        {512: "ffhq512", 256: "ffhq256", 1024: "ffhq1024"},
        1,
        "FFHQ's images1024x1024 (NVlabs/ffhq-dataset; only 00000-00999 are needed)",
    ),
    "imagenet": DatasetSpec(
        "imagenet",
        "imagenet_p2l_1k",
        {512: "imagenet512"},
        1,
        "the ILSVRC2012 validation images (ILSVRC2012_img_val.tar, flat or in class folders)",
    ),
    "food101": DatasetSpec(
        "food101",
        "food101_treg",
        {512: "food101_512"},
        2,
        "Food-101 (food-101.tar.gz; its images/<class>/<id>.jpg)",
    ),
}


def source_key(relative: str, depth: int) -> str:
    """The name a listed file is found by among the sources (``fried_rice/1023430.png`` → ``fried_rice/1023430``)."""
    path = Path(relative)
    parts = [*path.parent.parts[-(depth - 1) :], path.stem] if depth > 1 else [path.stem]
    return "/".join(parts)


def index_sources(src: Path, depth: int) -> dict[str, Path]:
    """Every image under ``src`` by its lookup key (the first found, in sorted order, wins)."""
    found: dict[str, Path] = {}
    for root, dirs, files in os.walk(src):
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            if path.suffix.lower() in SOURCE_SUFFIXES:
                key = source_key(str(path.relative_to(src)), depth)
                found.setdefault(key, path)
    return found


def resize_square(image: Image.Image, resolution: int, resample: str = "bicubic") -> Image.Image:
    """RGB centre square of ``image`` at ``resolution``² (unchanged when it already is that size)."""
    square = center_square(image.convert("RGB"))
    if square.size != (resolution, resolution):
        square = square.resize((resolution, resolution), RESAMPLE[resample])
    return square


def write_manifest(folder: Path, entries: dict[str, tuple[str, int]], header: Sequence[str]) -> Path:
    lines = [f"# {line}" for line in header]
    lines += [f"{digest}  {size}  {name}" for name, (digest, size) in sorted(entries.items())]
    path = folder / MANIFEST
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
    return path


def prepare(
    spec: DatasetSpec,
    src: Path,
    out_root: Path,
    resolutions: Sequence[int],
    resample: str = "bicubic",
    list_file: str | None = None,
    progress: bool = True,
) -> list[Path]:
    """Write every listed image of ``spec`` at each resolution under ``out_root`` and its manifest.

    Raises :class:`UserError` naming the first listed image that is not under ``src``, before writing anything.
    """
    list_path = resolve_list(list_file or spec.list_name)
    names = [name for name, _ in read_list(list_path)]
    if not Path(src).is_dir():
        raise UserError(f"--src {src} is not a folder (download {spec.download})")
    sources = index_sources(Path(src), spec.key_depth)
    missing = [n for n in names if source_key(n, spec.key_depth) not in sources]
    if missing:
        raise UserError(
            f"{source_key(missing[0], spec.key_depth)}.* is not under {src} "
            f"({len(missing)} of the {len(names)} listed images missing; download {spec.download})"
        )
    folders = []
    for resolution in resolutions:
        if resolution not in spec.folders:
            raise UserError(f"{spec.name} is prepared at {sorted(spec.folders)} px, not {resolution}")
        folder = Path(out_root) / spec.folders[resolution]
        folder.mkdir(parents=True, exist_ok=True)
        manifest = read_manifest(folder)
        for count, name in enumerate(names, 1):
            target = folder / name
            if not (name in manifest and target.is_file() and target.stat().st_size == manifest[name][1]):
                target.parent.mkdir(parents=True, exist_ok=True)
                with Image.open(sources[source_key(name, spec.key_depth)]) as image:
                    resize_square(image, resolution, resample).save(target.with_suffix(".tmp.png"))
                target.with_suffix(".tmp.png").replace(target)
                manifest[name] = (file_sha256(target), target.stat().st_size)
            if progress and (count % 100 == 0 or count == len(names)):
                print(f"{folder}: {count}/{len(names)}", flush=True)
        header = [
            f"{spec.name} at {resolution} px from {src}: centre square, PIL {resample} (antialiased), PNG",
            f"list: {list_path.name}; format: <sha256>  <bytes>  <file>",
        ]
        write_manifest(folder, {n: manifest[n] for n in names}, header)
        folders.append(folder)
    return folders


def verify(spec: DatasetSpec, out_root: Path, resolutions: Sequence[int], list_file: str | None = None) -> list[str]:
    """Hash every prepared file against the manifest; returns one ``ok`` line per folder, raises on the first fault."""
    list_path = resolve_list(list_file or spec.list_name)
    names = [name for name, _ in read_list(list_path)]
    lines = []
    for resolution in resolutions:
        folder = Path(out_root) / spec.folders[resolution]
        manifest = read_manifest(folder)
        if not manifest:
            raise UserError(f"{folder / MANIFEST} not found: prepare the folder first (scripts/prepare_{spec.name}.py)")
        unlisted = [n for n in names if n not in manifest]
        if unlisted:
            raise UserError(f"{folder / unlisted[0]} is not in {MANIFEST} ({len(unlisted)} listed files are not)")
        problem = first_mismatch(folder, names, "sha256", manifest)
        if problem is not None:
            raise UserError(problem)
        lines.append(f"ok: {folder} holds the {len(names)} images of {list_path.name}, all matching {MANIFEST}")
    return lines


def every_tenth(list_10k: Path, out: Path) -> Path:
    """P2L's rule on another 10k list: sort its file names, keep index 0, 10, 20, …; write them as a list at ``out``.

    ``list_10k``: one image per line, a path whose last part is the file name (``/n01440764/ILSVRC2012_val_x.JPEG``
    and anything after whitespace are accepted, as in ctest10k.txt).
    """
    names = sorted({Path(line.split()[0]).name for line in Path(list_10k).read_text().splitlines() if line.strip()})
    picked = names[::10]
    out.write_text(
        f"# every 10th of the {len(names)} names of {Path(list_10k).name}, sorted (P2L's rule)\n"
        + "".join(f"{Path(n).stem}.png\n" for n in picked)
    )
    return out


def build_parser(spec: DatasetSpec) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"prepare_{spec.name}.py",
        description=f"Prepare {spec.name} for treg-exp: {spec.download} → {', '.join(spec.folders.values())}.",
    )
    parser.add_argument("--src", type=Path, help=f"the downloaded images: {spec.download}")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(os.environ.get("TREG_DATA", "data")),
        help="where the prepared folders go (paths.data_root; default $TREG_DATA or ./data)",
    )
    parser.add_argument("--resolution", type=int, nargs="+", default=sorted(spec.folders, reverse=True))
    parser.add_argument("--resample", choices=sorted(RESAMPLE), default="bicubic")
    parser.add_argument("--list", dest="list_file", help=f"another list file instead of {spec.list_name}.txt")
    parser.add_argument("--verify", action="store_true", help="only check the prepared folders (SHA-256 of each)")
    if spec.name == "imagenet":
        parser.add_argument(
            "--from-10k",
            type=Path,
            help="apply P2L's rule (every 10th after sorting by name) to this 10k list instead of the shipped 1k; "
            "the resulting list is written to OUT/imagenet512/p2l_1k_list.txt (give it to data.list_file)",
        )
    return parser


def main(name: str, argv: Sequence[str] | None = None) -> int:
    """The prepare script of dataset ``name``; exit status 2 with one ``error:`` line on the first problem."""
    spec = DATASETS[name]
    args = build_parser(spec).parse_args(argv)
    try:
        if getattr(args, "from_10k", None) is not None:
            folder = Path(args.out) / spec.folders[512]
            folder.mkdir(parents=True, exist_ok=True)
            args.list_file = str(every_tenth(args.from_10k, folder / "p2l_1k_list.txt"))
        if not args.verify:
            if args.src is None:
                raise UserError(f"--src is required (download {spec.download}), or --verify to check a folder")
            prepare(spec, args.src, args.out, args.resolution, args.resample, args.list_file)
        for line in verify(spec, args.out, args.resolution, args.list_file):
            print(line)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
