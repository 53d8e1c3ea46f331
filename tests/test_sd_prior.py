"""StableDiffusionPrior on the tiny SD-shaped model: counters, v-prediction, encode, CLIP image features, loading."""

import json
import shutil
import time

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler
from transformers import CLIPTokenizer, CLIPVisionConfig, CLIPVisionModelWithProjection

from treg_exp.common import seeding
from treg_exp.common.errors import UserError, WeightsNotFoundError
from treg_exp.models import loading
from treg_exp.models.stable_diffusion import CLIP_MEAN, CLIP_STD, StableDiffusionPrior
from treg_exp.models.tiny import TinyStableDiffusionPrior, build_tiny_components, save_tiny
from treg_exp.solvers import core

SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"


def one_line(error: BaseException) -> bool:
    return "\n" not in str(error) and len(str(error)) > 20


@pytest.fixture(scope="module")
def prior():
    return TinyStableDiffusionPrior(dtype="float32", seed=0).load("cpu")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The tiny model written as a diffusers folder (what an offline cluster stages)."""
    return save_tiny(tmp_path_factory.mktemp("tiny_sd") / "model", seed=0)


def images(batch: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, size, size, generator=g) * 2 - 1


# --- counters ----------------------------------------------------------------------------------------------------
def test_counters_count_calls_and_rows(prior):
    prior.reset_counter()
    x = images()
    gens = seeding.batch_generators(0, ["a", "b"], seeding.SOLVER)
    z = prior.encode(x, gens)
    cond, uncond = prior.embed_text(["a red car", "a dog"]), prior.null_embedding(2)
    core.guided_prediction(prior, z, 501, cond, uncond, 7.5)  # CFG pair: one call of 2B rows
    core.guided_prediction(prior, z, 501, cond, uncond, 0.0)  # unconditional only: one call of B rows
    prior.decode(z)
    prior.embed_image(x)
    prior.embed_text(["a red car"])  # cached: no new text-encoder pass
    c = prior.counter
    assert (c["unet_calls"], c["unet_rows"]) == (2, 6)
    assert (c["encode_calls"], c["encode_rows"]) == (1, 2)
    assert (c["decode_calls"], c["decode_rows"]) == (1, 2)
    assert (c["clip_image_calls"], c["clip_image_rows"]) == (1, 2)
    assert (c["text_calls"], c["text_rows"]) == (2, 3)  # "a red car" + "a dog", then "" (the null prompt)


def test_embed_text_is_the_pipeline_encoding(prior):
    """Hidden states of the max-length-padded ids, as diffusers' pipeline computes them; cached per prompt."""
    ids = prior.tokenizer(["a photo"], padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        expected = prior.text_encoder(ids.input_ids)[0]
    got = prior.embed_text(["a photo", "a photo"])
    assert got.shape == (2, 77, 32) and got.dtype == torch.float32
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[0])
    got[0].zero_()  # callers may edit their copy (TReg's c_∅ under Adam) without touching the cache
    assert torch.equal(prior.embed_text(["a photo"])[0], expected[0])


# --- eps and v-prediction ----------------------------------------------------------------------------------------
def test_v_prediction_converts_to_eps():
    parts = build_tiny_components(seed=0)
    parts.pop("scheduler")
    parts["scheduler_config"]["prediction_type"] = "v_prediction"
    v_prior = TinyStableDiffusionPrior()
    v_prior._install(parts)
    assert v_prior.prediction_type == "v_prediction"
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    cond = v_prior.embed_text(["x", "y"])
    t = 601
    with torch.no_grad():
        v = v_prior.unet(z, t, encoder_hidden_states=cond).sample
        eps = v_prior.eps(z, t, cond)
    scheduler = DDIMScheduler(**{**parts["scheduler_config"], "prediction_type": "v_prediction"})
    alpha_bar = scheduler.alphas_cumprod[t].double()
    expected = alpha_bar.sqrt() * v.double() + (1 - alpha_bar).sqrt() * z.double()  # ε = √ᾱ_t·v + √(1−ᾱ_t)·z_t
    assert (eps.double() - expected).abs().max() < 1e-6
    # and Tweedie on that ε gives diffusers' x0 for a v-model
    scheduler.set_timesteps(10)
    x0_diffusers = scheduler.step(v, t, z).pred_original_sample
    assert (core.tweedie(z, eps, float(alpha_bar)) - x0_diffusers).abs().max() < 1e-5


