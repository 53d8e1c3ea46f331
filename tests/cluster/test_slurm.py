"""Sweeps through ``hydra/launcher=slurm`` against a real one-node SLURM (``make test-cluster``, which starts
``slurmctld``, ``slurmd`` and ``slurmdbd`` with ``scripts/slurm.sh`` and exports ``SLURM_CONF``).

Not collected by ``make test`` (``norecursedirs`` in pyproject.toml). Skipped only where SLURM's commands are not
installed (``scripts/slurm.sh`` installs them when run as root); with the commands present, a controller that does not
answer is a failure. Every job asks for 1 CPU, 2 GB and no GPU; the node offers 2 CPUs, so at most 2 jobs run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from treg_exp.reporting import make_table

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    shutil.which("sbatch") is None or shutil.which("sacct") is None,
    reason="SLURM's commands are not installed (scripts/slurm.sh installs slurm-wlm, slurmdbd and munge as root)",
)

#: resources of every job on the test node
SLURM = [
    "hydra/launcher=slurm",
    "hydra.launcher.gpus_per_node=0",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=2",
]
GAUSSIAN = ["model=gaussian", "data.resolution=32", "metrics=fast"]
#: one job of ~1.2 s per image on this machine (exact Gaussian score at 128 px, 1000 DDIM steps)
SLOW_IMAGES = ["model=gaussian", "data=gaussian", "data.resolution=128", "solver=ddim", "solver.num_steps=1000"]


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def start(*args: str, log: Path) -> subprocess.Popen:
    """``python run.py *args`` in the background, stdout and stderr into ``log``."""
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, env=environment(), stdout=out, stderr=out
        )


def finish(process: subprocess.Popen, timeout: float = 300) -> int:
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise


def slurm(*command: str) -> str:
    return subprocess.run(command, capture_output=True, text=True, check=True, env=environment()).stdout


def running_jobs() -> int:
    return len(slurm("squeue", "-h", "-t", "RUNNING", "-o", "%i").split())


def own_sweep(output_root: Path) -> Path:
    """The one plain multirun's folder below ``output_root`` (``sweeps/<its settings>/``)."""
    (sweep_dir,) = (output_root / "sweeps").iterdir()
    return sweep_dir


def sweep_job_ids(sweep_dir: Path) -> list[str]:
    """SLURM ids of the sweep's jobs (``<array>_<task>``), from submitit's folders."""
    return sorted(p.name for p in (sweep_dir / ".submitit").iterdir() if p.is_dir() and "_" in p.name)


def accounting(job_ids: list[str], timeout: float = 30) -> dict[str, str]:
    """``{job id: State}`` from ``sacct`` (slurmdbd), waiting until every job has a final state there."""
    deadline = time.monotonic() + timeout
    while True:
        lines = slurm("sacct", "-X", "-P", "-n", "-o", "JobID,State", "-j", ",".join(job_ids)).split()
        states = dict(line.split("|", 1) for line in lines)
        final = all(states.get(j) not in (None, "PENDING", "RUNNING", "REQUEUED") for j in job_ids)
        if final or time.monotonic() > deadline:
            return states
        time.sleep(1)


@pytest.fixture(scope="module", autouse=True)
def controller():
    """The controller answers (a failure, not a skip: the commands are installed)."""
    result = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=environment())
    assert result.returncode == 0 and result.stdout.split(), f"no SLURM controller: {result.stderr} (make slurm-up)"


def test_table_sweep_on_slurm_equals_the_same_sweep_run_locally(tmp_path):
    """2 solvers × 2 shards through SLURM: every job completes (sacct), and make_table's table equals the one of
    the same sweep run by Hydra's in-process launcher (catches a SLURM job that runs another config, loses a shard or
    writes elsewhere)."""
    sweep = [*GAUSSIAN, "data.limit=4", "solver=posterior_mean,posterior_sample", "shard.count=2", "shard.index=0,1"]
    on_slurm = start("-m", *SLURM, *sweep, f"paths.output_root={tmp_path / 'slurm'}", log=tmp_path / "slurm.log")
    local = start("-m", *sweep, f"paths.output_root={tmp_path / 'local'}", log=tmp_path / "local.log")
    assert finish(local) == 0, (tmp_path / "local.log").read_text()[-3000:]
    assert finish(on_slurm) == 0, (tmp_path / "slurm.log").read_text()[-3000:]
    slurm_dir, local_dir = own_sweep(tmp_path / "slurm"), own_sweep(tmp_path / "local")
    ids = sweep_job_ids(slurm_dir)
    assert len(ids) == 4 and set(accounting(ids).values()) == {"COMPLETED"}
    tables = []
    for sweep_dir in (slurm_dir, local_dir):
        assert make_table.main([str(sweep_dir), "--no-dataset-metrics"]) == 0
        tables.append((sweep_dir / "table.md").read_text())
    assert "posterior_mean" in tables[0] and "not run" not in tables[0]
    assert tables[0] == tables[1]


