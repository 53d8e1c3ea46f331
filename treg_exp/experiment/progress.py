"""Progress within an image: a second bar under the runner's ``images`` bar, counting the UNet calls of the batch
being solved (with its rate and ETA), for runs where one image takes minutes (TReg at SD scale: 200 calls).

Solvers report diagnostics on some steps only, so the bar does not rely on them: a thread reads the prior's network
counter (:class:`treg_exp.models.base.NetworkCounter`, ``unet_calls``) twice a second. Its total is the solver's
UNet calls per image from :mod:`treg_exp.experiment.cost` (a batch's images share their calls), times
``num_samples``; once a batch has been solved the measured count replaces the estimate.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager

from tqdm.auto import tqdm

#: seconds between two reads of the counter
POLL_SECONDS = 0.5


class StepProgress:
    """The ``steps`` bar of a run: :meth:`batch` wraps the solve of one batch."""

    def __init__(self, counter: MutableMapping[str, int], calls_per_solve: float | None, enabled: bool) -> None:
        """``counter``: the prior's; ``calls_per_solve``: UNet calls one batch is expected to make (``None``:
        unknown, the bar then shows the count and rate without ETA); ``enabled``: show it at all."""
        self.counter = counter
        self.total = int(calls_per_solve) if calls_per_solve else None
        self.enabled = enabled

    def calls(self) -> int:
        return int(self.counter.get("unet_calls", 0))

    @contextmanager
    def batch(self, ids: list[str]) -> Iterator[None]:
        if not self.enabled or not ids:  # nothing to solve (every image of the batch failed to load)
            yield
            return
        start, stop = self.calls(), threading.Event()
        name = ids[0] if len(ids) == 1 else f"{ids[0]} +{len(ids) - 1}"
        bar = tqdm(total=self.total, desc=f"steps of {name}", unit="call", leave=False)

        def poll() -> None:
            while not stop.wait(POLL_SECONDS):
                bar.n = self.calls() - start
                bar.refresh()

        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            made = self.calls() - start
            if made:
                self.total = made  # the next batch makes as many
            bar.close()
