"""Prompts as an input (issue 22): the prompt sources, the caption cache, the tiny captioner, and the effect of the
prompt on the solvers of the exact Gaussian prior."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from PIL import Image

from treg_exp.common.errors import UserError
from treg_exp.data.listed import ListedImageFolder, read_list, resolve_list
from treg_exp.experiment.app import build_runner
from treg_exp.prompts.caption import CACHE_FILE, fit_to_tokens
from treg_exp.prompts.captioners import TinyCaptioner
from treg_exp.prompts.sources import ClassNamePrompt, MismatchPrompt

ROOT = Path(__file__).parents[1]
#: the exact Gaussian prior, which reads any caption as its null mean, on 32-px photos: a run takes a second
CAPTIONED = [
    "model=gaussian",
    "model.unknown_prompt=null_mean",
    "solver=posterior_mean",
    "task=gauss_deblur",
    "task.kernel_size=9",
    "task.kernel_sigma=1.5",
    "task.padding=circular",
    "data=samples",
    "data.resolution=32",
    "data.limit=4",
    "metrics=fast",
    "prompt=caption",
    "prompt/captioner=tiny",
]


def make_runner(run_dir: Path, cache_dir: Path, *overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[*CAPTIONED, f"prompt.cache_dir={cache_dir}", *overrides])
    OmegaConf.set_struct(cfg, False)
    cfg.paths.run_dir = str(run_dir)
    runner = build_runner(cfg, run_dir)
    runner.progress = False
    return runner


def captioned_rows(runner) -> tuple[int, dict[str, str]]:
    """Run; return the captioner's rows (images captioned) and each image's prompt from its row."""
    runner.run()
    rows = {p.stem: json.loads(p.read_text()) for p in (runner.run_dir / "rows").glob("*.json")}
    return runner.prompt_source.captioner.counter["captioner_rows"], {i: r["prompt"] for i, r in rows.items()}


def test_the_cache_captions_each_image_once_across_solvers_and_is_invalidated_by_task_or_captioner(tmp_path):
    """A second solver on the same data x task x captioner runs no captioner pass and solves with the same
    prompts (catches a cache keyed by the run directory or the solver, or not read at all); a changed task or
    captioner captions again (catches a stale cache: captions of another measurement or another model)."""
    cache = tmp_path / "cache"
    first, prompts = captioned_rows(make_runner(tmp_path / "a", cache))
    assert first == 4 and len(prompts) == 4 and all(prompts.values())
    assert len(set(prompts.values())) > 1  # captions depend on the image
    second, again = captioned_rows(make_runner(tmp_path / "b", cache, "solver=posterior_sample"))
    assert second == 0 and again == prompts
    [cache_file] = cache.glob(f"*/{CACHE_FILE}")
    assert cache_file.read_text().splitlines()[0] == (
        "id,prompt,source,captioner,revision,task,view,seed,input_sha256,key"
    )

    other_task, _ = captioned_rows(make_runner(tmp_path / "c", cache, "task.kernel_sigma=3.0"))
    other_captioner, _ = captioned_rows(make_runner(tmp_path / "d", cache, "prompt.captioner.seed=1"))
    assert other_task == 4 and other_captioner == 4
    # a larger subset reuses the captions it has and captions only the new image
    more, _ = captioned_rows(make_runner(tmp_path / "e", cache, "data.limit=5"))
    assert more == 1


def test_a_killed_captioning_run_resumes_without_captioning_finished_images(tmp_path, monkeypatch):
    """The first captioner batch is on disk when the second one dies; the rerun captions only the images of the
    batch that died (catches a cache written once at the end, or rewritten without the rows already there)."""
    cache = tmp_path / "cache"
    runner = make_runner(tmp_path / "a", cache, "prompt.captioner.batch_size=2")
    original = TinyCaptioner._generate
    calls = []

    def dies_on_second_batch(self, images):
        calls.append(len(images))
        if len(calls) == 2:
            raise KeyboardInterrupt  # the job is killed
        return original(self, images)

    monkeypatch.setattr(TinyCaptioner, "_generate", dies_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        runner.run()
    monkeypatch.setattr(TinyCaptioner, "_generate", original)
    assert not (tmp_path / "a" / "rows").exists() or not list((tmp_path / "a" / "rows").glob("*.json"))
    resumed, prompts = captioned_rows(make_runner(tmp_path / "a", cache, "prompt.captioner.batch_size=2"))
    assert resumed == 2 and len(prompts) == 4
    fresh, reference = captioned_rows(make_runner(tmp_path / "b", tmp_path / "fresh"))
    assert fresh == 4 and prompts == reference  # the resumed captions are those of an uninterrupted run


def test_captioning_is_deterministic_and_independent_of_the_batch(tmp_path):
    """The same input twice gives the same caption, and captioning 4 images one at a time gives the captions and
    cache rows of one batch of 4 (catches sampling instead of greedy decoding, or one image's caption leaking into
    another's through padding or batched attention)."""

    def cache_rows(batch_size: int, cache: Path) -> list[str]:
        captioned_rows(
            make_runner(tmp_path / f"run{batch_size}{cache.name}", cache, f"prompt.captioner.batch_size={batch_size}")
        )
        [path] = cache.glob(f"*/{CACHE_FILE}")
        return sorted(path.read_text().splitlines())

    batched = cache_rows(4, tmp_path / "four")
    assert batched == cache_rows(1, tmp_path / "one")
    assert batched == cache_rows(4, tmp_path / "again")
    captioner = TinyCaptioner(batch_size=4)
    captioner.load(torch.device("cpu"))
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert captioner.caption(images) == captioner.caption(images)


def test_class_name_gives_the_imagenet_synset_names_of_an_independent_mapping(tmp_path):
    """``prompt=class_name`` on the shipped ImageNet list, read through the dataset, is "a photo of a <name>" with
    the name of torchvision's ImageNet-1k categories at the list's class index; and the list's (WordNet id, index)
    pairs follow LOC_synset_mapping's order (indices are the sorted WordNet ids). Catches a label column read from
    the wrong place, underscores left in, or a list whose ids and names disagree."""
    from torchvision.models import ResNet50_Weights

    categories = ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
    path = resolve_list("imagenet_p2l_1k")
    entries = [line.split("\t") for line in path.read_text().splitlines() if line and not line.startswith("#")]
    by_wnid = sorted({(wnid, int(index)) for _, wnid, index, _ in entries})
    assert [index for _, index in by_wnid] == sorted(index for _, index in by_wnid)
    for name, _ in read_list(path):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    dataset = ListedImageFolder(str(tmp_path), "imagenet_p2l_1k", resolution=8, verify="none")
    source = ClassNamePrompt(template="a photo of a {name}", templates={"food101_treg": "a photo of {name}, food"})
    prompts = source.prompts([dataset[k] for k in range(len(dataset))])
    assert len(prompts) == 1000
    assert prompts == [f"a photo of a {categories[int(index)]}" for _, _, index, _ in entries]


def test_food101_template_mismatch_swaps_and_unlabelled_images(tmp_path):
    """Food-101's list takes its own template; TReg's swaps replace exactly the listed classes; a dataset without
    classes is one line (catches the ImageNet template applied to every list, or a silent empty prompt)."""
    from treg_exp.data.base import Sample

    image = torch.zeros(3, 4, 4)
    rice = Sample("a", image, "a photo of fried rice", label="fried_rice", label_set="food101_treg")
    cream = Sample("b", image, "a photo of ice cream", label="ice_cream", label_set="food101_treg")
    cake = Sample("c", image, "a photo of cake", label="cake", label_set="food101_treg")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        from hydra.utils import instantiate

        class_name = instantiate(compose("config", overrides=["prompt=class_name"]).prompt)
        mismatch = instantiate(compose("config", overrides=["prompt=mismatch"]).prompt)
    assert class_name.prompts([rice]) == ["a photo of fried rice, a type of food"]
    assert mismatch.prompts([rice, cream, cake]) == ["a photo of spaghetti", "a photo of macarons", "a photo of cake"]
    swaps = tmp_path / "swaps.csv"
    swaps.write_text("label,prompt\ncake,a photo of soup\n")
    assert MismatchPrompt({}, str(swaps)).prompts([cake]) == ["a photo of soup"]
    with pytest.raises(UserError, match="needs each image's class"):
        class_name.prompts([Sample("d", image, "x")])


def test_a_caption_longer_than_the_text_encoder_takes_is_cut_with_a_warning(caplog):
    """CLIP reads 77 tokens with its start and end tokens: a longer caption is cut to 75 and the cut is logged
    (catches a caption silently cut by the tokenizer, so that the recorded prompt is not the one used)."""
    from treg_exp.models.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    long = " ".join(["photo"] * 100)
    cut = fit_to_tokens(long, tokenizer, "img")
    assert len(tokenizer(cut, add_special_tokens=False).input_ids) == 75 and long.startswith(cut)
    assert "has 100 tokens" in caplog.text
    assert fit_to_tokens("a photo", tokenizer, "img") == "a photo"


def gaussian_error(tmp_path: Path, solver: str, prompt: list[str]) -> float:
    GlobalHydra.instance().clear()
    overrides = [
        "model=gaussian",
        "data=gaussian",
        "data.prompt=red",
        "data.num_images=2",
        "data.resolution=16",
        "task=inpaint_box",
        "task.box_fraction=0.8",  # most of the image is hidden: the prior (its prompt) decides it
        f"solver={solver}",
        "metrics=fast",
        *prompt,
    ]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    OmegaConf.set_struct(cfg, False)
    run_dir = tmp_path / f"{solver}_{len(prompt)}"
    cfg.paths.run_dir = str(run_dir)
    runner = build_runner(cfg, run_dir)
    runner.progress = False
    summary = runner.run()
    return summary["metrics"]["psnr"]["mean"]


@pytest.mark.parametrize("solver", ["posterior_mean", "treg", "p2l"])
def test_on_the_exact_gaussian_prior_the_right_prompt_beats_a_mismatched_one(tmp_path, solver):
    """Images drawn from the prior of the prompt "red"; 64 % of each image hidden (box inpainting). With the right
    prompt the solver's PSNR is more than 1 dB above that with ``prompt=mismatch`` naming "blue" (measured: about
    2-2.7 dB for each solver), through the whole path (config group, runner, row). Catches a prompt source that
    never reaches the solver (both runs would be equal) or one that reaches it swapped."""
    right = gaussian_error(tmp_path, solver, [])
    wrong = gaussian_error(tmp_path, solver, ["prompt=mismatch", "+prompt.swaps.red=blue"])
    assert right > wrong + 1.0, (right, wrong)


def test_missing_captioner_weights_are_one_line_in_seconds_before_anything_is_written(tmp_path):
    """``prompt=caption prompt/captioner=paligemma`` with an empty ``paths.weights``: exit 2 with one ``error:``
    line naming the model and the fetch_weights command, within seconds (the captioner's files are checked before
    the prior loads), and no run output (catches a captioner loaded after the solve began, or a traceback)."""
    from tests.test_runner import run_cli

    started = time.monotonic()
    result = run_cli(
        "solver=treg",
        "task=sr16",
        "prompt=caption",
        "prompt/captioner=paligemma",
        f"paths.weights={tmp_path / 'empty'}",
        f"hydra.run.dir={tmp_path / 'run'}",
        timeout=120,
    )
    elapsed = time.monotonic() - started
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr[-2000:]
    assert "google/paligemma2-3b-mix-224" in errors[0] and "fetch_weights.py --out DIR --models paligemma" in errors[0]
    assert "prompt.captioner.local_files_only=false" in errors[0]
    assert "Traceback" not in result.stderr and not (tmp_path / "run" / "rows").exists()
    assert elapsed < 60, f"took {elapsed:.1f} s"


def test_fetch_weights_stages_each_captioner_where_its_config_looks(tmp_path):
    """Every Hub captioner config names a model that ``fetch_weights.py --models <name>`` fetches into the cache
    ``paths.weights`` points the captioner at (catches a config and the script disagreeing on a model id)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("fetch_weights", ROOT / "scripts" / "fetch_weights.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["fetch_weights"] = module
    spec.loader.exec_module(module)
    from treg_exp.models.loading import hf_cache_dir

    for path in sorted((ROOT / "conf" / "prompt" / "captioner").glob("*.yaml")):
        config = OmegaConf.load(path)
        if not config._target_.endswith("HubCaptioner"):
            continue
        items = [i for i in module.plan(tmp_path, [path.stem]) if i.source == config.model_id]
        assert len(items) == 1, path.name
        (tmp_path / "huggingface" / "hub").mkdir(parents=True, exist_ok=True)
        assert str(items[0].target) == hf_cache_dir(tmp_path)


def test_the_report_shows_each_images_prompt_under_its_reconstruction(tmp_path):
    """The HTML report of a captioned run prints, under each reconstruction, the caption in that image's row, and
    ``run_key`` tells a captioned run from one with the dataset's prompts (catches a report that drops the prompt,
    shows another image's, or pools runs of two prompt sources into one cell)."""
    from treg_exp.reporting import tables
    from treg_exp.reporting.report import write_report

    run_dir = tmp_path / "run"
    _, prompts = captioned_rows(make_runner(run_dir, tmp_path / "cache"))
    page = write_report(tables.build([run_dir]), tmp_path / "report.html", grid_images=4).read_text()
    for image_id, prompt in prompts.items():
        assert f'alt="recon {image_id}"><div class="prompt">{prompt}</div>' in page
    given = {"choices": {"data": "samples", "task": "t", "model": "m", "solver": "s", "prompt": "given"}}
    captioned = {"choices": {**given["choices"], "prompt": "caption", "prompt/captioner": "tiny"}}
    assert tables.run_key(given) != tables.run_key(captioned)
    assert tables.run_key(given) == tables.run_key(
        {"choices": {k: v for k, v in given["choices"].items() if k != "prompt"}}
    )


def test_the_prompt_source_ablation_runs_and_renders_one_table_with_a_column_per_source(tmp_path):
    """``-m experiment=prompt_sources`` (tiny sizes, the tiny captioner in the caption column) runs TReg and P2L
    under each prompt source, make_table renders one table with the sources as columns, each run's rows carry
    its source's prompts, and both solvers' caption jobs used the one cache (catches a source that does not reach
    the runs, a table that pools the sources, or a cache per job)."""
    import csv

    from tests.test_runner import run_cli
    from treg_exp.reporting import make_table

    result = run_cli(
        "-m",
        "experiment=prompt_sources",
        "data=samples",
        "model=tiny",
        "data.limit=2",
        "data.resolution=32",
        "solver.num_steps=2",
        "metrics=fast",
        "hydra.sweeper.columns.2.caption='prompt=caption prompt/captioner=tiny'",
        f"paths.output_root={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep_dir,) = tmp_path.glob("prompt_sources+*")  # a smoke run of the preset: its own folder
    assert make_table.main([str(sweep_dir)]) == 0
    header, _, treg, p2l = (sweep_dir / "table.md").read_text().split("\n\n")[1].splitlines()[:4]
    assert [c.split()[0] for c in header.strip("| ").split(" | ")[1::2]] == ["given", "class_name", "caption", "none"]
    assert treg.startswith("| TReg |") and p2l.startswith("| P2L |") and "—" not in treg + p2l
    [cache] = (tmp_path / "prompt_cache").glob(f"*/{CACHE_FILE}")
    with cache.open(newline="") as handle:
        captions = {row["id"]: row["prompt"] for row in csv.DictReader(handle)}
    expected = {
        "prompt=given": {"astronaut": "a photo of an astronaut", "coffee": "a photo of a cup of coffee"},
        "prompt=class_name": {"astronaut": "a photo of a astronaut", "coffee": "a photo of a cup"},
        "prompt=caption": captions,
        "prompt=none": {"astronaut": "", "coffee": ""},
    }
    sweep_plan = json.loads((sweep_dir / "sweep.json").read_text())
    for job in sweep_plan["jobs"]:
        source = next(o for o in job["overrides"] if o.startswith("prompt="))
        with (sweep_dir / job["folder"] / "metrics.csv").open(newline="") as handle:
            assert {row["id"]: row["prompt"] for row in csv.DictReader(handle)} == expected[source], job["folder"]


@pytest.mark.parametrize("experiment", ["p2l_table2_ffhq_captions", "p2l_table3_imagenet_captions"])
def test_the_p2l_caption_presets_caption_y_and_x_with_paligemma_in_p2ls_template(experiment, tmp_path):
    """P2L's captioned rows: PaliGemma captions of the measurement (``view=auto``) and, for the oracle row, of the
    ground truth, each put into "A high quality photo of a {caption}" (P2L App. A); the other rows keep the given
    prompt (catches a row captioning the wrong image, or the template lost in a row's override string)."""
    from hydra.utils import instantiate

    from tests.test_tables import sweep_plan

    _, plan = sweep_plan(f"experiment={experiment}", tmp_path=tmp_path)
    for job in plan.to_run:
        prompt = instantiate(job.config.prompt)
        if "PaliGemma" not in job.row:
            assert prompt.name == "given", job.row
            continue
        assert prompt.captioner.name == "paligemma" and prompt.template == "A high quality photo of a {caption}"
        assert prompt.view == ("ground_truth" if "of x" in job.row else "auto"), job.row


def save_tiny_blip2(folder: Path) -> None:
    """A BLIP-2 (ViT, Q-Former, OPT) at width 32 with random weights and the tiny byte tokenizer, saved as a
    transformers folder with its processor: the Hub captioners' loading and decoding path, offline."""
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        Blip2QFormerConfig,
        Blip2VisionConfig,
        BlipImageProcessor,
        OPTConfig,
    )

    from treg_exp.prompts.captioners import tiny_tokenizer

    small = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4)
    processor = Blip2Processor(
        image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
        tokenizer=tiny_tokenizer(),
        num_query_tokens=4,
    )
    tokenizer = processor.tokenizer
    config = Blip2Config(
        vision_config=Blip2VisionConfig(**small, image_size=32, patch_size=8).to_dict(),
        qformer_config=Blip2QFormerConfig(**small, encoder_hidden_size=32, vocab_size=len(tokenizer)).to_dict(),
        text_config=OPTConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            ffn_dim=37,
            num_hidden_layers=1,
            num_attention_heads=4,
            word_embed_proj_dim=32,
            max_position_embeddings=64,
            bos_token_id=tokenizer.eos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            init_std=0.3,  # as the tiny captioner: captions that depend on the image
        ).to_dict(),
        num_query_tokens=4,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        Blip2ForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)


