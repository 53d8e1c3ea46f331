"""Resume-invariant results (issue 25, class 3): ``rows/``, ``metrics.csv`` and ``summary.json`` apart from
wall-clock times do not depend on how often a run was interrupted (SIGTERM, SIGKILL, at any file write), how its
images were split into shards, or how it grew (a larger ``data.limit`` in the same directory).

Every run is a real process (``tests/_processes.py``); a kill lands half-way through the n-th file write of the
process, so the points are exact and cover every stage of an image (ground truth, measurement, reconstruction,
row, tables). What is compared leaves out only ``seconds`` (wall-clock) and the fields that name the split itself:
``summary.shard`` and ``summary.shards_in_directory`` (which shard wrote the summary last and which shard records
exist) and ``summary.overrides`` (the last writer's command line).
"""

from __future__ import annotations

import csv
import json
import signal
from pathlib import Path

import pytest

from tests import _processes

COMMON = ["task=gauss_deblur", "data=samples", "data.resolution=32", "data.prompt=''", "metrics=fast"]
GAUSSIAN = ["model=gaussian", "solver=ddim", "solver.num_steps=3", *COMMON]
#: SD-shaped: a text encoder whose encodings are cached per process (the prompt and the null prompt)
TINY = ["model=tiny", "solver=ddim", "solver.num_steps=2", *COMMON]
#: fields that name the split or the command, not the results
SPLIT_FIELDS = ("shard", "shards_in_directory", "overrides")


def results(run_dir: Path) -> dict:
    """Everything in rows/, metrics.csv and summary.json except wall-clock times and the split's own fields."""
    rows = {p.stem: json.loads(p.read_text()) for p in sorted((run_dir / "rows").glob("*.json"))}
    with (run_dir / "metrics.csv").open(newline="") as handle:
        table = list(csv.DictReader(handle))
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["metrics"].pop("seconds")
    return {
        "rows": {i: {k: v for k, v in r.items() if k != "seconds"} for i, r in rows.items()},
        "metrics.csv": [{k: v for k, v in r.items() if k != "seconds"} for r in table],
        "summary": {k: v for k, v in summary.items() if k not in SPLIT_FIELDS},
    }


def start(args: list[str], run_dir: Path, log: Path, kill_at_write: int | None = None, signum: int = 0):
    return _processes.start([*args, f"hydra.run.dir={run_dir}"], log, kill_at_write, signum or signal.SIGKILL)


def run(args: list[str], run_dir: Path, log: Path, kill_at_write: int | None = None, signum: int = 0) -> int:
    return _processes.wait(start(args, run_dir, log, kill_at_write, signum))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, dict]:
    """Uninterrupted 4-image runs, one per prior."""
    folder = tmp_path_factory.mktemp("reference")
    found = {}
    for name, args in (("gaussian", GAUSSIAN), ("tiny", TINY)):
        code = run([*args, "data.limit=4"], folder / name, folder / f"{name}.log")
        assert code == 0, (folder / f"{name}.log").read_text()[-2000:]
        found[name] = results(folder / name)
    return found


# each start writes config.yaml, its shard record and 3 .hydra files, then per image gt, measurement (png, .pt),
# recon, [diagnostics], row, and metrics.csv and failures.jsonl: these points fall in every stage
KILLS = [
    ("sigkill in the first image, then in a row", "gaussian", [(7, signal.SIGKILL), (12, signal.SIGKILL)]),
    ("sigterm in a table, then in a png", "gaussian", [(13, signal.SIGTERM), (9, signal.SIGTERM)]),
    (
        "sigterm and sigkill, three starts",
        "gaussian",
        [(20, signal.SIGTERM), (6, signal.SIGKILL), (16, signal.SIGKILL)],
    ),
    ("tiny: sigkill after the first image", "tiny", [(13, signal.SIGKILL), (9, signal.SIGTERM)]),
]


@pytest.mark.parametrize("prior, kills", [k[1:] for k in KILLS], ids=[k[0] for k in KILLS])
def test_a_run_interrupted_at_several_points_ends_with_the_uninterrupted_results(prior, kills, reference, tmp_path):
    """Kills at several points (SIGTERM and SIGKILL, during a PNG, a row or a table), each followed by a restart,
    must end with the rows, metrics.csv and summary.json of an uninterrupted run. Catches the text encoder's
    passes (cached per process) charged again to the first image solved after a restart, a row written from a
    half-finished image, and a summary that counts a killed process's work twice."""
    args = [*(GAUSSIAN if prior == "gaussian" else TINY), "data.limit=4"]
    run_dir, log = tmp_path / "run", tmp_path / "run.log"
    for write, signum in kills:
        assert run(args, run_dir, log, write, signum) == -signum, log.read_text()[-2000:]
    assert run(args, run_dir, log) == 0, log.read_text()[-2000:]
    assert results(run_dir) == reference[prior]
    assert not list(run_dir.rglob("*.tmp"))


SPLITS = [
    ("two shards", [["shard.count=2", "shard.index=0"], ["shard.count=2", "shard.index=1"]]),
    ("three shards, last first", [["shard.count=3", f"shard.index={k}"] for k in (2, 0, 1)]),
    ("one shard of two, then the whole set", [["shard.count=2", "shard.index=1"], ["shard.count=1"]]),
    ("limit grown 1, 3, 4", [["data.limit=1"], ["data.limit=3"], []]),
]


def test_shards_started_at_once_end_with_the_results_of_one_run(reference, tmp_path):
    """Three shards of a model=tiny run started at the same moment into one directory (as a job array does) must
    end with the results of one uninterrupted run, whichever finishes last. Catches tables or a summary built from
    one process's rows, and set-up charged to each process's first image."""
    run_dir = tmp_path / "run"
    processes = [
        start([*TINY, "data.limit=4", "shard.count=3", f"shard.index={k}"], run_dir, tmp_path / f"{k}.log")
        for k in range(3)
    ]
    assert [_processes.wait(p) for p in processes] == [0, 0, 0]
    assert results(run_dir) == reference["tiny"]


@pytest.mark.parametrize("prior", ["gaussian", "tiny"])
@pytest.mark.parametrize("starts", [s[1] for s in SPLITS], ids=[s[0] for s in SPLITS])
def test_shard_splits_and_a_grown_limit_end_with_the_results_of_one_run(starts, prior, reference, tmp_path):
    """The same images split into shards (run one after another into one directory, in any order), or a run
    grown by a larger data.limit, must end with the results of one uninterrupted run. Catches per-process
    set-up charged to each shard's first image, and summaries that depend on which process wrote them."""
    base = GAUSSIAN if prior == "gaussian" else TINY
    run_dir, log = tmp_path / "run", tmp_path / "run.log"
    for extra in starts:
        limit = [] if any(e.startswith("data.limit") for e in extra) else ["data.limit=4"]
        assert run([*base, *limit, *extra], run_dir, log) == 0, log.read_text()[-2000:]
    assert results(run_dir) == reference[prior]
