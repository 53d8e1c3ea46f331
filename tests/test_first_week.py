"""A researcher's first week (issue 27): the files a newcomer looks for exist and say what they should."""

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_license_citation_changelog() -> None:
    """Catches a repository without a licence, a citation file that does not parse or omits the TReg / P2L papers."""
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0"
    identifiers = {i["value"]: ref for ref in citation["references"] for i in ref["identifiers"]}
    assert set(identifiers) == {"arXiv:2311.15658", "arXiv:2310.01110"}
    # venues as the official TReg README's BibTeX and the P2L paper give them (TReg was once cited as ECCV 2024)
    treg, p2l = identifiers["arXiv:2311.15658"], identifiers["arXiv:2310.01110"]
    assert treg["title"] == "Regularization by Texts for Latent Diffusion Inverse Solvers"
    assert [a["family-names"] for a in treg["authors"]] == ["Kim", "Park", "Chung", "Ye"]
    assert "ICLR 2025" in treg["conference"]["name"] and treg["year"] == 2025
    assert p2l["title"] == "Prompt-tuning Latent Diffusion Models for Inverse Problems"
    assert [a["family-names"] for a in p2l["authors"]] == ["Chung", "Ye", "Milanfar", "Delbracio"]
    assert "ICML 2024" in p2l["conference"]["name"] and p2l["year"] == 2024
    assert (ROOT / "CHANGELOG.md").read_text().startswith("# Changelog")


def test_cuda_without_cuda_suggests_auto() -> None:
    """Catches a refusal of device=cuda on a CPU-only machine that does not say device=auto is the portable choice."""
    import torch

    from treg_exp.common.devices import resolve_device
    from treg_exp.common.errors import UserError

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: device=cuda is not refused here")
    with pytest.raises(UserError, match="device=auto"):
        resolve_device("cuda")


def test_readme_names_hydra_inspection() -> None:
    """Catches a README that leaves a newcomer unaware of --cfg job, --info and shell completion."""
    readme = (ROOT / "README.md").read_text()
    for flag in ("--cfg job", "--info", "-sc install=bash"):
        assert flag in readme, flag


# --- sweeps that tabulate ------------------------------------------------------------------------------------------
def fake_run(run_dir: Path, solver: str, task: str, psnr: float, *overrides: str, model: str = "gaussian") -> Path:
    """A finished run as make_table reads it: summary.json (with its counts), config.yaml and one ok row per image
    (two images)."""
    import json

    run_dir.mkdir(parents=True, exist_ok=True)
    summary = {
        "choices": {"data": "samples", "task": task, "model": model, "solver": solver},
        "overrides": [f"solver={solver}", f"task={task}", *overrides],
        "shard": {"index": 0, "count": 1},
        "counts": {"ok": 2, "failed": 0},
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / "config.yaml").write_text(f"solver:\n  name: {solver}\n")
    (run_dir / "metrics.csv").write_text(f"id,status,psnr\na,ok,{psnr}\nb,ok,{psnr + 2}\n")
    return run_dir


def markdown_rows(markdown: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in markdown.splitlines() if line.startswith("|")]


