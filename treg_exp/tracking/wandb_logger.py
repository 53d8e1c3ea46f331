"""Weights & Biases logger (``logger=wandb``): config, per-image metrics, an image table, the summary.

What a run sends: the resolved config; each image's numeric metrics as they come (``image/<column>``); at the end
a ``wandb.Table`` ``images`` of (id, prompt, measurement, reconstruction, ground truth, metrics) for the first
``max_images`` images, converted to uint8 here; the run's summary (flattened: ``metrics/psnr/mean``,
``dataset_metrics/fid`` …, with the headline means and dataset metrics also at the top level) and
``comparison.png`` when the run directory has one. ``wandb.finish`` is always called, with exit code 1 after an error.

W&B never stops a run: every call is guarded; a failure (no network, bad key, quota) is one warning and the logger
goes quiet (or, with ``offline_fallback``, keeps logging to an offline run that ``wandb sync`` uploads later).
``init_timeout`` bounds the wait of ``wandb.init`` (an invalid key without network otherwise waits ~100 s).
The W&B run id is kept in ``<run_dir>/wandb_run_id.txt``, so a resumed run directory continues the same W&B run.

W&B's environment variables are honoured: a key left ``null`` in ``conf/logger/wandb.yaml`` takes its variable
(``WANDB_MODE``, ``WANDB_PROJECT``, ``WANDB_ENTITY``, ``WANDB_RUN_GROUP``, ``WANDB_NAME``, ``WANDB_DIR``; ``WANDB_TAGS``
adds tags), else this logger's default; a key set in the config wins. So ``WANDB_MODE=offline`` logs offline without
ever asking for an API key, and ``WANDB_MODE=disabled`` logs nothing.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from treg_exp.tracking.base import RunLogger

log = logging.getLogger(__name__)

RUN_ID_FILE = "wandb_run_id.txt"
MODES = ("online", "offline", "disabled")
#: W&B's older names for its modes, still accepted in ``WANDB_MODE``
MODE_ALIASES = {"run": "online", "dryrun": "offline"}
IMAGE_COLUMNS = ("measurement", "reconstruction", "ground_truth")
TAG_GROUPS = ("solver", "task", "data", "model")


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """``[3, H, W]`` (or ``[1, H, W]``) in [−1, 1] → ``[H, W, 3]`` uint8, rounded as the run's PNGs are."""
    x = image.detach().float().cpu().clamp(-1, 1)
    if x.ndim == 2:
        x = x[None]
    if x.shape[0] == 1:
        x = x.expand(3, *x.shape[1:])
    return ((x + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a/b": 1}`` (numbers, strings and bools only)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}/"))
        elif isinstance(value, (int, float, str, bool)):
            out[name] = value
    return out


def _choices(config: dict[str, Any]) -> dict[str, str]:
    """The Hydra config-group choices: ``config["choices"]`` if the caller put them there, else Hydra's own."""
    given = config.get("choices")
    if isinstance(given, dict):
        return {str(k): str(v) for k, v in given.items() if v is not None}
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            choices = HydraConfig.get().runtime.choices
            return {k: str(v) for k, v in choices.items() if v is not None and not k.startswith("hydra")}
    except Exception as error:  # noqa: BLE001 - names are a nicety
        log.debug("W&B: no Hydra choices for the run name (%s)", error)
    return {}


