"""Real processes for the reliability tests: ``run.py`` (or a function) started in a process of its own.

The processes come from a multiprocessing *forkserver* that imported the app once, so a start costs the run and
not torch's import; each one is still a separate process, with its own pid, exit status and file descriptors, and
can be SIGKILLed. :func:`start` can also make the process kill itself in the middle of its n-th file write
(:class:`DyingFile`): the test then knows a kill landed *during* a write, not only between two.
"""

from __future__ import annotations

import multiprocessing
import os
import runpy
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parents[1]
RUN_PY = ROOT / "run.py"
PRELOAD = [
    "tests._processes",
    "treg_exp.experiment.app",
    "treg_exp.models.tiny",
    "treg_exp.models.gaussian",
    "treg_exp.solvers.ddim",
    "treg_exp.solvers.oracles",
    "torchmetrics.functional.image",
]
_context = None


def context() -> Any:
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


class DyingFile:
    """A file handle that writes half of the first chunk it is given (or, given nothing, closes), then sends its
    own process ``signum`` (SIGKILL; SIGTERM, which no handler catches, ends it as a scheduler's pre-emption does)."""

    def __init__(self, handle: Any, signum: int = signal.SIGKILL) -> None:
        self._handle = handle
        self._signum = signum

    def write(self, data: Any) -> int:
        self._handle.write(data[: max(1, len(data) // 2)])
        self._handle.flush()
        os.kill(os.getpid(), self._signum)
        return 0  # never reached

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)

    def __enter__(self) -> DyingFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._handle.close()
        os.kill(os.getpid(), self._signum)  # an empty file (failures.jsonl without failures) dies at its close


def _redirect(log_path: str) -> None:
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _run_app(argv: Sequence[str], log_path: str, kill_at_write: int | None, signum: int) -> None:
    _redirect(log_path)
    if kill_at_write is not None:
        from treg_exp.tracking import files

        original, count = files._open_temp, [0]

        def open_temp(path: Path, binary: bool) -> tuple[Path, Any]:
            tmp, handle = original(path, binary)
            count[0] += 1
            return tmp, DyingFile(handle, signum) if count[0] == kill_at_write else handle

        files._open_temp = open_temp
    sys.argv = [str(RUN_PY), *argv]
    runpy.run_path(str(RUN_PY), run_name="__main__")


def start(argv: Sequence[str], log_path: Path, kill_at_write: int | None = None, signum: int = signal.SIGKILL) -> Any:
    """``python run.py *argv`` in a new process (stdout and stderr appended to ``log_path``); not waited for.

    ``kill_at_write=n``: the process sends itself ``signum`` half-way through its n-th file write.
    """
    process = context().Process(target=_run_app, args=(list(argv), str(log_path), kill_at_write, signum))
    process.start()
    return process


def call(function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)`` in a new process (``function`` must be importable); not waited for."""
    process = context().Process(target=function, args=args)
    process.start()
    return process


def wait(process: Any, timeout: float = 300) -> int:
    """The exit status of ``process`` (``-9`` when SIGKILLed); a process still running after ``timeout`` is killed."""
    process.join(timeout)
    if process.is_alive():
        process.kill()
        process.join()
        raise TimeoutError(f"process {process.pid} ran over {timeout} s")
    return process.exitcode