def test_eps_returns_input_dtype_and_float64_works():
    p64 = TinyStableDiffusionPrior(dtype="float64").load()
    z = torch.randn(1, 4, 8, 8, dtype=torch.float64)
    assert p64.eps(z, 11, p64.embed_text(["a"])).dtype == torch.float64
    assert p64.encode(images(1).double(), mode="mean").dtype == torch.float64
    assert p64.embed_image(images(1).double()).dtype == torch.float64


# --- encode / decode ---------------------------------------------------------------------------------------------
def test_encode_sample_uses_generators_and_mean_is_the_mean(prior):
    x = images()
    s = prior.vae.config.scaling_factor
    with torch.no_grad():
        dist = prior.vae.encode(x).latent_dist
        mean = prior.encode(x, mode="mean")
        a = prior.encode(x, seeding.batch_generators(0, ["a", "b"], seeding.SOLVER))
        b = prior.encode(x, seeding.batch_generators(0, ["a", "b"], seeding.SOLVER))
        c = prior.encode(x, seeding.batch_generators(1, ["a", "b"], seeding.SOLVER))
    assert torch.allclose(mean, s * dist.mean, atol=1e-6)
    assert torch.equal(a, b)  # same generators → same latent
    assert (a - c).abs().max() > 1e-3
    noise = seeding.randn(mean.shape[1:], seeding.batch_generators(0, ["a", "b"], seeding.SOLVER))
    assert torch.allclose(a, s * (dist.mean + dist.std * noise), atol=1e-6)
    # row b depends only on generator b: a batch of 2 equals two batches of 1
    alone = prior.encode(x[1:], seeding.batch_generators(0, ["b"], seeding.SOLVER))
    assert torch.allclose(alone, a[1:], atol=1e-6)
    with pytest.raises(UserError):
        prior.encode(x)  # sampling without generators


def test_decode_is_vae_decode_of_z_over_s(prior):
    z = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        expected = prior.vae.decode(z / 0.18215).sample
        got = prior.decode(z)
    assert got.shape == (1, 3, 64, 64) and torch.allclose(got, expected, atol=1e-6)
    assert prior.latent_shape((3, 3, 64, 64)) == (3, 4, 8, 8)


# --- CLIP image features -----------------------------------------------------------------------------------------
def _official_features(encoder, x, align_corners=True, antialias=False):
    """The official TReg steps written out: bicubic resize of the uncropped image, (x+1)/2, CLIP mean/std, L2."""
    size = encoder.config.image_size
    resized = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=align_corners, antialias=antialias)
    unit = (resized + 1) / 2
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        feats = encoder(pixel_values=(unit - mean) / std).image_embeds
    return feats / feats.norm(dim=-1, keepdim=True)


def test_embed_image_follows_official_preprocessing(prior):
    x = images(2, 64)
    with torch.no_grad():
        got = prior.embed_image(x)
    assert got.shape == (2, 32) and got.dtype == torch.float32
    assert torch.allclose(got.norm(dim=-1), torch.ones(2), atol=1e-6)
    reference = _official_features(prior.image_encoder, x)
    assert (got - reference).abs().max() < 1e-6
    # the settings matter: align_corners=False or antialiasing (what CLIPImageProcessor does) give other features
    for kwargs in ({"align_corners": False}, {"antialias": True}):
        assert (got - _official_features(prior.image_encoder, x, **kwargs)).abs().max() > 1e-4


def test_embed_image_refuses_mismatched_or_missing_tower():
    narrow = TinyStableDiffusionPrior().load()
    config = CLIPVisionConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4, image_size=32, patch_size=8
    )
    config.projection_dim = 16  # text width is 32 (cf. SD 2.x 1024 vs ViT-L/14's 768)
    narrow.image_encoder = CLIPVisionModelWithProjection(config)
    with pytest.raises(UserError) as error:
        narrow.embed_image(images(1))
    assert one_line(error.value) and "16" in str(error.value) and "32" in str(error.value)
    narrow.image_encoder = None
    with pytest.raises(UserError) as error:
        narrow.check_image_encoder()
    assert one_line(error.value) and "clip_image_model" in str(error.value)


