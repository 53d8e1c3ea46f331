"""One damaged run never blocks a report of many (issue 25, class 4): ``make_table`` (markdown, LaTeX, the HTML
report) and ``treg-exp score`` go on past a run whose ``summary.json``, ``config.yaml``, ``.hydra/``, tables, rows
or images are damaged or missing: one warning line names the path and what is wrong, every readable run is in the
output, and the exit status is 2 (one line, no traceback) only when nothing is readable.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests import _processes
from treg_exp.reporting import make_table, score

ARGS = [
    "model=gaussian",
    "solver=posterior_mean",
    "task=gauss_deblur",
    "data=samples",
    "data.limit=2",
    "data.resolution=32",
    "data.prompt=''",
    "metrics=fast",
]
SEEDS = (1, 2, 3)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """Three finished runs (seeds 1, 2, 3: three rows of a table) in one folder."""
    root = tmp_path_factory.mktemp("runs")
    for seed in SEEDS:
        process = _processes.start([*ARGS, f"seed={seed}", f"hydra.run.dir={root / f'seed{seed}'}"], root / "log")
        assert _processes.wait(process) == 0, (root / "log").read_text()[-2000:]
    (root / "log").unlink()
    return root


def _cut(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


DAMAGE = [
    # (name, what is done to run seed2, the words of its warning; None: the run stays readable, no warning)
    ("summary.json cut short", lambda r: _cut(r / "summary.json"), "summary.json is unreadable"),
    ("summary.json not a summary", lambda r: (r / "summary.json").write_text("[1, 2]"), "holds no run summary"),
    ("summary.json missing", lambda r: (r / "summary.json").unlink(), "summary.json is missing"),
    ("config.yaml missing", lambda r: (r / "config.yaml").unlink(), "config.yaml is missing"),
    ("config.yaml garbage", lambda r: (r / "config.yaml").write_text("data: [unclosed\n - {"), "config.yaml is unread"),
    ("metrics.csv cut mid-line", lambda r: _cut(r / "metrics.csv"), "metrics.csv is unreadable"),
    (
        "metrics.csv binary",
        lambda r: (r / "metrics.csv").write_bytes(b"id,status\n\x00\xff\xfe"),
        "metrics.csv is unre",
    ),
    ("metrics.csv missing", lambda r: (r / "metrics.csv").unlink(), "metrics.csv is missing"),
    (".hydra missing", lambda r: shutil.rmtree(r / ".hydra"), None),
    (
        "sweep.json cut short",
        lambda r: (r.parent / "sweep.json").write_text('{"jobs": [{"fo'),
        "sweep.json: unreadable",
    ),
    ("rows corrupt", lambda r: [p.write_text("{") for p in (r / "rows").glob("*.json")], None),
    ("a png cut short", lambda r: [_cut(p) for p in (r / "recon").glob("*.png")], None),
]


@pytest.mark.parametrize("damage, warning", [d[1:] for d in DAMAGE], ids=[d[0] for d in DAMAGE])
def test_make_table_goes_on_past_a_damaged_run(damage, warning, finished, tmp_path, capsys):
    """The table and the HTML report must hold every readable run, a damaged one must be one warning naming its
    path and what is wrong, and the exit status 0. Catches a traceback (JSONDecodeError, a YAML error, csv.Error,
    a PIL error in a thumbnail) ending the table, a run silently left out, and a half-read metrics.csv pooled."""
    root = tmp_path / "runs"
    shutil.copytree(finished, root)
    damage(root / "seed2")
    code = make_table.main([str(root)])
    captured = capsys.readouterr()
    assert code == 0 and "Traceback" not in captured.err
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    markdown = (root / "table.md").read_text()
    # a damaged sweep.json names itself and leaves every run in (pooled as a folder of runs)
    named = root / ("sweep.json" if warning and warning.startswith("sweep.json") else "seed2")
    kept = [1, 3] if warning and named.name == "seed2" else list(SEEDS)
    assert [s for s in SEEDS if f"seed={s}" in markdown] == kept, markdown
    if warning is None:
        assert not [w for w in warnings if "seed2" in w and "left out of the table" in w]
    else:
        assert len(warnings) == 1 and str(named) in warnings[0] and warning in warnings[0], warnings
    assert (root / "report.html").stat().st_size > 0


def test_make_table_with_nothing_readable_is_one_line_and_exit_2(finished, tmp_path, capsys):
    """Every run damaged: exit 2 and one line (how many, the first and why), no traceback, no table written."""
    root = tmp_path / "runs"
    shutil.copytree(finished, root)
    for seed in SEEDS:
        _cut(root / f"seed{seed}" / "summary.json")
    code = make_table.main([str(root)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"error: no readable run below {root}: 3 damaged ({root / 'seed1'}: summary.json is unread")
    assert not (root / "table.md").exists()


SCORE_DAMAGE = [
    ("config.yaml missing", lambda r: (r / "config.yaml").unlink(), "config.yaml is missing"),
    ("config.yaml garbage", lambda r: (r / "config.yaml").write_text("a: [\n - {"), "config.yaml is unreadable"),
    ("gt missing", lambda r: shutil.rmtree(r / "gt"), "gt/ is missing"),
    ("a measurement cut short", lambda r: _cut(r / "measurement" / "astronaut.pt"), "image astronaut unreadable"),
    ("a recon png cut short", lambda r: _cut(r / "recon" / "astronaut.png"), "image astronaut unreadable"),
]


@pytest.mark.parametrize("damage, warning", [d[1:] for d in SCORE_DAMAGE], ids=[d[0] for d in SCORE_DAMAGE])
def test_scoring_goes_on_past_a_damaged_run_or_image(damage, warning, finished, tmp_path, capsys):
    """`treg-exp score` over shards must score every readable image and warn once, naming the run and the
    problem, for a damaged run or image. Catches one unreadable shard or file ending the re-scoring."""
    runs = [tmp_path / f"seed{s}" for s in (1, 2)]
    for run in runs:
        shutil.copytree(finished / run.name, run)
    damage(runs[1])
    code = score.main([*map(str, runs), "--out", str(tmp_path / "score"), "--no-grid"])
    err = capsys.readouterr().err
    assert code == 0 and "Traceback" not in err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and str(runs[1]) in warnings[0] and warning in warnings[0], warnings
    scored = (tmp_path / "score" / "metrics.csv").read_text().splitlines()[1:]
    assert len(scored) == 2 + (1 if warning.startswith("image") else 0)  # seed1's two, seed2's readable ones


def test_scoring_with_nothing_readable_is_one_line_and_exit_2(finished, tmp_path, capsys):
    """The only run unreadable: exit 2 and one error line naming it and why, no traceback."""
    run = tmp_path / "seed1"
    shutil.copytree(finished / "seed1", run)
    (run / "config.yaml").unlink()
    code = score.main([str(run), "--no-grid"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.splitlines() == [f"error: {run} is not a finished run directory (config.yaml is missing)"]
