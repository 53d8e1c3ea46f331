"""Refusals (issue 25, classes 5 and 6): a refused start leaves its run directory exactly as it was, including the
checks that need the prior's geometry; a directory that holds no row takes new settings; a path that does not
exist is reported as not found, with the path and what its key expects.

Runs are in this process (``app.main`` on a composed config, as ``tests/test_reliability.py`` does), so the
directory listing is the app's own writing: Hydra's ``run.log`` of a command-line start is Hydra's record of the
attempt and not compared.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.test_reliability import GAUSS, compose_cfg, run_app, snapshot, write_images
from treg_exp.common.errors import UserError
from treg_exp.experiment.config_types import check_types

TINY = ["model=tiny", "solver=ddim", "solver.num_steps=2", "data.limit=1", "data.prompt=''"]
GAUSS_ONE = [*GAUSS, "data.limit=1"]
#: the exact Gaussian prior without the task (for cases that choose one)
GAUSS_NO_TASK = [*(a for a in GAUSS if not a.startswith("task")), "data.limit=1"]

#: (name, the command's overrides, the refused value, the corrected value, words of the error line)
GEOMETRY = [
    (
        "latent factor",
        TINY,
        "data.resolution=36",
        "data.resolution=32",
        "not a multiple of the prior's latent factor 8",
    ),
    (
        "sr divisibility",
        [*GAUSS_NO_TASK, "task=sr4"],
        "data.resolution=30",
        "data.resolution=32",
        "divisible by the SR",
    ),
    (
        "sr8 on a 4-multiple",
        [*GAUSS_NO_TASK, "task=sr8"],
        "data.resolution=36",
        "data.resolution=32",
        "divisible by the SR factor 8",
    ),
]


def _left_by_a_killed_start(run_dir: Path) -> None:
    """What a start killed before its first row leaves: config.yaml of other settings, a shard record, .hydra/."""
    (run_dir / "shards").mkdir(parents=True)
    (run_dir / "shards" / "0-of-1.json").write_text('{"index": 0, "count": 1, "images": 1}')
    (run_dir / "config.yaml").write_text("seed: 5\nsolver: {_target_: other}\n")
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "config.yaml").write_text("seed: 5\n")


@pytest.mark.parametrize("before", ["absent", "killed start"])
@pytest.mark.parametrize("args, refused, corrected, message", [g[1:] for g in GEOMETRY], ids=[g[0] for g in GEOMETRY])
def test_a_geometry_refusal_leaves_the_directory_as_it_was_and_the_corrected_command_runs_there(
    args, refused, corrected, message, before, tmp_path, capsys
):
    """A size the prior or the task cannot take must be refused from the config, before config.yaml, .hydra/ or
    shards/ are written (catches the check running only once the first image is solved), and the corrected
    command must then run in the same directory (catches "holds results computed with other settings" for a
    directory without a single row)."""
    run_dir = tmp_path / "run"
    if before == "killed start":
        _left_by_a_killed_start(run_dir)
    listing = snapshot(run_dir) if run_dir.exists() else None
    code, errors = run_app(capsys, run_dir, *args, refused)
    assert code == 2 and len(errors) == 1 and message in errors[0], errors
    assert (snapshot(run_dir) if run_dir.exists() else None) == listing
    code, errors = run_app(capsys, run_dir, *args, corrected)
    assert (code, errors) == (0, [])
    assert json.loads((run_dir / "summary.json").read_text())["counts"]["ok"] == 1


def test_a_directory_with_rows_still_refuses_other_settings(tmp_path, capsys):
    """The reuse of a row-less directory must not open a directory with results to other settings: catches a
    check that looks at config.yaml's presence only."""
    run_dir = tmp_path / "run"
    assert run_app(capsys, run_dir, *GAUSS_ONE)[0] == 0
    before = snapshot(run_dir)
    code, errors = run_app(capsys, run_dir, *GAUSS_ONE, "seed=7")
    assert code == 2 and "other settings (seed)" in errors[0]
    assert snapshot(run_dir) == before


