"""``treg-exp status SWEEP_DIR``: where a sweep stands, read from its folders only (so it works for a sweep running
on SLURM, locally, or copied from a cluster), and the command that relaunches exactly its unfinished jobs.

For each job of ``sweep.json`` one line: its state, images done of its total, seconds per image, and the time left
at that rate. The state comes from the job's outcome record (``jobs/<num>.json``, written when a job ends) and its
result rows (``rows/<id>.json``, one per finished image):

- ``done``: every image has an ``ok`` row (or the job recorded ``ok``);
- ``failed``: the job ended with failed images or crashed; ``refused``: its config was refused;
- ``running``: no outcome yet and the folder changed in the last :data:`ACTIVE_SECONDS`;
- ``stopped``: started (some files) but unchanged for longer: killed, or pre-empted and not yet requeued;
- ``pending``: nothing written yet.

The relaunch command is the sweep's own command line (``multirun.yaml``) with ``hydra.sweeper.only`` listing the
unfinished jobs' folders; each job resumes in its folder and skips the images it finished.
"""

from __future__ import annotations

import argparse
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from treg_exp.experiment.sweep import SWEEP_FILE
from treg_exp.tracking.files import read_json

#: a job whose folder changed less than this many seconds ago counts as running
ACTIVE_SECONDS = 600
UNFINISHED = ("running", "stopped", "pending", "failed", "refused")


@dataclass
class JobStatus:
    """One job: its folder (relative to the sweep), state, images done of ``total`` and seconds per image."""

    folder: str
    state: str
    done: int
    total: int | None
    seconds_per_image: float | None
    message: str | None = None

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left at the job's rate (``None``: no rate yet, or nothing left to run)."""
        if self.state not in ("running", "stopped") or self.seconds_per_image is None or self.total is None:
            return None
        return max(self.total - self.done, 0) * self.seconds_per_image


def _records(sweep_dir: Path) -> list[dict[str, Any]]:
    """Outcome records of the sweep's jobs (``jobs/<num>.json``)."""
    records = [read_json(p) for p in sorted((sweep_dir / "jobs").glob("*.json"))]
    return [r for r in records if isinstance(r, dict) and r.get("run_dir")]


def _record_of(records: list[dict[str, Any]], folder: str) -> dict[str, Any] | None:
    """The record of the job in ``folder``: its ``run_dir`` ends with it (also in a copied sweep, whose records
    name the original location)."""
    return next((r for r in records if Path(r["run_dir"]).as_posix().endswith("/" + folder)), None)


def _newest_change(folder: Path) -> float | None:
    times = [p.stat().st_mtime for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []
    return max(times) if times else None


def job_status(sweep_dir: Path, entry: dict[str, Any], record: dict[str, Any] | None, now: float) -> JobStatus:
    """The status of the job ``entry`` of ``sweep.json`` from its folder and outcome ``record``."""
    folder = sweep_dir / entry["folder"]
    rows = [read_json(p) for p in sorted((folder / "rows").glob("*.json"))]
    ok = [r for r in rows if isinstance(r, dict) and r.get("status") == "ok"]
    seconds = [float(r["seconds"]) for r in ok if isinstance(r.get("seconds"), (int, float))]
    rate = sum(seconds) / len(seconds) if seconds else None
    total = entry.get("images")
    outcome = (record or {}).get("status")
    if outcome == "ok" or (total is not None and len(ok) >= total and outcome is None):
        state = "done"
    elif outcome == "refused":
        state = "refused"
    elif outcome in ("images_failed", "crashed"):
        state = "failed"
    else:
        changed = _newest_change(folder)
        state = "pending" if changed is None else "running" if now - changed < ACTIVE_SECONDS else "stopped"
    return JobStatus(entry["folder"], state, len(ok), total, rate, (record or {}).get("message"))


def sweep_status(sweep_dir: Path, now: float | None = None) -> list[JobStatus]:
    """Every job of the sweep that was planned to run (skipped rows are not jobs)."""
    plan = read_json(sweep_dir / SWEEP_FILE) or {}
    records = _records(sweep_dir)
    now = time.time() if now is None else now
    jobs = [e for e in plan.get("jobs", []) if e.get("folder")]
    return [job_status(sweep_dir, e, _record_of(records, e["folder"]), now) for e in jobs]


def relaunch_command(sweep_dir: Path, folders: list[str]) -> str:
    """``python run.py -m`` with the sweep's own overrides, its folder, and ``hydra.sweeper.only`` = ``folders``."""
    from omegaconf import OmegaConf

    saved = OmegaConf.load(sweep_dir / "multirun.yaml")
    replaced = ("hydra.mode=", "hydra.sweep.dir=", "hydra.sweeper.only=")
    hydra_overrides = [o for o in saved.hydra.overrides.hydra if not o.startswith(replaced)]
    only = "hydra.sweeper.only=[" + ",".join(f'"{f}"' for f in folders) + "]"
    # quoted for Hydra's grammar: a plain multirun's folder is named by its settings (``=`` and ``,`` inside)
    folder = str(sweep_dir.resolve()).replace("\\", "\\\\").replace('"', '\\"')
    words = [*hydra_overrides, *saved.hydra.overrides.task, f'hydra.sweep.dir="{folder}"', only]
    return "python run.py -m " + " ".join(shlex.quote(str(w)) for w in words)


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def status_lines(sweep_dir: Path) -> list[str]:
    """One line per job, a count per state, and the relaunch command when jobs are unfinished."""
    jobs = sweep_status(sweep_dir)
    lines = []
    for job in jobs:
        total = "?" if job.total is None else str(job.total)
        rate = "—" if job.seconds_per_image is None else f"{job.seconds_per_image:.2f} s/image"
        eta = f", ETA {format_duration(job.eta_seconds)}" if job.eta_seconds is not None else ""
        why = f" ({job.message})" if job.message and job.state in ("failed", "refused") else ""
        lines.append(f"{job.state:8} {job.done}/{total} images, {rate}{eta}  {job.folder}{why}")
    counts = {s: sum(j.state == s for j in jobs) for s in ("done", *UNFINISHED)}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items() if n) + f" of {len(jobs)} jobs")
    unfinished = [j.folder for j in jobs if j.state in UNFINISHED]
    if unfinished and (sweep_dir / "multirun.yaml").is_file():
        lines.append("relaunch the unfinished jobs (each resumes in its folder):")
        lines.append("  " + relaunch_command(sweep_dir, unfinished))
    return lines


def build_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("sweep_dir", type=Path, help="a sweep folder (with sweep.json)")
    return parser


def run_from_args(args: argparse.Namespace) -> int:
    """Print the sweep's status; 2 when the folder holds no ``sweep.json``."""
    import sys

    if not (args.sweep_dir / SWEEP_FILE).is_file():
        print(f"error: {args.sweep_dir / SWEEP_FILE} does not exist: not a sweep folder", file=sys.stderr)
        return 2
    print("\n".join(status_lines(args.sweep_dir)))
    return 0