def test_refused_job_fails_alone_and_array_parallelism_bounds_the_running_jobs(tmp_path):
    """3 shards of 2 images with ``array_parallelism=1``: shard 2 holds no image and is refused; the sweep exits 2
    and its report names that job, the other jobs finished every image, sacct shows the whole array completed (a
    refused job is an outcome, not a SLURM failure), and squeue never shows 2 jobs running although the node has 2
    CPUs (catches array_parallelism not reaching sbatch)."""
    args = [*SLURM, "hydra.launcher.array_parallelism=1", *GAUSSIAN, "data.limit=2", "solver=posterior_mean"]
    process = start(
        "-m", *args, "shard.count=3", "shard.index=0,1,2", f"paths.output_root={tmp_path}", log=tmp_path / "sweep.log"
    )
    running = []
    while process.poll() is None:
        running.append(running_jobs())
        time.sleep(0.5)
    text = (tmp_path / "sweep.log").read_text()
    assert process.returncode == 2, text[-3000:]
    assert max(running) == 1, running
    report = text[text.index("error: 1 of 3 jobs did not finish every image:") :]
    assert "shard.index=2" in report and "refused: shard 2/3 of the dataset holds no image" in report
    sweep_dir = own_sweep(tmp_path)
    records = {r["num"]: r for r in (json.loads(p.read_text()) for p in (sweep_dir / "jobs").glob("*.json"))}
    assert [records[n]["status"] for n in range(3)] == ["ok", "ok", "refused"]
    ids = sweep_job_ids(sweep_dir)
    assert len(ids) == 3 and set(accounting(ids).values()) == {"COMPLETED"}


def job_attempts(job_id: str, timeout: float = 30) -> list[str]:
    """``State|Start`` of every attempt of job ``job_id`` (``sacct -D``), once the last one has a final state."""
    deadline = time.monotonic() + timeout
    while True:
        attempts = slurm("sacct", "-D", "-X", "-P", "-n", "-o", "State,Start", "-j", job_id).split()
        if attempts[-1].split("|")[0] not in ("PENDING", "RUNNING") or time.monotonic() > deadline:
            return attempts
        time.sleep(1)


def result_files(run_dir: Path) -> dict[str, bytes]:
    """Every image's reconstruction and result row, without the row's wall-clock seconds."""
    files = {f"recon/{p.name}": p.read_bytes() for p in sorted((run_dir / "recon").glob("*.png"))}
    for path in sorted((run_dir / "rows").glob("*.json")):
        row = json.loads(path.read_text())
        row.pop("seconds", None)
        files[f"rows/{path.name}"] = json.dumps(row, sort_keys=True).encode()
    return files


def only_run_dir(sweep_dir: Path) -> Path:
    [summary] = sweep_dir.glob("**/summary.json")
    return summary.parent


def test_requeued_job_resumes_in_its_folder_and_equals_an_uninterrupted_run(tmp_path):
    """``scontrol requeue`` of the running job once 2 of its 12 images are done (SLURM kills it KillWait = 5 s later,
    before the other 10 are done): SLURM runs it again, the run resumes in its folder without recomputing the images
    done (the 2 row files are not rewritten; the second attempt writes the images left), and every reconstruction
    and row equals an uninterrupted local run's byte for byte (catches a restart that starts over, writes elsewhere
    or draws other noise for the images after the restart)."""
    args = [*SLOW_IMAGES, "data.num_images=12"]
    process = start("-m", *SLURM, *args, f"paths.output_root={tmp_path / 'slurm'}", log=tmp_path / "slurm.log")
    rows = None
    while process.poll() is None:
        rows = sorted((tmp_path / "slurm" / "sweeps").glob("**/rows/*.json"))
        if len(rows) >= 2:
            break
        time.sleep(0.2)
    assert rows is not None and 2 <= len(rows) < 8, "the job finished before it could be requeued"
    before = {p: p.stat().st_mtime_ns for p in rows}
    [job_id] = slurm("squeue", "-h", "-t", "RUNNING", "-o", "%i").split()
    slurm("scontrol", "requeue", job_id)
    assert finish(process) == 0, (tmp_path / "slurm.log").read_text()[-3000:]
    attempts = job_attempts(job_id.split("_")[0])
    assert [a.split("|")[0] for a in attempts] == ["REQUEUED", "COMPLETED"], attempts
    second_start = datetime.fromisoformat(attempts[1].split("|")[1]).timestamp()
    assert {p: p.stat().st_mtime_ns for p in before} == before
    run_dir = only_run_dir(tmp_path / "slurm" / "sweeps")
    later = [p for p in (run_dir / "rows").glob("*.json") if p.stat().st_mtime >= second_start]
    assert 0 < len(later) <= 12 - len(before), "the first attempt was not stopped by the requeue"
    reference = tmp_path / "reference"
    local = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args, f"hydra.run.dir={reference}"],
        cwd=ROOT,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert local.returncode == 0, local.stderr[-3000:]
    resumed = result_files(run_dir)
    assert len(resumed) == 24 and resumed == result_files(reference)
