"""``hydra/launcher=local``: submitit's local launcher that never starts more jobs than the machine holds.

Hydra's submitit ``local`` launcher hands every job of a sweep to its own Python process at once: 40 jobs on a
2-core machine are 40 processes (and on a one-GPU workstation, 40 copies of the model on one GPU). This launcher
keeps a fixed number of jobs alive and starts the next one when one ends:

- jobs at once (:func:`jobs_at_once`): ``jobs_at_once`` when set, else the visible GPUs divided by the GPUs each job
  takes (``gpus_per_node``), or 1 on a machine without a GPU;
- each running job gets its own GPUs (``CUDA_VISIBLE_DEVICES`` set by submitit from the free slot's GPU ids), so
  jobs never share a GPU unless ``jobs_at_once`` asks for more jobs than there are GPUs.

Everything else (one folder per job under ``.submitit``, pickled results, requeue on time-out) is submitit's.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher

log = logging.getLogger(__name__)

#: seconds between two looks at the running jobs
POLL_SECONDS = 0.5


def visible_gpus() -> list[int]:
    """The GPU ids jobs may use: ``CUDA_VISIBLE_DEVICES`` when set (``""``: none), else every GPU torch counts
    (torch counts through NVML, without initialising CUDA in this process)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [int(d) for d in listed.split(",") if d.strip().isdigit()]
    import torch

    return list(range(torch.cuda.device_count()))


def jobs_at_once(setting: int | None, gpus: Sequence[int], gpus_per_job: int) -> int:
    """How many jobs run at the same time: ``setting`` when given (at least 1), else ``len(gpus) // gpus_per_job``
    (at least 1), so 1 on a CPU-only machine."""
    if setting is not None:
        return max(int(setting), 1)
    return max(len(gpus) // max(gpus_per_job, 1), 1)


class BoundedLocalLauncher(LocalLauncher):
    """submitit's local launcher with at most :attr:`jobs_at_once` jobs alive, each on its own GPUs."""

    def __init__(self, jobs_at_once: int | None = None, **params: Any) -> None:
        super().__init__(**params)
        self.jobs_at_once_setting = jobs_at_once
        self.gpus = visible_gpus()

    @property
    def gpus_per_job(self) -> int:
        return int(self.params.get("gpus_per_node") or 0)

    @property
    def jobs_at_once(self) -> int:
        return jobs_at_once(self.jobs_at_once_setting, self.gpus, self.gpus_per_job)

    def _slot_gpus(self, slot: int) -> list[int]:
        """The GPUs of slot ``slot`` (slots cycle over the GPUs when there are more slots than GPUs)."""
        if not self.gpus or not self.gpus_per_job:
            return []
        first = (slot * self.gpus_per_job) % len(self.gpus)
        return [self.gpus[(first + k) % len(self.gpus)] for k in range(min(self.gpus_per_job, len(self.gpus)))]

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit

        assert self.config is not None
        executor = submitit.LocalExecutor(
            folder=self.params["submitit_folder"], max_num_timeout=int(self.params.get("max_num_timeout", 0))
        )
        resources = {
            k: v for k, v in self.params.items() if k not in ("submitit_folder", "max_num_timeout", "gpus_per_node")
        }
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        at_once = self.jobs_at_once
        log.info("local launcher: %d jobs, %d at once, output in %s", len(job_overrides), at_once, sweep_dir)
        waiting = list(enumerate(job_overrides, start=initial_job_idx))
        running: dict[int, tuple[int, Any]] = {}  # slot → (job number, submitit job)
        returns: dict[int, JobReturn] = {}
        while waiting or running:
            for slot in (s for s in range(at_once) if s not in running):
                if not waiting:
                    break
                num, overrides = waiting.pop(0)
                gpus = self._slot_gpus(slot)
                executor.update_parameters(**resources, gpus_per_node=len(gpus), visible_gpus=gpus)
                log.info("\t#%d : %s", num, " ".join(filter_overrides(overrides)))
                job = executor.submit(
                    self, list(overrides), "hydra.sweep.dir", num, f"job_id_for_{num}", Singleton.get_state()
                )
                running[slot] = (num, job)
            time.sleep(POLL_SECONDS)
            for slot, (num, job) in list(running.items()):
                if job.done():
                    returns[num] = job.results()[0]
                    del running[slot]
        return [returns[num] for num in sorted(returns)]
