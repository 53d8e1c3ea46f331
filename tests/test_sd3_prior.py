"""``model=tiny_sd3``: SD3's classes (SD3Transformer2DModel, the 16-channel VAE, CLIP-L / CLIP-G) at toy width,
random weights built in code. The flow prior's sampler against diffusers' StableDiffusion3Pipeline, its conditioning
against the pipeline's ``encode_prompt``, and TReg and the latent family end to end on it."""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

from tests._latent_problems import blurred_problem, run_solver
from treg_exp.common import seeding
from treg_exp.common.errors import UserError
from treg_exp.models.sd3 import RandomSD3Prior
from treg_exp.solvers.ddim import DDIMSolver

PROMPTS = ["a photo of the astronaut", "a cup of coffee"]
SIZE = 64
STEPS = 6
GUIDANCE = 5.0


@pytest.fixture(scope="module")
def prior() -> RandomSD3Prior:
    return RandomSD3Prior(architecture="tiny", seed=0).load("cpu")


@pytest.fixture(scope="module")
def pipeline(prior) -> StableDiffusion3Pipeline:
    pipe = StableDiffusion3Pipeline(
        transformer=prior.transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(**prior.scheduler_config),
        vae=prior.vae,
        text_encoder=prior.text_encoder_1,
        tokenizer=prior.tokenizers[0],
        text_encoder_2=prior.text_encoder_2,
        tokenizer_2=prior.tokenizers[1],
        text_encoder_3=None,
        tokenizer_3=None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_conditioning_is_the_pipelines(prior, pipeline) -> None:
    """The packed ``c`` splits into exactly ``encode_prompt``'s token embeddings (CLIP-L ⊕ CLIP-G penultimate states,
    padded to the joint width, then the T5 rows) and pooled embedding: a wrong hidden layer, order or padding fails."""
    with torch.no_grad():
        tokens, _, pooled, _ = pipeline.encode_prompt(
            PROMPTS, PROMPTS, PROMPTS, do_classifier_free_guidance=False, max_sequence_length=prior.t5_max_length
        )
    ours_tokens, ours_pooled = prior.split_conditioning(prior.embed_text(PROMPTS))
    torch.testing.assert_close(ours_tokens, tokens, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours_pooled, pooled, rtol=0, atol=1e-6)


def test_flow_sampler_matches_stable_diffusion_3_pipeline(prior, pipeline) -> None:
    """``solver=ddim`` (η = 0: the Euler step, ω = 5, 6 steps, ``output=latent``) from the same initial latent equals
    the pipeline's final latent and decoded image to 1e-4: a wrong grid (shift), velocity sign, CFG order, VAE
    shift/scale or conditioning fails."""
    generators = seeding.batch_generators(0, ["a", "b"], seeding.SOLVER)
    shape = prior.latent_shape((2, 3, SIZE, SIZE))
    z_T = prior.initial_noise(shape, generators)
    with torch.no_grad():
        reference = pipeline(
            PROMPTS,
            height=SIZE,
            width=SIZE,
            num_inference_steps=STEPS,
            guidance_scale=GUIDANCE,
            latents=z_T.clone(),
            output_type="latent",
            max_sequence_length=prior.t5_max_length,
        ).images
        image_ref = prior.vae.decode(reference / prior.vae.config.scaling_factor + prior.vae.config.shift_factor)[0]
    decoded = []
    decode = prior.decode
    prior.decode = lambda z: decoded.append(z.clone()) or decode(z)
    try:
        generators = seeding.batch_generators(0, ["a", "b"], seeding.SOLVER)
        prior.reset_counter()
        solver = DDIMSolver(num_steps=STEPS, guidance_scale=GUIDANCE, null_prompt="", output="latent")
        image = solver.solve(None, None, prior, PROMPTS, generators, (2, 3, SIZE, SIZE))
    finally:
        del prior.decode
    latent_error = (decoded[0] - reference).abs().max().item()
    image_error = (image - image_ref.clamp(-1, 1)).abs().max().item()
    print(f"sd3 flow sampler vs diffusers: latent {latent_error:.2e}, image {image_error:.2e}")
    assert reference.abs().max() > 0.1
    assert latent_error < 1e-4 and image_error < 1e-4
    assert prior.counter["unet_calls"] == STEPS and prior.counter["unet_rows"] == 4 * STEPS


def _run(solver, prior, y, operator, callback=None):
    return run_solver(solver, prior, y, operator, SIZE, callback)


def _compose(overrides):
    from hydra.utils import instantiate

    from tests.test_flow import compose

    return instantiate(compose(["model=tiny_sd3", *overrides]).solver)


@pytest.mark.parametrize("name", ["ldps", "gml_dps", "psld", "dps"])
def test_latent_family_runs_on_the_flow_prior(prior, name: str) -> None:
    """Each latent DPS-family method runs on tiny_sd3 (4 flow steps; DPS with ``sampler=ddim``, its DDPM step is not
    defined on flow priors). With ``step_size=0`` (and no gluing term) it is exactly the flow sampler
    (``solver=ddim``: the family's (ẑ0, ε̂) and step are the core's), and its gradient step moves the result (the
    measurement is used)."""
    operator, y = blurred_problem(SIZE)
    extra = ["solver.sampler=ddim"] if name == "dps" else []
    base = ["solver.num_steps=4", "solver.output=latent", "solver.cfg_scale=0.0", *extra]
    off = ["solver.step_size=0.0"] + (["solver.gluing_weight=0.0"] if name in ("gml_dps", "psld") else [])
    without = _run(_compose([f"solver={name}", *base, *off]), prior, y, operator)
    sampler = DDIMSolver(num_steps=4, guidance_scale=0.0, null_prompt="", output="latent")
    plain = _run(sampler, prior, None, None)
    torch.testing.assert_close(without, plain, rtol=0, atol=1e-6)
    stepped = _run(_compose([f"solver={name}", *base, "solver.step_size=1.0"]), prior, y, operator)
    assert torch.isfinite(stepped).all() and (stepped - plain).abs().max() > 1e-4


def test_treg_and_p2l_run_on_the_flow_prior(prior) -> None:
    """TReg (AN off: no image tower) on tiny_sd3: every DC step's CG lowers ‖A x̂ − y‖ (the data step acts on the
    flow prior's decoded ẑ0); P2L runs its prompt tuning through the transformer (the tuned ``c`` moves). Asking
    for adaptive negation is one line, before any network pass."""
    operator, y = blurred_problem(SIZE)
    values: list[dict] = []
    treg = _compose(["solver=treg", "solver.num_steps=6", "solver.cfg_scale=2.0"])  # AN off: solver_model preset
    out = _run(treg, prior, y, operator, lambda i, v: values.append(v))
    assert torch.isfinite(out).all() and len(values) >= 2
    for v in values:
        assert (v["dc/residual_after"] < v["dc/residual_before"]).all()
    with pytest.raises(UserError, match="no CLIP image encoder"):
        _run(_compose(["solver=treg", "solver.num_steps=2", "solver.adaptive_negation=true"]), prior, y, operator)
    shifts: list[torch.Tensor] = []
    p2l = _compose(["solver=p2l", "solver.num_steps=3", "solver.cfg_scale=1.0", "solver.prompt_iters=1"])
    out = _run(p2l, prior, y, operator, lambda i, v: shifts.append(v["prompt/shift"]))
    assert torch.isfinite(out).all() and shifts[-1].max() > 0


def test_resample_refuses_the_flow_prior(prior) -> None:
    """ReSample is written in ᾱ: on an SD3 prior it stops with one line before any network pass."""
    operator, y = blurred_problem(SIZE)
    prior.reset_counter()
    with pytest.raises(UserError, match="not defined for rectified-flow priors"):
        _run(_compose(["solver=resample", "solver.num_steps=4"]), prior, y, operator)
    assert prior.counter["unet_calls"] == 0


def test_gated_model_offline_fails_in_one_line(tmp_path) -> None:
    """sd35_medium without staged weights and downloads off: one line within seconds, naming the licence page and
    HF_TOKEN (the model is gated)."""
    import time

    from treg_exp.common.errors import WeightsNotFoundError
    from treg_exp.models.sd3 import SD3Prior

    start = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as error:
        SD3Prior(local_files_only=True, cache_dir=tmp_path).load("cpu")
    message = str(error.value)
    assert time.perf_counter() - start < 10 and "\n" not in message
    assert "https://huggingface.co/stabilityai/stable-diffusion-3.5-medium" in message and "HF_TOKEN" in message