def test_an_adm_size_multiple_is_refused_before_anything_is_written(tmp_path, capsys):
    """ADM needs sides that are multiples of 2^(levels−1) (32 at 256 px): refused from the config, nothing written."""
    run_dir = tmp_path / "run"
    code, errors = run_app(
        capsys, run_dir, "model=adm_ffhq256_random", "solver=dps", "data.limit=1", "data.resolution=40"
    )
    assert code == 2 and "multiples of 32, got 40x40" in errors[0]
    assert not run_dir.exists()


# --- class 6: a missing path is "not found", with the path and what the key expects ----------------------------
def _folder(tmp_path: Path) -> list[str]:
    write_images(tmp_path / "images", 2)
    return [*GAUSS, "data=folder", f"data.root={tmp_path / 'images'}"]


MISSING = [
    # (name, overrides given tmp and the folder args, key, words of what it expects)
    ("data.ids file", lambda t, f: [*f, f"data.ids={t}/ids.txt"], "data.ids", "a text file of ids"),
    ("data.ids relative", lambda t, f: [*f, "data.ids=lists/ids.txt"], "data.ids", "a text file of ids"),
    ("captions", lambda t, f: [*f, f"data.captions={t}/captions.csv"], "data.captions", "columns id, prompt"),
    ("data root", lambda t, f: [*GAUSS, "data=folder", f"data.root={t}/nowhere"], "data.root", "folder of images"),
    ("listed root", lambda t, f: [*GAUSS, "data=ffhq", f"data.root={t}/ffhq"], "data.root", "prepared folder"),
    ("list file", lambda t, f: [*GAUSS, "data=ffhq", f"data.list_file={t}/l.txt"], "data.list_file", "relative"),
    ("swaps file", lambda t, f: [*f, "prompt=mismatch", f"prompt.swaps_file={t}/s.json"], "prompt.swaps_file", "csv"),
    (
        "mask file",
        lambda t, f: [*GAUSS_NO_TASK, "task=inpaint_box", f"task.mask_file={t}/m.npz"],
        "task.mask_file",
        ".npz",
    ),
    (
        "adm checkpoint",
        lambda t, f: [*f, "model=adm_ffhq256", "solver=dps", f"model.checkpoint={t}/adm.pt", "data.resolution=256"],
        "model.checkpoint",
        "state dict",
    ),
    ("sd model folder", lambda t, f: [*f, "model=sd15", f"model.model_id={t}/sd15"], "model.model_id", "diffusers"),
    (
        "fid reference",
        lambda t, f: [*f, "metrics=paper", f"metrics.fid_reference={t}/ref.npz"],
        "metrics.fid_reference",
        "Inception statistics",
    ),
]


@pytest.mark.parametrize("overrides, key, expects", [m[1:] for m in MISSING], ids=[m[0] for m in MISSING])
def test_a_missing_path_is_reported_as_not_found_with_the_key_and_what_it_expects(
    overrides, key, expects, tmp_path, capsys
):
    """A path that does not exist must be one line saying "not found" with the path, the key and what the key
    expects; exit 2; nothing written. Catches a missing ids file read as an unknown id, and a missing folder or
    checkpoint reported as a Hub or download problem."""
    run_dir = tmp_path / "run"
    args = overrides(tmp_path, _folder(tmp_path))
    code, errors = run_app(capsys, run_dir, *args)
    assert code == 2 and len(errors) == 1, errors
    assert "not found" in errors[0] and f"{key}:" in errors[0] and expects in errors[0], errors[0]
    given = next(a.split("=", 1)[1] for a in args if a.startswith(f"{key}="))
    assert Path(given).name in errors[0]
    assert not run_dir.exists()


