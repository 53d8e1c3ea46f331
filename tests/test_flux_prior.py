"""``model=tiny_flux``: FLUX's classes (FluxTransformer2DModel with the guidance embedding, the 16-channel VAE,
CLIP-L and T5) at toy width, random weights built in code. The flow sampler against diffusers' FluxPipeline with
its distilled guidance and with true CFG (``true_cfg_scale`` and a negative prompt), and the latent solvers on it."""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

from treg_exp.common import seeding
from treg_exp.models.flux import RandomFluxPrior, pack_latents, unpack_latents
from treg_exp.solvers.ddim import DDIMSolver

PROMPTS = ["a photo of the astronaut", "a cup of coffee"]
SIZE = 64
STEPS = 4


@pytest.fixture(scope="module", params=["dev", "schnell"])
def prior(request) -> RandomFluxPrior:
    return RandomFluxPrior(variant=request.param, seed=0).load("cpu")


def _pipeline(prior) -> FluxPipeline:
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**prior.scheduler_config),
        vae=prior.vae,
        text_encoder=prior.text_encoder_1,
        tokenizer=prior.tokenizers[0],
        text_encoder_2=prior.text_encoder_2,
        tokenizer_2=prior.tokenizers[1],
        transformer=prior.transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_packing_round_trips() -> None:
    """:func:`unpack_latents` inverts :func:`pack_latents` (a wrong permutation would scramble the velocity)."""
    z = torch.randn(2, 16, 6, 8)
    assert pack_latents(z).shape == (2, 12, 64)
    assert torch.equal(unpack_latents(pack_latents(z), 6, 8), z)


@pytest.mark.parametrize(("true_cfg", "negative"), [(1.0, None), (2.5, "blurry, low quality")])
def test_flow_sampler_matches_flux_pipeline(prior, true_cfg: float, negative: str | None) -> None:
    """``solver=ddim`` (the Euler step, ``output=latent``) from the same initial latent equals FluxPipeline's final
    latent and decoded image to 1e-4, with the prior's distilled guidance 3.5 ([dev]; none on [schnell]) and either no
    true CFG or ``true_cfg_scale`` 2.5 with a negative prompt (our ``guidance_scale`` and ``null_prompt``). A wrong
    μ-shift, patch order, timestep scale (σ, not σ·1000), pooled output or CFG order fails."""
    pipe = _pipeline(prior)
    generators = seeding.batch_generators(0, ["a", "b"], seeding.SOLVER)
    shape = prior.latent_shape((2, 3, SIZE, SIZE))
    z_T = prior.initial_noise(shape, generators)
    with torch.no_grad():
        packed = pipe(
            PROMPTS,
            negative_prompt=None if negative is None else [negative] * 2,
            true_cfg_scale=true_cfg,
            height=SIZE,
            width=SIZE,
            num_inference_steps=STEPS,
            guidance_scale=prior.guidance_scale,
            latents=pack_latents(z_T),
            output_type="latent",
            max_sequence_length=prior.t5_max_length,
        ).images
        reference = unpack_latents(packed, *shape[2:])
        image_ref = prior.vae.decode(reference / prior.vae.config.scaling_factor + prior.vae.config.shift_factor)[0]
    decoded = []
    decode = prior.decode
    prior.decode = lambda z: decoded.append(z.clone()) or decode(z)
    try:
        generators = seeding.batch_generators(0, ["a", "b"], seeding.SOLVER)
        solver = DDIMSolver(num_steps=STEPS, guidance_scale=true_cfg, null_prompt=negative or "", output="latent")
        image = solver.solve(None, None, prior, PROMPTS, generators, (2, 3, SIZE, SIZE))
    finally:
        del prior.decode
    latent_error = (decoded[0] - reference).abs().max().item()
    image_error = (image - image_ref.clamp(-1, 1)).abs().max().item()
    print(f"flux {prior.variant} true_cfg {true_cfg}: latent {latent_error:.2e}, image {image_error:.2e}")
    assert reference.abs().max() > 0.1
    assert latent_error < 1e-4 and image_error < 1e-4


def test_latent_solvers_run_on_flux(prior) -> None:
    """On tiny_flux: LDPS with ``step_size=0`` is exactly the flow sampler (the μ-shifted grid reaches the family
    through ``prior.image_seq_len``), its gradient step moves the result, and TReg's CG lowers ‖A x̂ − y‖ at every DC
    step."""
    from treg_exp.operators.blur import gaussian_deblur
    from treg_exp.solvers.ldps import LDPS
    from treg_exp.solvers.treg import TReg

    operator = gaussian_deblur(kernel_size=9, kernel_sigma=2.0)
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(1, 3, SIZE, SIZE, generator=gen) * 1.8 - 0.9
    y = operator(x) + 0.01 * torch.randn(operator(x).shape, generator=gen)

    def run(solver, measurement=y, callback=None):
        generators = seeding.batch_generators(0, ["img"], seeding.SOLVER)
        return solver.solve(measurement, operator, prior, ["a photo"], generators, (1, 3, SIZE, SIZE), callback)

    plain = run(DDIMSolver(num_steps=STEPS, guidance_scale=0.0, output="latent"), None)
    torch.testing.assert_close(run(LDPS(num_steps=STEPS, step_size=0.0)), plain, rtol=0, atol=1e-6)
    assert (run(LDPS(num_steps=STEPS, step_size=1.0)) - plain).abs().max() > 1e-4
    values: list[dict] = []
    run(TReg(num_steps=6, adaptive_negation=False, cfg_scale=2.0), callback=lambda i, v: values.append(v))
    assert values and all((v["dc/residual_after"] < v["dc/residual_before"]).all() for v in values)
