"""The local launcher (``hydra/launcher=local``, :mod:`hydra_plugins.treg_exp_launcher`): a fixed number of jobs
alive, never all of a sweep at once, and the cost estimate's jobs-at-once and wall-time lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

from hydra_plugins.treg_exp_launcher import jobs_at_once
from treg_exp.experiment.cost import wall_hours

ROOT = Path(__file__).resolve().parents[1]


def test_jobs_at_once_is_the_gpu_count_or_one_without_a_gpu():
    """Catches a default that starts every job (or more jobs than GPUs): 1 on a CPU-only machine, one job per GPU
    (or per ``gpus_per_node`` GPUs), and the config key raising it."""
    assert jobs_at_once(None, [], 1) == 1
    assert jobs_at_once(None, [], 0) == 1
    assert jobs_at_once(None, list(range(8)), 1) == 8
    assert jobs_at_once(None, list(range(8)), 2) == 4
    assert jobs_at_once(None, [3], 2) == 1
    assert jobs_at_once(3, [], 1) == 3


def test_wall_hours_fills_the_slot_that_frees_first():
    """Catches a wall time that divides the total evenly (4 jobs of 3, 1, 1, 1 h on 2 slots take 3 h, not 3 h/2) or
    ignores the slots."""
    assert wall_hours([1.0, 1.0, 1.0, 1.0], 2) == 2.0
    assert wall_hours([3.0, 1.0, 1.0, 1.0], 2) == 3.0
    assert wall_hours([1.0, 2.0], 1) == 3.0
    assert wall_hours([1.0, 2.0], 8) == 2.0


def job_processes(folder: str) -> int:
    """Alive job processes of submitit (``python -m submitit.core._submit <folder>``, one per running job) whose
    folder lies below ``folder`` (this test's own: another suite running at the same time is not counted)."""
    count = 0
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if "submitit.core._submit" in cmdline and any(folder in part for part in cmdline):
            count += 1
    return count


def test_local_sweep_never_has_more_jobs_alive_than_configured(tmp_path):
    """A 6-job sweep with ``jobs_at_once=2``: the process table never shows more than 2 job processes (catches the
    launcher starting every job at once, as submitit's own does) and shows 2 at some point (catches one that runs
    them one by one); every job finishes, and the cost estimate says how many run at once."""
    output = tmp_path / "treg_launcher_test"
    args = [
        sys.executable,
        str(ROOT / "run.py"),
        "-m",
        "hydra/launcher=local",
        "hydra.launcher.jobs_at_once=2",
        "model=gaussian",
        "data.resolution=32",
        "data.limit=3",
        "metrics=fast",
        "solver=posterior_mean,posterior_sample",
        "shard.count=3",
        "shard.index=range(3)",
        f"paths.output_root={output}",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    log = tmp_path / "sweep.log"
    with log.open("w") as out:
        process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        alive = []
        while process.poll() is None:
            alive.append(job_processes(str(output)))
            time.sleep(0.2)
    text = log.read_text()
    assert process.returncode == 0, text[-3000:]
    assert max(alive) == 2, alive
    assert "launcher: 2 of 6 jobs at once" in text
    records = [json.loads(p.read_text()) for p in (output / "sweeps").glob("*/jobs/*.json")]
    assert sorted(r["num"] for r in records) == list(range(6)) and {r["status"] for r in records} == {"ok"}
