"""The run-directory store on its own (no model, no solver): what counts as finished, the order and content of the
tables, shard coverage, claiming, and the summary as the file says it."""

import csv
import json
import math
import os
import subprocess
import sys

from PIL import Image

from treg_exp.tracking.files import HOST
from treg_exp.tracking.run_store import FAILURE_FIELDS, ROW_FIRST_COLUMNS, RunStore

ORDER = ["b", "a", "d", "c"]  # dataset order, deliberately not sorted


def _png(store: RunStore, folder: str, name: str) -> None:
    store.save_png(folder, name, Image.new("RGB", (2, 2)))


def test_finished_means_an_ok_row_with_every_png(tmp_path):
    """Only an ``ok`` row whose gt and every reconstruction PNG exist is finished. Catches resuming past an image
    whose second sample or ground truth was never written (a job killed between the row and the PNGs), and
    skipping failed or unreadable rows."""
    store = RunStore(tmp_path, ORDER, num_samples=2)
    for image_id in ORDER:
        store.write_row({"id": image_id, "status": "ok"})
    for image_id in ("a", "b", "c"):
        _png(store, "gt", image_id)
        _png(store, "recon", image_id)
    _png(store, "recon", "a_1")  # a: both samples; b, c: the second is missing; d: no PNG at all
    store.write_failure("c", "p", "solve", ValueError("boom"))
    (tmp_path / "rows" / "b.json").write_text("{not json")
    assert store.finished_ids() == {"a"}
    assert RunStore(tmp_path, ORDER, num_samples=1).finished_ids() == {"a"}  # b unreadable, c failed, d no PNG


def test_tables_follow_dataset_order_and_list_failures_with_their_source(tmp_path):
    """metrics.csv holds every row in dataset order (ids outside the dataset after, sorted) with the fixed first
    columns, and failures.jsonl exactly the failed rows with their source path. Catches tables in file-name
    order, rows whose file name and id disagree being counted, and failures losing where the image came from."""
    store = RunStore(tmp_path, ORDER)
    store.sources["d"] = "/data/d.png"
    store.write_row({"id": "zz", "status": "ok", "psnr": 1.0})
    store.write_row({"id": "c", "status": "ok", "extra": 3, "psnr": 2.0})
    store.write_failure("d", "a prompt", "load", OSError("unreadable"))
    store.write_row({"id": "a", "status": "ok", "psnr": 3.0})
    (tmp_path / "rows" / "b.json").write_text(json.dumps({"id": "not-b", "status": "ok"}))
    store.write_tables()
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == ["a", "d", "c", "zz"]
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[: len(ROW_FIRST_COLUMNS)] == list(ROW_FIRST_COLUMNS) and "extra" in header
    failures = [json.loads(line) for line in (tmp_path / "failures.jsonl").read_text().splitlines()]
    assert failures == [{"id": "d", "path": "/data/d.png", "stage": "load", "error": "OSError: unreadable"}]
    assert tuple(failures[0]) == FAILURE_FIELDS


def test_shard_records_say_which_images_the_directory_must_hold(tmp_path):
    """Claiming shard 0 of 2 expects the even dataset positions and does not cover the set; claiming shard 1 of 2
    as well covers it. Catches coverage taken from the rows present (a finished shard would look complete) and
    shards taken as contiguous blocks instead of ``k % count == index``."""
    store = RunStore(tmp_path / "run", ORDER)
    store.claim({}, 0, 2, 2)
    assert store.expected_ids() == (["b", "d"], False)
    store.claim({}, 1, 2, 2)
    assert store.expected_ids() == (ORDER, True)
    assert store.shards_in_directory() == ["0-of-2", "1-of-2"]


def test_check_writes_nothing_and_claim_removes_only_dead_writers_temps(tmp_path):
    """``check`` leaves no trace (a refused start must not create the run directory); ``claim`` writes
    config.yaml and removes the temporary file of a dead process but not a live one's. Catches a check that
    creates folders, and a claim that deletes a concurrent writer's file."""
    run_dir = tmp_path / "run"
    store = RunStore(run_dir, ORDER)
    store.check()
    assert not run_dir.exists()
    (run_dir / "rows").mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = run_dir / "rows" / f".a.json.{HOST}.{dead.pid}.00.tmp"
    live = run_dir / "rows" / f".b.json.{HOST}.{os.getpid()}.00.tmp"
    stale.write_text("")
    live.write_text("")
    store.claim({"seed": 3}, 0, 1, 4)
    assert not stale.exists() and live.exists()
    assert "seed: 3" in (run_dir / "config.yaml").read_text()


def test_summary_returned_is_the_summary_on_disk(tmp_path):
    """``write_summary`` rebuilds the tables from every row and returns what summary.json says, non-finite numbers
    as ``None`` (strict JSON). Catches a returned summary holding ``inf`` while the file holds ``null``, and a
    summary written without the rows another process added."""
    store = RunStore(tmp_path, ORDER)
    RunStore(tmp_path, ORDER).write_row({"id": "a", "status": "ok", "psnr": math.inf})  # "another process"
    summary = store.write_summary(lambda rows: {"ids": [r["id"] for r in rows], "best": rows[0]["psnr"]})
    assert summary == {"ids": ["a"], "best": None}
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert (tmp_path / "metrics.csv").read_text().splitlines()[1].startswith("a,ok")
