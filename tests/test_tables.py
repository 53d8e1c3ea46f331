"""Paper tables end to end: dataset lists and prepare scripts, the table sweeper, cost formulas, pooling shards,
resuming a killed sweep, make_table and the HTML report."""

import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from treg_exp.common import seeding
from treg_exp.common.errors import UserError
from treg_exp.data import listed, prepare
from treg_exp.data.images import to_tensor
from treg_exp.experiment import cost, sweep
from treg_exp.experiment.app import build_runner
from treg_exp.metrics.base import DatasetMetric
from treg_exp.metrics.fid import frechet
from treg_exp.reporting import make_table, tables

ROOT = Path(__file__).parents[1]
CONF = ROOT / "conf"
FAST = ["data=samples", "model=tiny", "data.limit=2", "data.resolution=32", "solver.num_steps=2", "metrics=fast"]


def run_cli(*args: str, timeout: float = 600, **popen) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )


# --- the shipped lists and the prepare scripts --------------------------------------------------------------------
def test_shipped_lists_are_the_papers_sets():
    """The lists hold exactly the papers' images: a wrong range, class or rule would change every number."""
    ffhq = [name for name, _ in listed.read_list(listed.resolve_list("ffhq_1k"))]
    assert ffhq == [f"{i:05d}.png" for i in range(1000)]
    food = listed.read_list(listed.resolve_list("food101_treg"))
    classes = [name.split("/")[0] for name, _ in food]
    assert len(food) == 500 and classes.count("fried_rice") == 250 and classes.count("ice_cream") == 250
    assert len({name for name, _ in food}) == 500
    imagenet = [line.split("\t") for line in listed.resolve_list("imagenet_p2l_1k").read_text().splitlines()]
    imagenet = [row for row in imagenet if not row[0].startswith("#")]
    names = [row[0] for row in imagenet]
    assert len(names) == 1000 == len(set(names)) and names == sorted(names)  # every 10th of a sorted list stays sorted
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    assert all(_IMAGENET_CATEGORIES[int(index)] == name for _, _, index, name in imagenet)


def test_every_tenth_rule(tmp_path):
    """P2L's rule on another 10k list: index 0, 10, 20, ... after sorting by file name (not by list order)."""
    names = [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(100, 0, -1)]  # reversed on purpose
    (tmp_path / "10k.txt").write_text("".join(f"/n0/{n} 3\n" for n in names))
    out = prepare.every_tenth(tmp_path / "10k.txt", tmp_path / "1k.txt")
    picked = [n for n, _ in listed.read_list(out)]
    assert picked == [f"ILSVRC2012_val_{i:08d}.png" for i in range(1, 101, 10)]


def write_source_images(folder: Path, names: list[str], seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for i, name in enumerate(names):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        size = (90 + 10 * i, 70)  # not square: the centre crop matters
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def test_prepare_writes_the_listed_images_and_the_loader_checks_them(tmp_path):
    """prepare = the loader's own crop and resize; a missing, resized or altered file stops with one line naming it."""
    src, out = tmp_path / "download" / "images", tmp_path / "data"
    write_source_images(src, ["fried_rice/11.jpg", "ice_cream/7.jpg", "ice_cream/9.jpg"])
    (tmp_path / "list.txt").write_text("fried_rice/11.png\nice_cream/7.png\n")
    spec = prepare.DATASETS["food101"]
    assert prepare.main("food101", ["--src", str(src), "--out", str(out), "--list", str(tmp_path / "list.txt")]) == 0
    folder = out / spec.folders[512]
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png")) == [
        "fried_rice/11.png",
        "ice_cream/7.png",
    ]
    prepared = to_tensor(Image.open(folder / "ice_cream" / "7.png"), 512)
    direct = to_tensor(Image.open(src / "ice_cream" / "7.jpg"), 512)
    torch.testing.assert_close(prepared, direct, rtol=0, atol=0)

    dataset = listed.ListedImageFolder(str(folder), str(tmp_path / "list.txt"), prompt="a photo of {label}")
    assert [s.prompt for s in (dataset[0], dataset[1])] == ["a photo of fried rice", "a photo of ice cream"]
    assert (dataset[0].label, dataset[0].label_set) == ("fried_rice", "list")  # what prompt=mismatch reads

    target = folder / "ice_cream" / "7.png"
    data = bytearray(target.read_bytes())
    data[-20] ^= 0xFF  # same size, other bytes: only the hash sees it
    target.write_bytes(bytes(data))
    assert listed.first_mismatch(folder, ["fried_rice/11.png", "ice_cream/7.png"], "size") is None
    with pytest.raises(UserError, match=r"ice_cream/7.png does not match its SHA-256"):
        prepare.verify(spec, out, [512], str(tmp_path / "list.txt"))
    target.write_bytes(bytes(data[:-5]))
    with pytest.raises(UserError, match=r"ice_cream/7.png has \d+ bytes"):
        len(listed.ListedImageFolder(str(folder), str(tmp_path / "list.txt")))
    (folder / "fried_rice" / "11.png").unlink()
    with pytest.raises(UserError) as error:
        len(listed.ListedImageFolder(str(folder), str(tmp_path / "list.txt"), prepare_hint="prepare_food101.py"))
    assert "fried_rice/11.png is missing" in str(error.value) and "prepare_food101.py" in str(error.value)
    assert "\n" not in str(error.value)


