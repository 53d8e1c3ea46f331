"""treg_exp.reporting.compare (scripts/compare_runs.py): the check that a refactor left every output as it was."""

import shutil

import torch
from PIL import Image

from treg_exp.reporting.compare import differences
from treg_exp.tracking.run_store import RunStore


def _run(root, seconds: float, psnr: float = 20.0, y_value: float = 0.5):
    store = RunStore(root, ["a"])
    store.claim({}, 0, 1, 1)
    store.save_png("recon", "a", Image.new("RGB", (4, 4), (10, 20, 30)))
    store.save_measurement("a", {"y": torch.full((3, 2, 2), y_value), "params": {}, "prompt": ""})
    store.write_row({"id": "a", "status": "ok", "psnr": psnr, "seconds": seconds})
    store.write_summary(lambda rows: {"metrics": {"psnr": {"mean": rows[0]["psnr"]}, "seconds": {"mean": seconds}}})
    (root / "run.log").write_text(f"took {seconds} s\n")


def test_wall_clock_aside_equal_runs_are_the_same_and_any_change_is_named(tmp_path):
    """Two runs that differ only in their seconds (rows, metrics.csv, summary, log) are the same; one changed PNG
    byte, metric, measurement value or missing file is named. Catches a comparison that ignores too much
    (passes anything) or too little (fails on timing)."""
    before, after = tmp_path / "before", tmp_path / "after"
    _run(before, seconds=1.0)
    _run(after, seconds=7.5)
    assert differences(before, after) == []

    other = tmp_path / "other_metric"
    _run(other, seconds=1.0, psnr=20.5)
    assert differences(before, other) == ["differs: metrics.csv", "differs: rows/a.json", "differs: summary.json"]

    other = tmp_path / "other_measurement"
    _run(other, seconds=1.0, y_value=0.25)
    assert differences(before, other) == ["differs: measurement/a.pt"]

    shutil.copytree(before, tmp_path / "changed")
    Image.new("RGB", (4, 4), (10, 20, 31)).save(tmp_path / "changed" / "recon" / "a.png")
    (tmp_path / "changed" / "failures.jsonl").unlink()
    assert differences(before, tmp_path / "changed") == [
        f"only in {before}: failures.jsonl",
        "differs: recon/a.png",
    ]
