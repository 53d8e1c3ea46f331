"""``solver=ddim`` (shift 0, η = 0, ω = 7.5, 10 steps, float32) reproduces diffusers' StableDiffusionPipeline on the
tiny model from the same initial latent: final latents and decoded images to 1e-4 (max abs). Both parameterisations
of the ᾱ family: ε (SD 1.x, ``model=tiny``) and v (SD 2.1-768, ``model=tiny_v``; the pipeline's DDIMScheduler with
``prediction_type=v_prediction``), so a wrong v→ε/ẑ0 conversion fails."""

import pytest
import torch
from diffusers import StableDiffusionPipeline

from treg_exp.common import seeding
from treg_exp.models.tiny import TinyStableDiffusionPrior
from treg_exp.solvers.ddim import DDIMSolver

PROMPTS = ["a photo of the astronaut", "a cup of coffee"]
SIZE = 64
STEPS = 10
GUIDANCE = 7.5


@pytest.fixture(scope="module", params=["epsilon", "v_prediction"])
def prior(request):
    return TinyStableDiffusionPrior(dtype="float32", seed=0, prediction_type=request.param).load("cpu")


@pytest.fixture(scope="module")
def pipeline(prior):
    from diffusers import DDIMScheduler

    pipe = StableDiffusionPipeline(
        vae=prior.vae,
        text_encoder=prior.text_encoder,
        tokenizer=prior.tokenizer,
        unet=prior.unet,
        scheduler=DDIMScheduler(**prior.scheduler_config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_ddim_matches_diffusers_pipeline(prior, pipeline):
    assert pipeline.scheduler.config.prediction_type == prior.prediction_type
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
            eta=0.0,
            latents=z_T.clone(),
            output_type="latent",
        ).images
        reference_image = prior.vae.decode(reference / prior.vae.config.scaling_factor).sample

    # the DDIM solver's final latent: capture what it decodes
    decoded_latents = []
    decode = prior.decode

    def spy(z):
        decoded_latents.append(z.clone())
        return decode(z)

    prior.decode = spy
    try:
        solver = DDIMSolver(num_steps=STEPS, eta=0.0, guidance_scale=GUIDANCE, alpha_index_shift=0, output="latent")
        generators = seeding.batch_generators(0, ["a", "b"], seeding.SOLVER)
        prior.reset_counter()
        image = solver.solve(None, None, prior, PROMPTS, generators, (2, 3, SIZE, SIZE))
    finally:
        del prior.decode

    latent_error = (decoded_latents[0] - reference).abs().max().item()
    image_error = (image - reference_image.clamp(-1, 1)).abs().max().item()
    print(f"ddim vs diffusers: latent max abs {latent_error:.2e}, image max abs {image_error:.2e}")
    assert reference.abs().max() > 0.1  # a real trajectory, not a degenerate zero
    assert latent_error < 1e-4
    assert image_error < 1e-4
    # one CFG pair per step: 10 UNet calls of 2B = 4 rows, one decode of 2 rows
    assert prior.counter["unet_calls"] == STEPS and prior.counter["unet_rows"] == 4 * STEPS
    assert prior.counter["decode_calls"] == 1 and prior.counter["decode_rows"] == 2


def test_ddim_output_conventions_and_determinism(prior):
    """``x0`` decodes the last ẑ0, ``latent`` the final latent; η > 0 draws ξ from the generators (same seed → same)."""
    shape = (1, 3, SIZE, SIZE)

    def run(**kwargs):
        generators = seeding.batch_generators(0, ["a"], seeding.SOLVER)
        return DDIMSolver(num_steps=4, **kwargs).solve(None, None, prior, PROMPTS[:1], generators, shape)

    x0, latent = run(output="x0"), run(output="latent")
    # with set_alpha_to_one=False the last step maps ẑ0 to √ᾱ_0·ẑ0 + √(1−ᾱ_0)·ε̂: close to, not equal to ẑ0
    assert 0 < (x0 - latent).abs().max() < 0.5
    stochastic = run(eta=1.0)
    assert torch.equal(stochastic, run(eta=1.0))
    assert (stochastic - run(eta=0.0)).abs().max() > 1e-3
    assert stochastic.dtype == torch.float32 and stochastic.abs().max() <= 1.0