def test_plain_sweep_pivots_methods_by_tasks(tmp_path) -> None:
    """Catches the diagonal table of a plain sweep (one row per job folder, labelled by its path): a sweep
    ``solver=ddim,dds task=gauss_deblur,sr4`` must give 2 method rows × 2 task columns, every cell filled, labels
    without the settings all jobs share (those go to one footnote); and catches a sweep written into a shared folder
    or ending without its table."""
    from tests.test_tables import run_cli

    common = ["model=gaussian", "data.resolution=32", "data.limit=1", "solver.num_steps=3"]
    result = run_cli("-m", *common, "solver=ddim,dds", "task=gauss_deblur,sr4", f"paths.output_root={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep_dir,) = (tmp_path / "sweeps").iterdir()
    assert sweep_dir.name == ",".join(sorted([*common[:2], common[3], "solver=ddim,dds", "task=gauss_deblur,sr4"]))
    markdown = (sweep_dir / "table.md").read_text()
    header, _, *rows = markdown_rows(markdown)
    assert header == ["Method", "gauss_deblur PSNR", "gauss_deblur SSIM", "sr4 PSNR", "sr4 SSIM"]
    assert [r[0] for r in rows] == ["DDIM", "DDS"] and all("—" not in c for r in rows for c in r)
    assert "Shared by every cell: data.resolution=32, model=gaussian, solver.num_steps=3." in markdown
    # the end of the multirun prints the table and where it and the report are
    assert markdown.splitlines()[2] in result.stdout and str(sweep_dir / "report.html") in result.stdout
    # another sweep gets its own folder and leaves the first one's record alone
    before = (sweep_dir / "sweep.json").read_text()
    result = run_cli("-m", *common, "solver=ddim", "task=sr4", f"paths.output_root={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list((tmp_path / "sweeps").iterdir())) == 2 and (sweep_dir / "sweep.json").read_text() == before


def test_a_folder_of_two_sweeps_keeps_and_tabulates_both(tmp_path, capsys) -> None:
    """Catches a second, different sweep into one folder (hydra.sweep.dir given twice) replacing the first one's
    sweep.json without a word, and make_table then tabulating only the last."""
    from treg_exp.experiment import sweep
    from treg_exp.reporting import make_table

    def plan(solver: str) -> sweep.SweepPlan:
        job = sweep.PlannedJob(overrides=[f"solver={solver}", "task=sr4"], task="sr4", solver=solver, model="gaussian")
        job.folder = f"sr4/{solver}/default"
        fake_run(tmp_path / job.folder, solver, "sr4", 20.0 if solver == "ddim" else 25.0)
        return sweep.SweepPlan(jobs=[job])

    sweep.write_sweep_file(tmp_path, plan("ddim"), None, None, None, [])
    sweep.write_sweep_file(tmp_path, plan("dds"), None, None, None, [])
    assert "kept as sweep-" in capsys.readouterr().out
    assert len(list(tmp_path.glob("sweep-*.json"))) == 1
    assert make_table.main([str(tmp_path), "--no-dataset-metrics"]) == 0
    (earlier,) = tmp_path.glob("table-*.md")
    assert markdown_rows((tmp_path / "table.md").read_text())[2][:2] == ["DDS", "26.00 ± 1.41"]
    assert markdown_rows(earlier.read_text())[2][:2] == ["DDIM", "21.00 ± 1.41"]


def test_table_of_a_compare_folder_labels_methods_and_keeps_its_table(tmp_path, capsys) -> None:
    """Catches ``treg-exp table`` on a demo (``compare=``) folder labelling rows by the whole compare list or as
    ``? (?, ?)`` for a run that recorded no settings, and overwriting the folder's own table.md."""
    from treg_exp.reporting import make_table

    compare = "compare=['solver=ddim','solver=red']"
    fake_run(tmp_path / "solver=ddim", "ddim", "gauss_deblur", 10.0, "experiment=demo", compare)
    fake_run(tmp_path / "solver=red", "red", "gauss_deblur", 20.0, "experiment=demo", compare)
    (tmp_path / "table.md").write_text("the demo's own table\n")
    assert make_table.main([str(tmp_path), "--no-dataset-metrics"]) == 0
    assert (tmp_path / "table.md").read_text() == "the demo's own table\n"
    rows = markdown_rows((tmp_path / "pooled_table.md").read_text())
    assert [r[0] for r in rows[2:]] == ["DDIM", "RED"] and "?" not in capsys.readouterr().out


# --- labels that never mislead -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("model", "departures", "paper_shown"),
    [("sd14", [], True), ("tiny", [], False), ("sd14", ["solver.num_steps=2"], False)],
)
def test_paper_numbers_only_beside_the_papers_setting(tmp_path, model, departures, paper_shown) -> None:
    """Catches a smoke run of a paper preset (``model=tiny``, ``solver.num_steps=2`` on the command line) whose table
    passes for the preset's: its title and a footnote must name the departures, and no paper / Δ row may sit beside
    runs of a toy prior or of changed settings; with the paper's prior and no departure the paper row is there."""
    import json

    from treg_exp.reporting import tables

    fake_run(tmp_path / "sr8/psld/default", "psld", "sr8", 25.0, model=model)
    job = {"row": "PSLD", "column": "SR (×8)", "status": "run", "overrides": ["solver=psld", "task=sr8"]}
    job.update({"folder": "sr8/psld/default", "task": "sr8", "solver": "psld", "model": model})
    sweep = {
        "experiment": "p2l_table2_ffhq",
        "departures": departures,
        "title": "P2L Table 2",
        "reference": {"file": "reference/p2l_tables.csv", "dataset": "ffhq512"},
        "rows": ["PSLD"],
        "columns": ["SR (×8)"],
        "jobs": [job],
    }
    (tmp_path / "sweep.json").write_text(json.dumps(sweep))
    markdown = tables.to_markdown(tables.build([tmp_path], dataset_metrics=False))
    assert ("| *paper* | " in markdown) == paper_shown and ("| *Δ* | " in markdown) == paper_shown
    title = markdown.splitlines()[0]
    if departures:
        assert title == "**P2L Table 2 — NOT the preset's settings: solver.num_steps=2**"
        assert "depart from experiment=p2l_table2_ffhq by solver.num_steps=2" in markdown
    else:
        assert title == "**P2L Table 2**"
    assert ("not the paper's prior" in markdown) == (model == "tiny")


def test_readme_status_box_follows_the_demo() -> None:
    """Catches a README whose first screen hides what is verified and what is not (it was 250 lines down): right
    after the demo's table, a box names the checks (official-code parity, exact-posterior calibration) and what
    was never run here (real weights, GPU, the papers' numbers)."""
    readme = (ROOT / "README.md").read_text()
    box_start = readme.index("> **Status")
    assert readme.index("| solver=ddim |") < box_start < readme.index("## A real run")
    box = readme[box_start : readme.index("## A real run")]
    for words in ("official", "identical weights", "exact posterior", "real weights", "GPU", "papers' tables"):
        assert words in box, words


# --- runs that resume ----------------------------------------------------------------------------------------------
def test_the_same_command_resumes_in_the_same_folder(tmp_path) -> None:
    """Catches a single run whose default folder is new each time (a timestamp), so running the same command again
    starts over: the second run must find the first one's folder and solve nothing; another setting gets another
    folder, and a smoke run of a preset never shares the folder of its real run."""
    from tests.test_tables import run_cli
    from treg_exp.experiment.sweep import run_folder_name

    command = ["model=gaussian", "solver=posterior_mean", "data.resolution=32", "data.limit=1"]
    first = run_cli(*command, f"paths.output_root={tmp_path}")
    again = run_cli(*command, f"paths.output_root={tmp_path}")
    assert first.returncode == 0 and again.returncode == 0, again.stderr[-2000:]
    (folder,) = (tmp_path / "posterior_mean_gauss_deblur").iterdir()
    assert folder.name == "data.resolution=32,model=gaussian"
    assert "0 already done, 1 to solve" in first.stderr + first.stdout
    assert "1 already done, 0 to solve" in again.stderr + again.stdout
    preset = ["experiment=treg_sr16_readme"]
    assert run_folder_name(preset) != run_folder_name([*preset, "model=tiny", "solver.num_steps=2"])
    neutral = ["solver=treg", "task=sr16", "paths.output_root=x", "shard.index=1", "threads=2", "device=cuda"]
    assert run_folder_name(neutral) == "default"  # where and how it runs, not what it computes


def test_threads_per_job() -> None:
    """Catches jobs that each take every core when several share a machine (torch's default, 10× slower with 3
    jobs on 2 cores): the scheduler's or launcher's share wins over every core, OMP_NUM_THREADS is left to torch,
    and a bad value is one line."""
    from treg_exp.common.devices import thread_count
    from treg_exp.common.errors import UserError

    assert thread_count("auto", {}) is None  # one run alone: every core
    assert thread_count("auto", {"OMP_NUM_THREADS": "3", "SLURM_CPUS_PER_TASK": "8"}) is None  # torch follows it
    assert thread_count("auto", {"SLURM_CPUS_PER_TASK": "8"}, launcher_cpus=4) == 8
    assert thread_count("auto", {}, launcher_cpus=4) == 4
    assert thread_count(2, {"OMP_NUM_THREADS": "3"}) == 2
    with pytest.raises(UserError, match="threads must be auto or a positive integer"):
        thread_count("0", {})


def test_progress_counts_the_calls_of_the_image_being_solved(monkeypatch) -> None:
    """Catches progress that only counts whole images (minutes apart at SD scale): the steps bar must follow the
    prior's UNet calls during a solve, start from the solver's expected count, and take the measured count after."""
    import time

    from tqdm.auto import tqdm

    from treg_exp.experiment import progress
    from treg_exp.models.base import NetworkCounter

    monkeypatch.setattr(progress, "POLL_SECONDS", 0.01)
    shown: list[tuple[int, int | None]] = []
    original_refresh = tqdm.refresh

    def record(bar, *args, **kwargs):
        shown.append((bar.n, bar.total))
        return original_refresh(bar, *args, **kwargs)

    monkeypatch.setattr(tqdm, "refresh", record)
    counter = NetworkCounter()
    counter.add("unet", 2)  # calls made before the batch are not the batch's
    steps = progress.StepProgress(counter, calls_per_solve=10, enabled=True)
    with steps.batch(["astronaut"]):
        for _ in range(6):
            counter.add("unet", 2)
            time.sleep(0.05)
    assert shown and max(n for n, _ in shown) == 6 and {t for _, t in shown} == {10}
    assert steps.total == 6  # the next image's bar expects what this one made


# --- a cost plan before launching ----------------------------------------------------------------------------------
def test_plan_prices_every_job_without_running_anything(tmp_path, capsys) -> None:
    """Catches a plan that runs or writes something, leaves jobs out (the ADM rows had no figure), prints missing
    data or weights once per job instead of once, or gives GPU hours that are not the FLOP estimate they claim
    (A100 and H100 at one assumed utilisation differ exactly by their peak ratio)."""
    import re

    from treg_exp.experiment import cost
    from treg_exp.experiment.plan import main

    assert main(["experiment=p2l_table2_ffhq", f"paths.output_root={tmp_path}", "paths.data_root=/absent"]) == 0
    out = capsys.readouterr().out
    assert not any(tmp_path.iterdir())
    jobs = [line for line in out.splitlines() if line.startswith("  ") and "images ×" in line]
    assert len(jobs) == 40 and sum("model=adm_imagenet512" in j for j in jobs) == 12
    hours = {gpu: re.search(rf"≈ ([\d.]+) h.* on NVIDIA {gpu} \(FLOP estimate", out) for gpu in ("A100", "H100")}
    assert all(hours.values()), out
    ratio = float(hours["A100"].group(1)) / float(hours["H100"].group(1))
    peak = cost.GPU_PEAK_TFLOPS["H100"] / cost.GPU_PEAK_TFLOPS["A100"]
    assert abs(ratio - peak) < 0.02 * peak
    assert "jobs without figures" not in out  # every job priced, ADM included
    missing = [line for line in out.splitlines() if line.startswith("missing")]
    assert len(missing) == len(set(missing)) == 3 and "missing (40 jobs): data.root: folder not found" in out


def test_plan_of_a_toy_prior_is_one_line(capsys) -> None:
    """Catches per-job blocks of full-size hours for toy priors (tiny, gaussian), which cost seconds here."""
    from treg_exp.experiment.plan import main

    assert main(["model=gaussian", "solver=ddim,dds", "task=gauss_deblur,sr4", "data.resolution=32"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[1].startswith("cost: 4 jobs, 24 images") and "toy prior" in lines[1]


def test_a_table_preset_without_multirun_is_refused(tmp_path) -> None:
    """Catches ``python run.py experiment=<table>`` (``-m`` forgotten) silently running one default job: one line,
    exit 2, nothing written."""
    from tests.test_tables import run_cli

    result = run_cli("experiment=p2l_table2_ffhq", "model=tiny", f"paths.output_root={tmp_path}")
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
    assert "is a table (10 rows): run it with -m" in result.stderr and not any(tmp_path.iterdir())


# --- conventions of the ecosystem ----------------------------------------------------------------------------------
def test_wandb_environment_variables_are_honoured(tmp_path, monkeypatch, caplog) -> None:
    """Catches a logger whose config defaults override W&B's environment (``mode: online`` beat ``WANDB_MODE=offline``,
    so a run without a key warned about it and fell back): with the config's null keys, WANDB_MODE=offline logs
    offline with no warning, into WANDB_DIR, under WANDB_PROJECT; WANDB_MODE=disabled logs nothing; a key set in the
    config still wins."""
    pytest.importorskip("wandb", reason="the wandb package is an optional dependency (pip install -e '.[wandb]')")
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from tests.test_tracking import log_two_images

    for key, sub in (("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config"), ("WANDB_DATA_DIR", "data")):
        monkeypatch.setenv(key, str(tmp_path / sub))
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "scratch"))
    monkeypatch.setenv("WANDB_PROJECT", "my-project")
    config = OmegaConf.load(ROOT / "conf" / "logger" / "wandb.yaml")
    logger = instantiate(config)
    (tmp_path / "run").mkdir()  # the run directory exists once the run has claimed it
    log_two_images(logger, tmp_path / "run")
    assert logger.run is not None and logger.run.settings.mode == "offline"
    assert logger.run.project == "my-project" or logger.run.settings.project == "my-project"
    logger.finish({"metrics": {"psnr": {"mean": 1.0}}})
    assert "W&B" not in caplog.text and "API key" not in caplog.text
    assert list((tmp_path / "scratch" / "wandb").glob("offline-run-*")) and not (tmp_path / "run" / "wandb").exists()
    monkeypatch.setenv("WANDB_MODE", "disabled")
    quiet = instantiate(config)
    log_two_images(quiet, tmp_path / "run")
    assert quiet.run is None and quiet.mode == "disabled"
    assert instantiate(config, mode="offline").mode == "offline"  # the config's own value wins


def test_fetch_weights_without_network_is_one_line(tmp_path) -> None:
    """Catches ``scripts/fetch_weights.py`` ending in a traceback (or retrying for minutes) on a machine without
    network: one ``error:`` line naming what it needs (a machine with network, a login node), exit 2, nothing
    written; HF_HUB_OFFLINE is named when set; a gated model's refusal asks for HF_TOKEN."""
    import os
    import subprocess
    import sys

    script = str(ROOT / "scripts" / "fetch_weights.py")
    proxies = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    env = {k: v for k, v in os.environ.items() if k not in proxies}
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # a closed port: no Hub from here
    for extra, needed in (({}, "unreachable from this machine"), ({"HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE is set")):
        out = tmp_path / "weights"
        result = subprocess.run(
            [sys.executable, script, "--out", str(out)], env={**env, **extra}, capture_output=True, text=True
        )
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ") and needed in result.stderr
        assert "login node" in result.stderr and not out.exists()

    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import fetch_weights
    finally:
        sys.path.remove(str(ROOT / "scripts"))

    class Refused(Exception):
        response = type("Response", (), {"status_code": 401})()

    item = fetch_weights.Item("hf", "google/paligemma2-3b-mix-224", tmp_path)
    assert "HF_TOKEN" in fetch_weights.failure(item, Refused("401 Client Error"))
    assert "login node" in fetch_weights.failure(item, OSError("Connection reset by peer"))


def test_extending_guide_names_only_what_exists() -> None:
    """Catches a guide to adding a solver, prior, task or dataset that is missing a part or points at files, tests
    or functions that do not exist (a stale guide misleads more than none)."""
    import re

    guide = (ROOT / "docs" / "extending.md").read_text()
    for part in ("## A solver", "## A prior", "## A task", "## A dataset"):
        assert part in guide, part
    paths = set(re.findall(r"`((?:tests|treg_exp|conf|scripts|benchmarks)/[\w/]+\.(?:py|yaml))", guide))
    assert len(paths) > 20 and all((ROOT / p).is_file() for p in paths), [p for p in paths if not (ROOT / p).is_file()]
    for path, name in re.findall(r"`(tests/\w+\.py)::(\w+)`", guide):
        assert f"def {name}(" in (ROOT / path).read_text(), name
    core = (ROOT / "treg_exp" / "solvers" / "core.py").read_text()
    shared = re.search(r"\*\*Shared math\*\*(.*?)\n\n", guide, re.S).group(1)
    named = [n for n in re.findall(r"`(\w+)`", shared) if f"def {n}(" in core or n[0].islower()]
    assert len(named) > 8
    for name in named:
        if name not in ("solve_damped", "prox_l2"):  # the operator's, checked below
            assert f"def {name}(" in core, name
    operator = (ROOT / "treg_exp" / "operators" / "base.py").read_text()
    assert all(f"def {n}(" in operator for n in ("solve_damped", "prox_l2"))
    assert "docs/extending.md" in (ROOT / "README.md").read_text()


@pytest.mark.parametrize(
    ("command_line", "expected"),
    [
        (["experiment=p2l_table2_ffhq"], "out/p2l_table2_ffhq"),
        (["experiment=p2l_table2_ffhq", "model=tiny", "shard.count=2"], "out/p2l_table2_ffhq+model=tiny"),
        (["solver=ddim,dds", "data.limit=3"], "out/sweeps/solver=ddim,dds"),
    ],
)
def test_sweep_folder_of_a_preset_a_smoke_run_and_a_plain_sweep(command_line, expected) -> None:
    """Catches a smoke run of a preset writing into the real run's folder, a plain sweep sharing ``sweeps/`` with
    every other, neutral overrides (shards, image count) renaming a folder, and the folder growing a second suffix
    once the sweeper has set it (the callbacks at the end ask again)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    from treg_exp.experiment.sweep import sweep_dir_of

    GlobalHydra.instance().clear()
    fixed = [o for o in command_line if "," not in o]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[*fixed, "paths.output_root=out"], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.overrides.task = [*command_line, "paths.output_root=out"]
    folder = sweep_dir_of(cfg)
    assert str(folder) == expected
    with open_dict(cfg):
        cfg.hydra.sweep.dir = str(folder)
    assert sweep_dir_of(cfg) == folder