def test_gradient_checkpointing_keeps_gradients(prior):
    z = torch.randn(1, 4, 8, 8, requires_grad=True)
    cond = prior.embed_text(["a"])

    def grad():
        (g,) = torch.autograd.grad(prior.decode(core.tweedie(z, prior.eps(z, 301, cond), 0.5)).sum(), z)
        return g

    plain = grad()
    prior.set_gradient_checkpointing(True)
    try:
        assert prior.unet.is_gradient_checkpointing and prior.vae.is_gradient_checkpointing
        for kind in ("ResnetBlock2D", "Upsample2D", "Downsample2D"):  # the per-block checkpoints are on
            blocks = [m for m in prior.vae.modules() if type(m).__name__ == kind]
            assert blocks and all("forward" in m.__dict__ for m in blocks), kind
        assert torch.allclose(grad(), plain, atol=1e-5)
    finally:
        prior.set_gradient_checkpointing(False)
    assert not any("forward" in m.__dict__ for m in prior.vae.modules())  # and off again
    assert torch.equal(grad(), plain)


def test_vae_slicing_and_performance_options(prior):
    """``vae_slicing`` (default on) is handed to the VAE, so a batch's decode is each image's own decode (a wiring
    mistake would leave diffusers' default, batched passes); a bad ``compile_mode`` is a one-line config error."""
    assert prior.vae.use_slicing and not prior.vae.use_tiling
    z = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        batched = prior.decode(z)
        single = torch.cat([prior.decode(z[:1]), prior.decode(z[1:])])
    assert torch.equal(batched, single)
    with pytest.raises(UserError) as error:
        TinyStableDiffusionPrior(compile_mode="fastest")
    assert one_line(error.value) and "compile_mode" in str(error.value)