# --- class 2: every value of its type, from the constructors' type hints -----------------------------------------
TYPE_ERRORS = [
    # (override, the line's words); the run is the exact Gaussian posterior mean unless the override picks another
    ("solver=ddim solver.num_steps=2.5", "solver.num_steps must be an integer, got 2.5 (a float)"),
    ("solver=ddim solver.num_steps='3'", "solver.num_steps must be an integer, got '3' (a string)"),
    ("solver=ddim solver.num_steps=true", "solver.num_steps must be an integer, got true (a bool)"),
    ("solver=ddim solver.num_steps=[1,2]", "solver.num_steps must be an integer, got [1, 2] (a list)"),
    ("task.sigma_y=abc", "task.sigma_y must be a number, got 'abc' (a string)"),
    ("task.sigma_y='0.1'", "task.sigma_y must be a number, got '0.1' (a string)"),
    ("task.kernel_sigma=[1.5]", "task.kernel_sigma must be a number, got [1.5] (a list)"),
    ("data.resolution=32.0", "data.resolution must be an integer, got 32.0 (a float)"),
    ("data.limit=[1,2]", "data.limit must be an integer or null, got [1, 2] (a list)"),
    ("data.prompt=[a]", "data.prompt must be a string or null, got ['a'] (a list)"),
    ("data.strict=2", "data.strict must be true or false, got 2 (an integer)"),
    ("fail_fast=2", "fail_fast must be true or false, got 2 (an integer)"),
    ("seed='7'", "seed must be an integer, got '7' (a string)"),
    ("shard.count=2.0", "shard.count must be an integer, got 2.0 (a float)"),
    ("batch_size={a:1}", "batch_size must be an integer, got {'a': 1} (a mapping)"),
    ("model.pixel_std=x", "model.pixel_std must be a number, got 'x' (a string)"),
    ("model.dtype=[a]", "model.dtype must be a string"),
    ("+solver.tolerance=1", "solver.tolerance is not a key of treg_exp.solvers.oracles.PosteriorMean"),
    ("metrics.protocol=[treg]", "metrics.protocol must be a string, got ['treg'] (a list)"),
    ("prompt=mismatch prompt.swaps_file=[a]", "prompt.swaps_file must be a string or null, got ['a'] (a list)"),
]


@pytest.mark.parametrize("override, message", TYPE_ERRORS, ids=[t[0] for t in TYPE_ERRORS])
def test_a_value_of_the_wrong_type_is_one_line_before_anything_is_built(override, message, tmp_path, capsys):
    """Each kind of mistyped value (a float, a string, a bool or a list for an integer; a string or a list for a
    number; a list for a string; an integer for a bool; a key nothing takes) in each part of the config (solver,
    task, data, prior, run keys) must stop with exit 2 and one line naming the key, the value and the type, with
    nothing written. Catches `solver.num_steps=2.5` running 2 steps while config.yaml records 2.5."""
    run_dir = tmp_path / "run"
    code, errors = run_app(capsys, run_dir, *GAUSS_ONE, *override.split())
    assert code == 2 and len(errors) == 1 and message in errors[0], errors
    assert not run_dir.exists()


class NewSolver:
    """A constructor another branch might add: its keys are checked from its hints, with no list to update."""

    def __init__(
        self,
        num_steps: int = 10,
        eta: float = 0.0,
        clip: bool = True,
        names: list[str] | None = None,
        where: os.PathLike | None = None,
    ):
        self.num_steps = num_steps


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("num_steps", 2.5, "solver.num_steps must be an integer, got 2.5 (a float)"),
        ("eta", "0.5", "solver.eta must be a number, got '0.5' (a string)"),
        ("clip", 2, "solver.clip must be true or false, got 2 (an integer)"),
        ("names", "a", "solver.names must be a list of strings or null, got 'a' (a string)"),
        ("names", [1], "solver.names must be a list of strings or null, got [1] (a list)"),
        ("num_steps", 3, None),
        ("eta", 1, None),
        ("names", ["a", "b"], None),
        ("where", "/data/x", None),  # a type YAML cannot spell takes a string naming it
        ("where", 3, "solver.where must be PathLike or null, got 3 (an integer)"),
    ],
)
def test_the_types_come_from_the_constructor_hints_of_any_target(key, value, message):
    """A class no list in the code names is checked by its type hints alone: catches a hand-written schema that a
    solver or prior added on another branch would bypass, and a check that refuses a well-typed value (an int
    for a float, a list of strings)."""
    cfg = compose_cfg(Path("unused"), *GAUSS_ONE)
    cfg.solver = {"_target_": f"{__name__}.NewSolver", key: value}
    if message is None:
        check_types(cfg)
    else:
        with pytest.raises(UserError) as caught:
            check_types(cfg)
        assert str(caught.value) == message
