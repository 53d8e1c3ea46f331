"""``treg-exp status SWEEP_DIR`` (:mod:`treg_exp.reporting.status`) and the relaunch it prints
(``hydra.sweeper.only``)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from treg_exp.cli import main as cli
from treg_exp.reporting.status import ACTIVE_SECONDS, sweep_status

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_status_names_each_job_and_relaunches_exactly_the_unfinished_ones(tmp_path, capsys):
    """A 3-job sweep (2 shards of 1 image and a shard with none): status reads done 1/1, done 1/1 and refused.
    With shard 0's image row and its outcome record removed, an old folder reads ``stopped 0/1``, a fresh one
    ``running``; the printed command relaunches shard 0 and the refused shard only: shard 1's files are not
    rewritten, shard 0 ends ``done 1/1`` (catches a status that trusts the outcome record alone, or a relaunch
    command that reruns the whole sweep or another job)."""
    sweep = ["model=gaussian", "data.resolution=32", "data.limit=2", "metrics=fast", "solver=posterior_mean"]
    first = run(
        sys.executable, "run.py", "-m", *sweep, "shard.count=3", "shard.index=0,1,2", f"paths.output_root={tmp_path}"
    )
    assert first.returncode == 2, first.stderr[-3000:]  # shard 2 holds no image
    (sweep_dir,) = (tmp_path / "sweeps").iterdir()  # a plain multirun's own folder, named by its settings
    jobs = sweep_status(sweep_dir)
    assert [(j.state, j.done, j.total) for j in jobs] == [("done", 1, 1), ("done", 1, 1), ("refused", 0, 0)]
    shard0, shard1 = (sweep_dir / j.folder for j in jobs[:2])
    removed = sorted((shard0 / "rows").glob("*.json"))[-1]
    removed.unlink()
    record = next(p for p in (sweep_dir / "jobs").glob("*.json") if jobs[0].folder in p.read_text())
    record.unlink()
    old = time.time() - 2 * ACTIVE_SECONDS
    for path in shard0.rglob("*"):
        os.utime(path, (old, old))
    assert sweep_status(sweep_dir)[0].state == "stopped"
    assert sweep_status(sweep_dir, now=old + 1)[0].state == "running"
    assert cli(["status", str(sweep_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("stopped  0/1 images") and lines[1].startswith("done     1/1 images")
    assert lines[3] == "1 done, 1 stopped, 1 refused of 3 jobs"
    command = shlex.split(lines[-1])
    assert command[:2] == ["python", "run.py"] and jobs[0].folder in lines[-1] and jobs[1].folder not in lines[-1]
    untouched = {p: p.stat().st_mtime_ns for p in shard1.rglob("*") if p.is_file()}
    again = run(sys.executable, *command[1:])
    assert "relaunching 2 of 3 jobs" in again.stdout, again.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in shard1.rglob("*") if p.is_file()} == untouched
    assert [(j.state, j.done) for j in sweep_status(sweep_dir)] == [("done", 1), ("done", 1), ("refused", 0)]


def test_status_of_a_folder_without_sweep_json_is_one_line_and_exit_2(tmp_path, capsys):
    """Catches a traceback or an empty table for a folder that is not a sweep."""
    assert cli(["status", str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