def test_a_hub_captioner_loads_staged_weights_offline_and_returns_only_the_caption(tmp_path):
    """A random-weight BLIP-2 staged as ``paths.weights/<org>/<name>`` loads through ``HubCaptioner`` without the
    Hub; with a task prompt the decoder-only model returns prompt + caption and the captioner keeps only the
    tokens after the prompt (as decoded independently here); captions are the same one image at a time and in a
    batch. Catches the prompt left at the head of every caption, or a loader that looks elsewhere than
    ``paths.weights``."""
    from treg_exp.data.images import to_pil
    from treg_exp.prompts.captioners import HubCaptioner

    save_tiny_blip2(tmp_path / "weights" / "test-org" / "blip2-tiny")
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1

    def captioner(batch_size: int) -> HubCaptioner:
        weights = str(tmp_path / "weights")
        hub = HubCaptioner(
            "blip2", "test-org/blip2-tiny", "a photo of", "main", 6, 1, batch_size, dtype="float32", cache_dir=weights
        )
        hub.load(torch.device("cpu"))
        return hub

    batched = captioner(3)
    captions = batched.caption(images)
    inputs = batched.processor(images=[to_pil(x) for x in images], text=["a photo of"] * 3, return_tensors="pt")
    out = batched.model.generate(**inputs, max_new_tokens=6, do_sample=False)
    new_tokens = out[:, inputs["input_ids"].shape[1] :]
    assert captions == [t.strip() for t in batched.processor.batch_decode(new_tokens, skip_special_tokens=True)]
    assert all(len(c) >= 1 and not c.startswith("a photo") for c in captions) and len(set(captions)) > 1
    assert captioner(1).caption(images) == captions
    assert batched.counter["captioner_rows"] == 3 and batched.counter["captioner_calls"] == 1