def test_attention_is_sdpa_and_networks_run_in_the_model_dtype_while_treg_keeps_float32(monkeypatch):
    """Every attention of UNet, VAE and both CLIP towers is torch's fused SDPA (catches the classic processor,
    which keeps a [tokens × tokens] score matrix: 1 GiB per head at 512 px in the VAE); in a bfloat16 prior the
    UNet sees bfloat16 inputs while TReg's CG, its latents and AN's Adam on c_∅ stay float32 (catches a solver
    state cast to the network dtype: bf16 CG loses the small-λ solve, AN's updates fall below bf16's resolution)."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    from treg_exp.common import seeding
    from treg_exp.operators.blur import gaussian_deblur
    from treg_exp.solvers.treg import TReg

    prior = TinyStableDiffusionPrior(dtype="bfloat16", seed=0).load("cpu")
    for module in (prior.unet, prior.vae):
        assert {type(p) for p in module.attn_processors.values()} == {AttnProcessor2_0}
    for tower in (prior.text_encoder, prior.image_encoder):
        assert tower.config._attn_implementation == "sdpa"
    seen = {"unet": set(), "cg": set(), "adam": set()}
    prior.unet.register_forward_pre_hook(lambda module, args: seen["unet"].add(args[0].dtype))
    operator = gaussian_deblur(kernel_size=5, kernel_sigma=1.0)
    solve_damped = operator.solve_damped

    def recording_solve(y, x, *args, **kwargs):
        seen["cg"].update({y.dtype, x.dtype})
        return solve_damped(y, x, *args, **kwargs)

    monkeypatch.setattr(operator, "solve_damped", recording_solve)
    adam = torch.optim.Adam

    def recording_adam(params, *args, **kwargs):
        params = list(params)
        seen["adam"].update(p.dtype for p in params)
        return adam(params, *args, **kwargs)

    monkeypatch.setattr(torch.optim, "Adam", recording_adam)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    streams = seeding.batch_generators(0, ["a"], seeding.MEASUREMENT)
    y = operator.measure(x, streams)
    out = TReg(num_steps=3, dc_grid=None, dc_every=1).solve(
        y, operator, prior, ["a photo"], seeding.batch_generators(0, ["a"], seeding.SOLVER), x.shape
    )
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert seen == {"unet": {torch.bfloat16}, "cg": {torch.float32}, "adam": {torch.float32}}


# --- loading -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("local_files_only", [True, False])
def test_missing_weights_fail_fast_with_one_line(tmp_path, monkeypatch, local_files_only):
    # conftest sets HF_HUB_OFFLINE; with local_files_only=false that is what keeps us off the network
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    prior = StableDiffusionPrior(model_id=SD15, cache_dir=str(tmp_path), local_files_only=local_files_only)
    start = time.monotonic()
    with pytest.raises(WeightsNotFoundError) as error:
        prior.load("cpu")
    elapsed = time.monotonic() - start
    message = str(error.value)
    assert elapsed < 10.0
    assert one_line(error.value) and SD15 in message
    assert "python scripts/fetch_weights.py --out DIR --models sd15" in message and "paths.weights=DIR" in message
    assert ("downloads off: local_files_only=true" in message) == local_files_only
    assert ("downloads off: HF_HUB_OFFLINE is set" in message) != local_files_only


def test_unreachable_hub_fails_fast_when_downloads_are_allowed(tmp_path, monkeypatch):
    """Downloads allowed but no network: one probe, then the one-line error (not the Hub client's retries)."""
    from huggingface_hub import constants

    assert not loading.hub_reachable("http://127.0.0.1:9", timeout=0.5)  # closed local port: refused at once
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(loading, "hub_reachable", lambda: False)  # never touch the real network in tests
    assert loading.downloads_allowed(local_files_only=False)
    start = time.monotonic()
    with pytest.raises(WeightsNotFoundError) as error:
        StableDiffusionPrior(model_id=SD15, cache_dir=str(tmp_path), local_files_only=False).load()
    assert time.monotonic() - start < 10.0
    assert one_line(error.value) and "unreachable" in str(error.value)


def test_local_directory_loads_through_the_real_path(saved, prior, tmp_path):
    """A diffusers folder written by save_pretrained (the offline-cluster path) gives the same networks."""
    local = StableDiffusionPrior(
        model_id=str(saved), dtype="float32", local_files_only=True, clip_image_model=str(saved / "image_encoder")
    ).load("cpu")
    assert len(local.tokenizer) == len(prior.tokenizer) and local.prediction_type == "epsilon"
    assert torch.equal(local.schedule.alphas_cumprod, prior.schedule.alphas_cumprod)
    x, z = images(1), torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        cond = local.embed_text(["a photo of the cat"])
        assert torch.equal(cond, prior.embed_text(["a photo of the cat"]))
        assert torch.allclose(local.eps(z, 981, cond), prior.eps(z, 981, cond), atol=1e-6)
        assert torch.allclose(local.decode(z), prior.decode(z), atol=1e-6)
        assert torch.allclose(local.embed_image(x), prior.embed_image(x), atol=1e-6)

    # staged as <paths.weights>/<hub id>/ : found through cache_dir, with the prediction type read from its config
    staged = tmp_path / "weights" / "someorg" / "tiny-sd"
    shutil.copytree(saved, staged)
    config_path = staged / "scheduler" / "scheduler_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "prediction_type": "v_prediction"}))
    v_prior = StableDiffusionPrior(model_id="someorg/tiny-sd", cache_dir=str(tmp_path / "weights"), dtype="float32")
    v_prior.load("cpu")
    assert v_prior.prediction_type == "v_prediction" and v_prior.image_encoder is None


def test_fetch_weights_cache_layout_is_found(saved, tmp_path):
    """``paths.weights=DIR`` holding the Hugging Face cache DIR/huggingface/hub (what fetch_weights.py writes)."""
    commit = "0" * 40
    repo = tmp_path / "DIR" / "huggingface" / "hub" / "models--someorg--tiny-hub"
    shutil.copytree(saved, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    hub_prior = StableDiffusionPrior(
        model_id="someorg/tiny-hub", cache_dir=str(tmp_path / "DIR"), dtype="float32", local_files_only=True
    ).load()
    assert len(hub_prior.tokenizer) > loading.MIN_TOKENIZER_SIZE and hub_prior.latent_factor == 8
    # an unknown id that is absent names the folder to stage it in
    with pytest.raises(WeightsNotFoundError) as error:
        StableDiffusionPrior(model_id="someorg/absent", cache_dir=str(tmp_path / "DIR"), local_files_only=True).load()
    assert one_line(error.value) and "DIR/someorg/absent" in str(error.value)


def test_offline_tokenizer_without_files_is_detected(saved, tmp_path):
    """transformers builds a 2-token CLIPTokenizer when its files are missing; the loader calls that missing."""
    empty = tmp_path / "empty"
    empty.mkdir()
    silent = CLIPTokenizer.from_pretrained(str(empty), local_files_only=True)
    assert len(silent) <= loading.MIN_TOKENIZER_SIZE and not loading.tokenizer_is_complete(silent)

    broken = tmp_path / "broken"
    shutil.copytree(saved, broken)
    for name in ("vocab.json", "merges.txt", "tokenizer.json"):
        (broken / "tokenizer" / name).unlink(missing_ok=True)
    with pytest.raises(WeightsNotFoundError) as error:
        StableDiffusionPrior(model_id=str(broken), dtype="float32", local_files_only=True).load()
    assert one_line(error.value) and "tokenizer" in str(error.value)


def test_bad_config_values_fail_with_one_line():
    with pytest.raises(UserError):
        StableDiffusionPrior(dtype="float8")
    with pytest.raises(UserError):
        StableDiffusionPrior().schedule  # noqa: B018 - the property raises before load
