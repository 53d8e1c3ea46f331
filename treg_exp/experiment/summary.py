"""``summary.json``: counts, per-column statistics, non-finite counts, dataset metrics and the run's choices."""

from __future__ import annotations

import logging
from typing import Any

from treg_exp.metrics.base import MetricSuite, summary_stats
from treg_exp.tracking.run_store import RunStore

log = logging.getLogger(__name__)

#: why a column can hold a non-finite value (said in summary.json beside the count)
NON_FINITE_REASONS = {
    "+inf": "unbounded: for PSNR, the saved 8-bit images are identical (zero error)",
    "-inf": "unbounded below",
    "nan": "undefined for these images (e.g. 0/0, or a metric that failed numerically)",
}


def column_stats(ok: list[dict[str, Any]]) -> tuple[dict[str, dict], dict[str, dict]]:
    """Statistics of every numeric column over the ``ok`` rows, and the non-finite counts with their reasons."""
    numeric = sorted({k for r in ok for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    stats = {k: summary_stats([float(r[k]) for r in ok if isinstance(r.get(k), (int, float))]) for k in numeric}
    non_finite = {}
    for column, entry in stats.items():
        if "non_finite" in entry:
            kinds = entry["non_finite"]
            non_finite[column] = {
                "count": sum(kinds.values()),
                **kinds,
                "why": "; ".join(f"{kind}: {NON_FINITE_REASONS[kind]}" for kind in kinds),
                "left_out_of": "mean and std",
            }
    return stats, non_finite


def summarise(
    rows: list[dict[str, Any]],
    store: RunStore,
    metrics: MetricSuite,
    shard_index: int,
    shard_count: int,
    info: dict[str, Any],
    seen: int | None = None,
) -> dict[str, Any]:
    """The summary of every row in ``store``'s directory; dataset metrics (FID ...) only when the shards recorded
    there cover the whole dataset (otherwise a note says to score the merged shards).

    ``counts``: ``seen`` (the images the dataset found, before subset rules: a folder's every entry with an image
    suffix, readable or not), ``images`` (those of the run), ``ok`` (solved), ``failed`` (skipped, each with its
    record in ``failures.jsonl``) and ``pending``."""
    expected, covers = store.expected_ids()
    have = {r["id"] for r in rows}
    ok = [r for r in rows if r.get("status") == "ok"]
    failed = [r for r in rows if r.get("status") == "failed"]
    stats, non_finite = column_stats(ok)
    summary: dict[str, Any] = {
        "counts": {
            "seen": len(store.order) if seen is None else seen,
            "images": len(have | set(expected)),
            "ok": len(ok),
            "failed": len(failed),
            "pending": len([i for i in expected if i not in have]),
        },
        "metrics": stats,
        **({"non_finite": non_finite} if non_finite else {}),
        **({"failures": "failures.jsonl"} if failed else {}),
        **metrics.describe(),
        "shard": {"index": shard_index, "count": shard_count},
        "shards_in_directory": store.shards_in_directory(),
        "covers_dataset": covers,
        **info,
    }
    if metrics.dataset and ok:
        if not covers:
            summary["dataset_metrics_note"] = (
                "dataset metrics need the whole set: run `treg-exp score` on the merged shards"
            )
        else:
            errors: list[str] = []
            summary["dataset_metrics"] = metrics.per_dataset(store.run_dir / "recon", store.run_dir / "gt", errors)
            if errors:
                log.warning("dataset metrics failed: %s", "; ".join(errors))
                summary["dataset_metric_errors"] = errors
    return summary