def _sweep_group() -> str | None:
    """In a Hydra multirun, the sweep folder's name (one W&B group per sweep)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            return Path(HydraConfig.get().sweep.dir).name
    except Exception as error:  # noqa: BLE001 - the group is a nicety too
        log.debug("W&B: no sweep folder for the group (%s)", error)
    return None


class WandbLogger(RunLogger):
    """Log a run to W&B (see the module docstring).

    Args (``None``: the W&B environment variable named, else the default given):
        mode: ``online``, ``offline`` (files under ``<dir>/wandb``, upload with ``wandb sync``) or ``disabled``
            (``WANDB_MODE``, else ``online``).
        project, entity: where the run goes (``WANDB_PROJECT``, else ``treg-exp``; ``WANDB_ENTITY``, else your
            default entity).
        group: the W&B group (``WANDB_RUN_GROUP``, else the Hydra sweep's folder name in a multirun).
        name: the run name (``WANDB_NAME``, else ``<solver>_<task>_<data>`` from the Hydra choices).
        tags: extra tags beside the solver, task, data and model choices.
        init_timeout: seconds ``wandb.init`` may wait for the server.
        finish_timeout: seconds ``run.finish`` (the final upload) may take before the run goes on without it; what
            was not uploaded stays in the run's offline files for ``wandb sync``.
        max_images: images sent in the table (the first ones); metrics are sent for all.
        offline_fallback: when an online start fails, log offline instead of not at all.
        dir: where W&B writes its files (``WANDB_DIR``, else the run directory).
    """

    def __init__(
        self,
        mode: str | None = None,
        project: str | None = None,
        entity: str | None = None,
        group: str | None = None,
        name: str | None = None,
        tags: list[str] | None = None,
        init_timeout: float = 30.0,
        finish_timeout: float = 120.0,
        max_images: int = 16,
        offline_fallback: bool = True,
        dir: str | None = None,
    ) -> None:
        env_mode = os.environ.get("WANDB_MODE", "").strip().lower()
        mode = mode or MODE_ALIASES.get(env_mode, env_mode) or "online"
        if mode not in MODES:
            from treg_exp.common.errors import UserError

            raise UserError(f"logger.mode (or WANDB_MODE)={mode} is not one of {', '.join(MODES)}")
        self.mode = mode
        self.project = project or os.environ.get("WANDB_PROJECT") or "treg-exp"
        self.entity = entity or os.environ.get("WANDB_ENTITY") or None
        self.group = group or os.environ.get("WANDB_RUN_GROUP") or None
        self.name = name or os.environ.get("WANDB_NAME") or None
        env_tags = [t.strip() for t in os.environ.get("WANDB_TAGS", "").split(",") if t.strip()]
        self.tags = [str(t) for t in (tags or [])] + env_tags
        self.init_timeout = float(init_timeout)
        self.finish_timeout = float(finish_timeout)
        self.max_images = int(max_images)
        self.offline_fallback = bool(offline_fallback)
        self.dir = dir or os.environ.get("WANDB_DIR") or None
        self.run = None
        self.run_dir: Path | None = None
        self.rows: list[tuple[dict[str, Any], list[Any]]] = []
        self.images_sent = 0
        self._finished = False

    # --- guarded calls -----------------------------------------------------------------------------------
    def _warn(self, what: str, error: BaseException) -> None:
        detail = str(error).splitlines()[0] if str(error) else ""
        log.warning("W&B %s failed (%s: %s); the run goes on with its local files", what, type(error).__name__, detail)

    def _init(self, mode: str, run_id: str | None, config: dict[str, Any]) -> Any:
        import wandb

        choices = _choices(config)
        tags = [choices[k] for k in TAG_GROUPS if k in choices] + self.tags
        name = self.name or "_".join(choices[k] for k in ("solver", "task", "data") if k in choices) or None
        directory = Path(self.dir) if self.dir else self.run_dir
        directory.mkdir(parents=True, exist_ok=True)
        settings = wandb.Settings(init_timeout=self.init_timeout, silent=True, disable_git=True, x_disable_stats=True)
        return wandb.init(
            project=self.project,
            entity=self.entity,
            group=self.group or _sweep_group(),
            name=name,
            tags=tags,
            config={k: v for k, v in config.items() if k != "choices"},
            dir=str(directory),
            mode=mode,
            id=run_id,
            resume="allow" if run_id else None,
            reinit="create_new",
            settings=settings,
        )

    # --- RunLogger ---------------------------------------------------------------------------------------
    def start(self, config: dict[str, Any], run_dir: Path) -> None:
        """Start (or resume, with the id kept in ``run_dir``) the W&B run."""
        self.run_dir = Path(run_dir)
        self.rows, self.images_sent, self._finished = [], 0, False
        if self.mode == "disabled":
            return
        id_file = self.run_dir / RUN_ID_FILE
        run_id = id_file.read_text().strip() if id_file.is_file() else None
        try:
            self.run = self._init(self.mode, run_id, config)
        except BaseException as error:  # noqa: BLE001 - wandb raises CommError, UsageError, timeouts …
            if isinstance(error, KeyboardInterrupt):
                raise
            self._warn("start", error)
            self.run = None
            if self.mode == "online" and self.offline_fallback:
                try:
                    self.run = self._init("offline", run_id, config)
                    log.warning("W&B: logging offline to %s; upload later with `wandb sync`", self.run.dir)
                except BaseException as fallback_error:  # noqa: BLE001
                    if isinstance(fallback_error, KeyboardInterrupt):
                        raise
                    self._warn("offline fallback", fallback_error)
                    self.run = None
        if self.run is not None:
            try:
                id_file.write_text(self.run.id + "\n")
            except OSError as error:
                self._warn("keeping the run id", error)

    def log_image(self, row: dict[str, Any], images: dict[str, torch.Tensor]) -> None:
        """Send the row's numbers now; keep the images for the table (the first ``max_images``)."""
        if self.run is None:
            return
        try:
            numbers = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            if numbers:
                self.run.log({f"image/{k}": v for k, v in numbers.items()})
            if images and self.images_sent < self.max_images:
                import wandb

                cells = [wandb.Image(to_uint8(images[k])) if k in images else None for k in IMAGE_COLUMNS]
                self.rows.append((row, cells))
                self.images_sent += 1
        except Exception as error:  # noqa: BLE001
            self._warn("log_image", error)

    def finish(self, summary: dict[str, Any] | None) -> None:
        """Send the table, summary and ``comparison.png``; ``wandb.finish`` (exit code 1 if ``summary`` is None)."""
        if self.run is None or self._finished:
            return
        self._finished = True
        try:
            import wandb

            if self.rows:
                # the union of every row's numbers: a failed first image must not drop the metric columns
                metric_columns = list(
                    dict.fromkeys(
                        k
                        for row, _ in self.rows
                        for k, v in row.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool)
                    )
                )
                data = [
                    [str(row.get("id", "")), str(row.get("prompt", "")), *cells, *(row.get(k) for k in metric_columns)]
                    for row, cells in self.rows
                ]
                columns = ["id", "prompt", *IMAGE_COLUMNS, *metric_columns]
                self.run.log({"images": wandb.Table(columns=columns, data=data)})
            if summary:
                flat = flatten(summary)
                for key, value in list(flat.items()):
                    # the headline numbers also at the top level, where W&B's run table shows them
                    if key.startswith("metrics/") and key.endswith("/mean"):
                        flat[key[len("metrics/") : -len("/mean")]] = value
                    elif key.startswith("dataset_metrics/"):
                        flat[key[len("dataset_metrics/") :]] = value
                self.run.summary.update(flat)
            grid = self.run_dir / "comparison.png" if self.run_dir else None
            if summary and grid is not None and grid.is_file():
                self.run.log({"comparison": wandb.Image(str(grid))})
        except Exception as error:  # noqa: BLE001
            self._warn("finish", error)
        finally:
            self._bounded_finish(exit_code=0 if summary is not None else 1)
            self.run = None

    def _bounded_finish(self, exit_code: int) -> None:
        """``run.finish`` in a daemon thread, waited on for at most ``finish_timeout`` seconds (a network that went
        away mid-run makes the final upload retry for minutes)."""
        errors: list[BaseException] = []

        def finish() -> None:
            try:
                self.run.finish(exit_code=exit_code)
            except BaseException as error:  # noqa: BLE001 - reported below, never raised into the run
                errors.append(error)

        worker = threading.Thread(target=finish, name="wandb-finish", daemon=True)
        worker.start()
        worker.join(self.finish_timeout)
        if worker.is_alive():
            log.warning(
                "W&B: finish did not complete in %.0f s; the run's local files are complete, and W&B's own files "
                "in %s can be uploaded later with `wandb sync`",
                self.finish_timeout,
                getattr(self.run, "dir", "the wandb folder"),
            )
        elif errors:
            self._warn("finish", errors[0])