def test_prepare_names_the_first_missing_source(tmp_path, capsys):
    write_source_images(tmp_path / "src", ["00000.png"])
    (tmp_path / "list.txt").write_text("00000.png\n00001.png\n00002.png\n")
    status = prepare.main(
        "ffhq", ["--src", str(tmp_path / "src"), "--out", str(tmp_path), "--list", str(tmp_path / "list.txt")]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "00001.*" in err[0] and "2 of the 3" in err[0]
    assert not (tmp_path / "ffhq512").exists()  # nothing written before every source is found


# --- the sweeper ---------------------------------------------------------------------------------------------------
def sweep_plan(*overrides: str, tmp_path: Path):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        fixed = [o for o in overrides if "," not in o]  # Hydra composes a multirun's master config without sweeps
        cfg = compose("config", overrides=[*fixed, f"paths.output_root={tmp_path}"], return_hydra_config=True)
        loader = GlobalHydra.instance().config_loader()
        s = cfg.hydra.sweeper
        return cfg, sweep.plan_sweep(
            cfg, loader, [*overrides, f"paths.output_root={tmp_path}"], s.params, s.rows, s.columns, s.cells
        )


@pytest.mark.parametrize(
    "experiment",
    sorted(p.stem for p in (CONF / "experiment").glob("*.yaml") if "rows:" in p.read_text()),
)
def test_every_cell_of_a_table_preset_composes_or_is_skipped_with_its_reason(experiment, tmp_path):
    """Every row x column of a preset composes (its solver instantiates), or names the missing config option."""
    cfg, plan = sweep_plan(f"experiment={experiment}", tmp_path=tmp_path)
    assert len(plan.jobs) == len(plan.rows) * max(len(plan.columns), 1)
    for job in plan.jobs:
        if job.status == "skipped":
            assert job.reason.endswith("is not in this checkout") and "\n" not in job.reason
            continue
        assert job.folder.startswith(f"{job.task}/{job.solver}/")
        instantiate(job.config.solver)
        instantiate(job.config.task)
    folders = [j.folder for j in plan.to_run]
    assert len(set(folders)) == len(folders)
    assert {j.solver for j in plan.to_run} <= {"treg", "ddim"} | {p.stem for p in (CONF / "solver").glob("*.yaml")}


def test_a_row_whose_solver_or_model_is_missing_is_skipped_with_its_reason(tmp_path):
    """A preset row naming a solver (or model) this checkout lacks is skipped with one line naming the missing file,
    and the present rows still run: catches a missing method turning a whole table into an error."""
    cfg, _ = sweep_plan("experiment=p2l_table2_ffhq", tmp_path=tmp_path)
    rows = [{"Missing": "solver=not_a_solver"}, {"Gone": "solver=treg model=not_a_model"}, {"TReg": "solver=treg"}]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        s = cfg.hydra.sweeper
        plan = sweep.plan_sweep(cfg, loader, ["experiment=p2l_table2_ffhq"], s.params, rows, s.columns, s.cells)
    reasons = {j.row: j.reason for j in plan.jobs if j.status == "skipped"}
    assert reasons == {
        "Missing": "solver=not_a_solver: conf/solver/not_a_solver.yaml is not in this checkout",
        "Gone": "model=not_a_model: conf/model/not_a_model.yaml is not in this checkout",
    }
    assert {j.row for j in plan.to_run} == {"TReg"} and len(plan.to_run) == len(plan.columns)


def test_sweep_plan_merges_layers_and_names_folders(tmp_path):
    """The command line beats rows (model=tiny replaces a row's ADM), cells add to their one cell only, and folders
    are fixed by a job's settings (so a relaunch finds them), shards in their own subfolder."""
    _, plan = sweep_plan("experiment=p2l_table2_ffhq", "model=tiny", tmp_path=tmp_path)
    dps = [j for j in plan.jobs if j.row == "DPS"]
    assert all("model=tiny" in j.overrides and "model=adm_imagenet512" not in j.overrides for j in dps)
    gauss = next(j for j in plan.to_run if j.row.startswith("TReg") and j.column == "Deblur (gauss)")
    assert gauss.folder == "gauss_deblur/treg/model=tiny,task.kernel_sigma=3.0"
    assert sweep.folder_for("sr8", "treg", ["solver.cfg_scale=0", "shard.index=1", "device=cuda"], 1, 2) == (
        "sr8/treg/solver.cfg_scale=0/shard-1-of-2"
    )
    _, mismatch = sweep_plan("experiment=treg_table3_mismatch", tmp_path=tmp_path)
    lrs = {(j.row, j.column): [o for o in j.overrides if o.startswith("solver.null_lr")] for j in mismatch.jobs}
    assert lrs[("TReg", "Deblur (gauss)")] == ["solver.null_lr=1.0e-3"] and lrs[("TReg", "SR (×16)")] == []
    assert all(j.config.prompt.swaps.fried_rice == "a photo of spaghetti" for j in mismatch.to_run)


def test_one_gpu_per_job(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    assert sweep.pin_gpu_of_job(True, 5) == "1" and os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    assert sweep.pin_gpu_of_job(False, 2) is None


# --- the cost estimate ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_prior():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["model=tiny"])
    return instantiate(cfg.model).load("cpu")


@pytest.mark.parametrize(
    "overrides",
    [
        ["solver=treg", "solver.num_steps=7"],
        ["solver=treg", "solver.num_steps=6", "solver.cfg_scale=0", "solver.adaptive_negation=false"],
        ["solver=treg", "solver.num_steps=5", "solver.use_dps=true", "solver.trajectory_every=2"],
        ["solver=treg", "solver.num_steps=9", "solver.dc_grid=null", "solver.dc_until=5"],
        ["solver=ddim", "solver.num_steps=4"],
        ["solver=ddim", "solver.num_steps=3", "solver.guidance_scale=0"],
        ["solver=p2l", "solver.num_steps=5", "solver.prompt_iters=2", "solver.project_every=2"],
        ["solver=p2l", "solver.num_steps=3", "solver.project_every=1", "solver.trajectory_every=2"],
        ["solver=p2l", "solver.variant=treg_repo", "solver.num_steps=4"],
    ],
)
def test_cost_formula_counts_what_the_solver_runs(overrides, tiny_prior):
    """The estimate's network evaluations equal the prior's counter on a real solve (catches a formula that drifts
    from its solver: a missed decode, the CFG pair counted at ω = 0, DC steps on the wrong grid, DPS backward passes
    through UNet and decoder missed or counted on the DC steps)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["model=tiny", "task=sr4", *overrides])
    prior = tiny_prior
    solver, operator = instantiate(cfg.solver), instantiate(cfg.task)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    streams = seeding.batch_generators(0, ["a"], seeding.MEASUREMENT)
    operator = operator.draw(streams, x.shape)
    y = operator.measure(x, streams)
    prior.reset_counter()
    solver.solve(y, operator, prior, ["a photo"], seeding.batch_generators(0, ["a"], seeding.SOLVER), x.shape)
    passes = cost.solver_passes(OmegaConf.to_container(cfg.solver), overrides[0].split("=")[1], {})
    for name in cost.COUNT_NAMES:
        assert getattr(passes, name) == prior.counter.get(name, 0), name


def test_hours_from_benchmark_figures():
    """Hours = Σ passes × seconds per pass, scaled by pixel count; a solver without formula uses measured counts."""
    results = {
        "machines": {
            "cpu:x": {
                "name": "x",
                "device": "cpu",
                "networks": {
                    "sd15": {
                        "seconds": {
                            "unet_1row": 1.0,
                            "unet_2rows": 1.5,
                            "decode": 2.0,
                            "encode": 3.0,
                            "clip_image": 0.5,
                        }
                    }
                },
            }
        },
        "solvers": {"mystery": {"num_steps": 10, "counts": {"unet_calls": 10, "unet_rows": 10, "decode_rows": 1}}},
    }
    passes = cost.Passes(unet_calls=4, unet_rows=6, decode_rows=1, encode_rows=1, clip_image_rows=2)
    # 2 pair calls, 2 single calls: 2*1.5 + 2*1 + 2 + 3 at 512 px, CLIP unscaled
    assert cost.seconds_per_image(passes, results["machines"]["cpu:x"]["networks"]["sd15"]["seconds"], 512) == 11.0
    assert cost.seconds_per_image(passes, results["machines"]["cpu:x"]["networks"]["sd15"]["seconds"], 256) == 3.5
    measured = cost.solver_passes({"_target_": "x.Mystery", "num_steps": 30}, "mystery", results)
    assert measured.unet_calls == 30 and measured.decode_rows == 3 and measured.source.startswith("benchmarks")


def test_backward_passes_are_priced_by_their_measured_seconds_or_the_factor():
    """A differentiated row adds its network's measured backward seconds, else BACKWARD_FACTOR × the forward
    seconds (catches backward passes left out of the hours, or the encoder's priced as the decoder's)."""
    seconds = {"unet_1row": 1.0, "unet_2rows": 1.5, "decode": 2.0, "encode": 3.0, "clip_image": 0.5}
    passes = cost.Passes(unet_calls=2, unet_rows=2, decode_rows=2, unet_grad_rows=2, encode_grad_rows=1)
    forward = 2 * 1.0 + 2 * 2.0
    assert cost.seconds_per_image(passes, seconds, 512) == forward + 2 * 2 * 1.0 + 1 * 2 * 3.0
    measured = {**seconds, "unet_backward": 4.0, "encode_backward": 7.0}
    assert cost.seconds_per_image(passes, measured, 512) == forward + 2 * 4.0 + 1 * 7.0


# --- shards, FID and make_table ------------------------------------------------------------------------------------
class PixelFrechet(DatasetMetric):
    """A Fréchet distance between the mean colours of recon/ and gt/ images — FID's computation on features that
    need no weights, so that pooling can be tested here."""

    def __call__(self, recon_dir, gt_dir):
        def feats(folder):
            files = sorted(Path(folder).glob("*.png"))
            return np.stack(
                [np.asarray(Image.open(f).convert("RGB").resize((1, 1), Image.BOX), np.float64).ravel() for f in files]
            )

        ref = feats(gt_dir)
        return {"fid": frechet(feats(recon_dir), ref.mean(0), np.cov(ref, rowvar=False)), "fid_images": 4.0}


def run_oracle(run_dir: Path, *overrides: str) -> None:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                "model=gaussian",
                "solver=posterior_sample",
                "task.kernel_size=9",
                "task.padding=circular",
                "data.resolution=32",
                "data.prompt=''",
                "data.limit=4",
                "metrics=fast",
                *overrides,
            ],
        )
    OmegaConf.set_struct(cfg, False)
    cfg.metrics.dataset = [{"_target_": "tests.test_tables.PixelFrechet"}]
    cfg.paths.run_dir = str(run_dir)
    run_dir.mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / "config.yaml")
    runner = build_runner(
        cfg,
        run_dir,
        {"data": "samples", "task": "gauss_deblur", "model": "gaussian", "solver": "posterior_sample"},
        list(overrides),
    )
    runner.progress = False
    runner.run()


def test_two_shards_pool_to_the_unsharded_run(tmp_path):
    """Merged shards give the same per-image metrics and the same FID as one run: FID is recomputed over the union of
    the shards' images, never averaged (the mean of the shards' own FIDs differs)."""
    run_oracle(tmp_path / "whole")
    for index in range(2):
        run_oracle(tmp_path / "sharded" / f"shard{index}", "shard.count=2", f"shard.index={index}")
    whole = tables.build([tmp_path / "whole"])
    sharded = tables.build([tmp_path / "sharded"])
    (cell_whole,), (cell_sharded,) = whole.cells.values(), sharded.cells.values()
    assert len(cell_sharded.runs) == 2 and sorted(cell_sharded.rows) == sorted(cell_whole.rows)
    for image_id, row in cell_whole.rows.items():
        assert float(cell_sharded.rows[image_id]["psnr"]) == float(row["psnr"])
    assert cell_sharded.stats["psnr"]["mean"] == pytest.approx(cell_whole.stats["psnr"]["mean"], rel=1e-12)
    fid = json.loads((tmp_path / "whole" / "summary.json").read_text())["dataset_metrics"]["fid"]
    assert cell_whole.dataset["fid"] == fid and cell_sharded.dataset["fid"] == pytest.approx(fid, rel=1e-9)
    shard_fids = [
        PixelFrechet()(tmp_path / "sharded" / f"shard{i}" / "recon", tmp_path / "sharded" / f"shard{i}" / "gt")["fid"]
        for i in range(2)
    ]
    assert abs(sum(shard_fids) / 2 - fid) > 1e-6


def test_p2l_table_sweep_runs_the_grid_and_make_table_writes_both_tables(tmp_path):
    """`run.py -m experiment=p2l_table2_ffhq ...` runs every row × column (every method of the table exists) and
    make_table lays it out as the paper, with the paper's numbers and the report.
    Hydra's basic launcher: submitit's local one starts every job as its own Python process at once (8 torch imports
    on this 2-core machine); the job function is the same."""
    result = run_cli("-m", "experiment=p2l_table2_ffhq", *FAST, f"paths.output_root={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "40 jobs, 40 to run, 0 skipped" in result.stdout
    # a smoke run of the preset (FAST changes the prior and the steps): its own folder, named by what it changes
    (sweep_dir,) = tmp_path.glob("p2l_table2_ffhq+*")
    assert sweep_dir.name == "p2l_table2_ffhq+" + ",".join(sorted(o for o in FAST if not o.startswith("data.limit")))
    plan = json.loads((sweep_dir / "sweep.json").read_text())
    ran = [j for j in plan["jobs"] if j["status"] == "run"]
    assert len(ran) == 40 and all(len(list((sweep_dir / j["folder"] / "recon").glob("*.png"))) == 2 for j in ran)
    assert make_table.main([str(sweep_dir)]) == 0
    markdown = (sweep_dir / "table.md").read_text()
    assert "not run" not in markdown
    lines = markdown.splitlines()
    assert any(line.startswith("| PSLD |") for line in lines)
    # a smoke run: said in the title, and the paper's numbers are not set beside it (bold/± checked below)
    assert lines[0].startswith("**P2L Table 2") and "NOT the preset's settings: data.resolution=32" in lines[0]
    assert "| *paper* |" not in markdown
    assert "**" in markdown and "± " in markdown
    latex = (sweep_dir / "table.tex").read_text()
    assert "\\textit{paper}" not in latex and "SR (×8)" in latex and "\\textbf{" in latex
    page = (sweep_dir / "report.html").read_text()
    methods = len({j["row"] for j in ran})
    assert page.count('<img src="data:image/png;base64,') == 4 * 2 * (methods + 2)  # tasks × images × (y, methods, gt)


def test_killed_sweep_resumes_and_treg_table(tmp_path):
    """A sweep killed mid-way and launched again finishes without redoing finished images; make_table then writes
    the TReg table, saying that the paper's numbers could not be retrieved."""
    args = [
        sys.executable,
        str(ROOT / "run.py"),
        "-m",
        "experiment=treg_table1_sr16",
        *FAST,
        f"paths.output_root={tmp_path}",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    sweep_dir = tmp_path / ("treg_table1_sr16+" + ",".join(sorted(o for o in FAST if not o.startswith("data.limit"))))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not list(sweep_dir.glob("*/*/*/rows/*.json")):
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    # finished = recorded in rows/ (the row is written after the image's PNG: a PNG without its row is redone)
    finished = {
        png: png.stat().st_mtime_ns
        for row in sweep_dir.glob("*/*/*/rows/*.json")
        if (png := row.parent.parent / "recon" / f"{row.stem}.png").exists()
    }
    assert finished, "the sweep was killed before it finished an image"
    result = run_cli(*args[2:])
    assert result.returncode == 0, result.stderr[-3000:]
    assert all(p.stat().st_mtime_ns == t for p, t in finished.items())  # not redone
    jobs = [j for j in json.loads((sweep_dir / "sweep.json").read_text())["jobs"] if j["status"] == "run"]
    assert len(jobs) == 8 and all(len(list((sweep_dir / j["folder"] / "recon").glob("*.png"))) == 2 for j in jobs)
    assert make_table.main([str(sweep_dir)]) == 0
    markdown = (sweep_dir / "table.md").read_text()
    assert "| TReg w/o AN |" in markdown and "could not be retrieved" in markdown


# --- the report ----------------------------------------------------------------------------------------------------
def test_report_plots_a_one_dimensional_sweep(tmp_path):
    """Runs differing in one numeric override get a metric-vs-value plot whose points are the cells' means."""
    for value in ("0.5", "2.0"):
        run_oracle(tmp_path / value, f"task.kernel_sigma={value}")
    table = tables.build([tmp_path], dataset_metrics=False)
    plots = tables_report_plots(table)
    assert len(plots) == 1 and plots[0][1] == "task.kernel_sigma"
    page = Path(tables_write_report(table, tmp_path / "report.html")).read_text()
    svg = page[page.index("<svg") : page.index("</svg>") + 6]
    root = ET.fromstring(svg)
    circles = [c for c in root.iter() if c.tag.endswith("circle")]
    assert len(circles) == 2


def tables_report_plots(table):
    from treg_exp.reporting import report

    return report.sweeps_1d(table)


def tables_write_report(table, path):
    from treg_exp.reporting import report

    return report.write_report(table, path)
