"""What the benchmark scripts share: composing a run config, wall time, and peak memory of this process."""

from __future__ import annotations

import ctypes
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def compose(overrides: list[str]):
    """The run config for ``overrides`` (as ``python run.py <overrides>`` would compose it), not read-only."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose("config", overrides=overrides)
    OmegaConf.set_struct(cfg, False)
    cfg.paths.run_dir = "unused"
    return cfg


def timed(fn: Callable[[], object], repeats: int, warmup: bool = True) -> float:
    """Minimum wall seconds of ``repeats`` calls of ``fn``, after one untimed warm-up call unless ``warmup`` is
    false (CUDA synchronised)."""
    times = []
    for i in range(repeats + 1 if warmup else repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if i or not warmup:
            times.append(time.perf_counter() - start)
    return min(times)


def rss_gib(field: str = "VmRSS") -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak since the last :func:`reset_peak`) of this process in GiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**20
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> float:
    """Hand freed heap pages back to the OS (``malloc_trim``), reset the peak RSS ``VmHWM`` to the current RSS
    (``/proc/self/clear_refs``) and the CUDA peak, and return the RSS in GiB: what a measured peak is taken from."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    return rss_gib("VmRSS")


def peak_gib() -> float:
    """Peak memory since the last :func:`reset_peak`: CUDA allocated on a GPU, else ``VmHWM``."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return rss_gib("VmHWM")
