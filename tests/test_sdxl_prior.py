"""``model=tiny_sdxl``: SDXL's classes (UNet with the ``text_time`` embedding, CLIP-L + OpenCLIP-G-with-projection text
towers, SD's VAE) at toy width, random weights built in code. Its conditioning against ``StableDiffusionXLPipeline``'s
``encode_prompt``, our DDIM sampler against the pipeline, and TReg and the latent family end to end on it."""

from __future__ import annotations

import time

import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionXLPipeline

from tests._latent_problems import blurred_problem, run_solver
from tests.test_flow import compose
from treg_exp.common import seeding
from treg_exp.common.batch import batch_norm
from treg_exp.common.errors import UserError, WeightsNotFoundError
from treg_exp.models.sdxl import RandomSDXLPrior, SDXLPrior
from treg_exp.solvers.ddim import DDIMSolver

PROMPTS = ["a photo of the astronaut", "a cup of coffee"]
SIZE = 64


@pytest.fixture(scope="module")
def prior() -> RandomSDXLPrior:
    return RandomSDXLPrior(architecture="tiny", seed=0).load("cpu")


@pytest.fixture(scope="module")
def pipeline(prior) -> StableDiffusionXLPipeline:
    pipe = StableDiffusionXLPipeline(
        vae=prior.vae,
        text_encoder=prior.text_encoder,
        text_encoder_2=prior.text_encoder_2,
        tokenizer=prior.tokenizer,
        tokenizer_2=prior.tokenizer_2,
        unet=prior.unet,
        scheduler=DDIMScheduler(**prior.scheduler_config),
        add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_conditioning_is_the_pipelines(prior, pipeline) -> None:
    """``c`` splits into exactly ``encode_prompt``'s hidden states (CLIP-L ⊕ OpenCLIP-G penultimate layers) and
    pooled embedding, and the null prompt ``""`` is the pipeline's zeros: a wrong layer, encoder order, pooled source
    or column fails. The pooled row holds nothing outside the OpenCLIP-G columns."""
    with torch.no_grad():
        hidden, negative, pooled, negative_pooled = pipeline.encode_prompt(PROMPTS, do_classifier_free_guidance=True)
    cond = prior.embed_text(PROMPTS)
    ours_hidden, ours_pooled = prior.split_conditioning(cond)
    assert cond.shape == (2, 78, 16 + 32)
    torch.testing.assert_close(ours_hidden, hidden, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours_pooled, pooled, rtol=0, atol=1e-6)
    assert (cond[:, -1, : prior.pooled_column] == 0).all()
    null_hidden, null_pooled = prior.split_conditioning(prior.null_embedding(2, ""))
    torch.testing.assert_close(null_hidden, negative, rtol=0, atol=0)
    torch.testing.assert_close(null_pooled, negative_pooled, rtol=0, atol=0)


def test_ddim_matches_stable_diffusion_xl_pipeline(prior, pipeline) -> None:
    """``solver=ddim`` (η = 0, ω = 5, 6 steps) from the same initial latent equals the pipeline's final latent and
    decoded image to 1e-4: a wrong grid, CFG order, pooled embedding, time ids, null conditioning or VAE scale fails."""
    steps, guidance = 6, 5.0
    generators = seeding.batch_generators(0, ["a", "b"], seeding.SOLVER)
    z_T = prior.initial_noise(prior.latent_shape((2, 3, SIZE, SIZE)), generators)
    with torch.no_grad():
        reference = pipeline(
            PROMPTS,
            height=SIZE,
            width=SIZE,
            num_inference_steps=steps,
            guidance_scale=guidance,
            eta=0.0,
            latents=z_T.clone(),
            output_type="latent",
        ).images
        image_ref = prior.vae.decode(reference / prior.vae.config.scaling_factor)[0]
    decoded = []
    decode = prior.decode
    prior.decode = lambda z: decoded.append(z.clone()) or decode(z)
    try:
        generators = seeding.batch_generators(0, ["a", "b"], seeding.SOLVER)
        prior.reset_counter()
        solver = DDIMSolver(num_steps=steps, guidance_scale=guidance, null_prompt="", output="latent")
        image = solver.solve(None, None, prior, PROMPTS, generators, (2, 3, SIZE, SIZE))
    finally:
        del prior.decode
    latent_error = (decoded[0] - reference).abs().max().item()
    image_error = (image - image_ref.clamp(-1, 1)).abs().max().item()
    print(f"sdxl ddim vs diffusers: latent {latent_error:.2e}, image {image_error:.2e}")
    assert reference.abs().max() > 0.1
    assert latent_error < 1e-4 and image_error < 1e-4
    assert prior.counter["unet_calls"] == steps and prior.counter["unet_rows"] == 4 * steps


def _run(solver, prior, y, operator, callback=None):
    return run_solver(solver, prior, y, operator, SIZE, callback)


def _solver(overrides):
    from hydra.utils import instantiate

    return instantiate(compose(["model=tiny_sdxl", *overrides]).solver)


def _unconditional_residual(prior, solver=None) -> torch.Tensor:
    """``‖A x − y‖`` of a sample that ignores ``y``: ``solver`` without its measurement step, or the prior's own DDIM
    sample (4 steps)."""
    operator, y = blurred_problem(SIZE)
    solver = solver or DDIMSolver(num_steps=4, guidance_scale=0.0, null_prompt="")
    return batch_norm(operator(_run(solver, prior, y if solver.__class__ is not DDIMSolver else None, operator)) - y)


@pytest.fixture(scope="module")
def unconditional_residual(prior) -> torch.Tensor:
    return _unconditional_residual(prior)


SOLVERS = {
    "ldps": ["solver.num_steps=4", "solver.step_size=1.0"],
    "gml_dps": ["solver.num_steps=4", "solver.step_size=1.0"],
    "psld": ["solver.num_steps=4", "solver.step_size=1.0"],
    "dps": ["solver.num_steps=4", "solver.step_size=1.0"],
    "p2l": ["solver.num_steps=3", "solver.prompt_iters=1"],
    "resample": ["solver.num_steps=4", "solver.pixel_iters=50", "solver.latent_iters=20"],
}


@pytest.mark.parametrize("name", list(SOLVERS))
def test_latent_family_fits_the_measurement_on_sdxl(prior, unconditional_residual, name: str) -> None:
    """Each latent method runs on tiny_sdxl (a few steps, CFG through the pooled conditioning) and its output fits
    ``y`` better than a sample that ignores ``y`` (the prior's DDIM sample; for DPS, whose DDPM steps draw their own
    noise, DPS itself with ζ = 0): a method that ignored the measurement would not."""
    operator, y = blurred_problem(SIZE)
    out = _run(_solver([f"solver={name}", *SOLVERS[name]]), prior, y, operator)
    residual = batch_norm(operator(out) - y)
    if name == "dps":
        overrides = [f"solver={name}", *SOLVERS[name], "solver.step_size=0.0"]
        unconditional_residual = _unconditional_residual(prior, _solver(overrides))
    print(f"{name}: residual {residual.item():.3f} vs unconditional {unconditional_residual.item():.3f}")
    assert torch.isfinite(out).all() and (residual < unconditional_residual).all()


def test_treg_with_adaptive_negation_on_sdxl(prior, unconditional_residual) -> None:
    """TReg with adaptive negation on tiny_sdxl (both image towers, ``[f̂_L ; f̂_G]`` against ``c_∅``'s rows): every
    DC step's CG lowers ‖A x̂ − y‖, every AN update lowers its loss and moves ``c_∅`` (hidden states and pooled row),
    and the output fits ``y`` better than the unconditional sample."""
    operator, y = blurred_problem(SIZE)
    values: list[dict] = []
    treg = _solver(["solver=treg", "solver.num_steps=6", "solver.cfg_scale=2.0"])
    out = _run(treg, prior, y, operator, lambda i, v: values.append(v))
    assert torch.isfinite(out).all() and len(values) >= 2
    for v in values:
        assert (v["dc/residual_after"] < v["dc/residual_before"]).all()
        assert (v["an/loss"] < v["an/loss_before"]).all() and (v["an/null_shift"] > 0).all()
    assert (batch_norm(operator(out) - y) < unconditional_residual).all()


def test_adaptive_negation_needs_both_towers() -> None:
    """Without the OpenCLIP-G image tower (as ``sdxl_random``, which has none) the image-feature check TReg runs
    before any network pass is one line naming both towers: a check of the first tower only would pass here."""
    prior = RandomSDXLPrior(architecture="tiny")
    prior.load("cpu")
    prior.image_encoder_2 = None
    with pytest.raises(UserError, match="two CLIP image towers") as error:
        prior.check_image_encoder()
    assert "\n" not in str(error.value)


def test_offline_sdxl_fails_in_one_line(tmp_path) -> None:
    """model=sdxl without staged weights and downloads off: one line within seconds naming the staging command."""
    start = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as error:
        SDXLPrior(local_files_only=True, cache_dir=tmp_path).load("cpu")
    message = str(error.value)
    assert time.perf_counter() - start < 10 and "\n" not in message
    assert "fetch_weights.py --out DIR --models sdxl" in message


def test_optimising_c_reaches_hidden_states_and_pooled_but_not_the_padding(prior) -> None:
    """What P2L's prompt tuning optimises on SDXL (models/conditioning.py): the gradient of the UNet output with respect
    to ``c`` is nonzero on the hidden states and on the pooled entries, and exactly zero on the pooled row's padding
    (CLIP-L's columns), which the UNet never reads: a pooled embedding read from the wrong columns fails."""
    cond = prior.embed_text(["a photo"]).clone().requires_grad_(True)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    (grad,) = torch.autograd.grad(prior.eps(z, 500, cond).square().sum(), cond)
    column = prior.pooled_column
    assert grad[:, :-1].abs().amax() > 0
    assert (grad[:, -1, column:] != 0).all()
    assert (grad[:, -1, :column] == 0).all()