def test_a_run_from_before_the_prompt_group_resumes_with_given_prompts_only(tmp_path):
    """A run directory whose ``config.yaml`` has no ``prompt`` (written before the group existed, when every prompt
    was the dataset's) resumes under ``prompt=given``, and is refused under another source (catches old runs
    refused for nothing, or resumed with prompts other than those of their finished images)."""
    from treg_exp.experiment.app import check_same_run

    def config(*overrides: str):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("config", overrides=["model=gaussian", "data=gaussian", *overrides])
        OmegaConf.set_struct(cfg, False)
        cfg.paths.run_dir = str(tmp_path)
        return cfg

    old = OmegaConf.to_container(config(), resolve=True)
    del old["prompt"]
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(old))
    (tmp_path / "rows").mkdir()  # a directory without rows takes any settings: this one holds a result
    (tmp_path / "rows" / "img_0.json").write_text('{"id": "img_0", "status": "ok"}')
    check_same_run(config(), tmp_path)
    with pytest.raises(UserError, match="prompt"):
        check_same_run(config("prompt=none"), tmp_path)


def test_the_captioner_sees_the_pseudo_inverse_where_there_is_one_else_y_resized():
    """``view=auto``: for SR in its SVD form the captioner sees ``A⁺y``, which reproduces ``y`` through ``A`` (a
    scaled ``Aᵀy`` would not); for the direct SR operator (no pseudo-inverse) it sees ``y`` resized to the image
    size; ``ground_truth`` is ``x``. Catches the adjoint shown in place of the pseudo-inverse, or a view of the
    wrong size."""
    import torch.nn.functional as F

    from treg_exp.operators.sr import super_resolution
    from treg_exp.prompts.caption import captioner_input

    x = (torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) - 0.5) * 0.5
    svd = super_resolution(4, impl="svd", svd_threshold=0.0)
    y = svd(x)
    seen = captioner_input(x, svd, y, "auto")
    assert seen.shape == x.shape
    torch.testing.assert_close(svd(seen), y, rtol=0, atol=1e-4)
    adjoint = captioner_input(x, svd, y, "adjoint")
    assert (svd(adjoint) - y).abs().max() > 1e-2
    direct = super_resolution(4)
    y = direct(x)
    expected = F.interpolate(y, size=(32, 32), mode="bicubic", align_corners=False).clamp(-1, 1)
    torch.testing.assert_close(captioner_input(x, direct, y, "auto"), expected)
    with pytest.raises(UserError, match="no pseudo-inverse"):
        captioner_input(x, direct, y, "pinv")
    torch.testing.assert_close(captioner_input(x, direct, y, "ground_truth"), x)


def test_the_cost_estimate_says_what_captioning_comes_first(tmp_path):
    """``prompt=caption`` adds one line before the solve's cost: 5 images in batches of 2 are at most 3 generate
    calls; other sources add none (catches a run whose captioning pass is not announced)."""
    from treg_exp.experiment import cost

    runner = make_runner(tmp_path / "a", tmp_path / "cache", "data.limit=5", "prompt.captioner.batch_size=2")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        captioned = compose("config", overrides=[*CAPTIONED, "data.limit=5", "prompt.captioner.batch_size=2"])
        given = compose("config", overrides=[*CAPTIONED[:-2], "data.limit=5"])
    lines = cost.log_run_cost(captioned, runner.dataset, {})
    assert lines[0].startswith("captions first: at most 5 images with tiny in 3 generate calls (≤ 2 images")
    assert not any(line.startswith("captions") for line in cost.log_run_cost(given, runner.dataset, {}))
