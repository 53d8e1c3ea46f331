"""A dataset never shrinks silently (issue 25, class 1): every folder entry with an image suffix becomes a row or a
``failures.jsonl`` record (id, path, why) — a dangling link, a link loop, a FIFO, a socket, a folder of links into
an unmounted disk — and the summary and the console's last lines count what the run saw, solved and skipped.
Linked subfolders are followed once; a folder that cannot be listed is one line naming it.

Runs are in this process on the exact Gaussian prior at 32 px (a few images, a second each).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from tests.test_reliability import GAUSS, compose_cfg, write_images
from treg_exp.data import folder as folder_module
from treg_exp.experiment import app


def run(capsys, root: Path, run_dir: Path) -> tuple[int, str, str]:
    """``app.main`` on ``data=folder`` at ``root``: its exit status, stdout and stderr."""
    capsys.readouterr()
    try:
        app.main(compose_cfg(run_dir, *GAUSS, "data=folder", f"data.root={root}"))
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _dangling(root: Path, tmp: Path) -> None:
    (root / "gone.png").symlink_to(tmp / "unmounted" / "gone.png")


def _loop(root: Path, tmp: Path) -> None:
    (root / "loop.png").symlink_to(root / "loop.png")


def _fifo(root: Path, tmp: Path) -> None:
    os.mkfifo(root / "pipe.png")


def _socket(root: Path, tmp: Path) -> None:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(root / "sock.png"))
    server.close()  # the file stays


def _subfolder_of_broken_links(root: Path, tmp: Path) -> None:
    (root / "disk").mkdir()
    (root / "disk" / "far.jpg").symlink_to(Path("/nonexistent-mount") / "far.jpg")


BROKEN = [
    # (name, the bad entry, its id, words of why)
    ("dangling link", _dangling, "gone", "a dangling symbolic link"),
    ("link loop", _loop, "loop", "a symbolic link loop"),
    ("fifo", _fifo, "pipe", "a FIFO (named pipe), not a file"),
    ("socket", _socket, "sock", "a socket, not a file"),
    ("link into an unmounted disk, in a subfolder", _subfolder_of_broken_links, "disk__far", "dangling"),
]


@pytest.mark.parametrize("make, image_id, why", [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_an_entry_that_is_not_a_readable_file_is_a_failure_record_not_a_smaller_dataset(
    make, image_id, why, tmp_path, capsys
):
    """Two good images and one bad entry: the run must finish the two, record the third in failures.jsonl with its
    id, path and why, exit 3, and count 3 seen, 2 solved, 1 skipped in summary.json and on the console. Catches an
    entry dropped by the scan (exit 0 on fewer images), and a FIFO opened for reading (the run would hang)."""
    root = tmp_path / "images"
    write_images(root, 2)
    make(root, tmp_path)
    run_dir = tmp_path / "run"
    code, out, err = run(capsys, root, run_dir)
    assert code == 3, err
    records = [json.loads(line) for line in (run_dir / "failures.jsonl").read_text().splitlines()]
    assert len(records) == 1 and records[0]["id"] == image_id and records[0]["stage"] == "load"
    assert records[0]["path"].startswith(str(root)) and why in records[0]["error"], records
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["counts"] == {"seen": 3, "images": 3, "ok": 2, "failed": 1, "pending": 0}
    assert "seen 3 images, 3 in the run: solved 2, skipped 1" in out.strip().splitlines()[-1]


def test_linked_subfolders_are_followed_once_and_a_loop_back_is_not_walked_again(tmp_path, capsys):
    """A linked subfolder (data/extra -> elsewhere) is part of the dataset, as in torchvision's ImageFolder; a link
    back to the root (data/again -> data) must neither loop forever nor count the images twice."""
    root, elsewhere = tmp_path / "images", tmp_path / "elsewhere"
    write_images(root, 2)
    write_images(elsewhere, 1, seed=1)
    (root / "extra").symlink_to(elsewhere, target_is_directory=True)
    (root / "again").symlink_to(root, target_is_directory=True)
    (elsewhere / "up").symlink_to(root, target_is_directory=True)
    run_dir = tmp_path / "run"
    code, out, err = run(capsys, root, run_dir)
    assert code == 0, err
    assert sorted(p.stem for p in (run_dir / "rows").glob("*.json")) == ["extra__img_0", "img_0", "img_1"]
    assert json.loads((run_dir / "summary.json").read_text())["counts"]["seen"] == 3


@pytest.mark.parametrize("where", ["root", "subfolder"])
def test_a_folder_that_cannot_be_listed_is_one_line_naming_it(where, tmp_path, capsys, monkeypatch):
    """A folder the process may not list must stop the run with one line naming that folder, before anything is
    written. The tests run as root, which lists even a 0o000 folder, so os.scandir is made to refuse it (the same
    PermissionError an ordinary user gets); catches a scan that skips the folder's images without a word."""
    root = tmp_path / "images"
    write_images(root, 2)
    write_images(root / "private", 2, seed=1)
    refused = root if where == "root" else root / "private"
    scandir = os.scandir

    def refusing_scandir(path):
        if Path(path) == refused:
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(folder_module.os, "scandir", refusing_scandir)
    run_dir = tmp_path / "run"
    code, out, err = run(capsys, root, run_dir)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1, err
    assert f"cannot list {refused} (Permission denied)" in errors[0]
    assert not run_dir.exists()
