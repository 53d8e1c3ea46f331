"""TReg (``treg_exp.solvers.treg``): parity with a straight-line float64 copy of the official loop, cost counts,
adaptive negation's closed form, data consistency, the exact Gaussian prior, determinism and batching.

Everything runs on the tiny random-weight SD model at 64 px (latents 4×8×8) or on the exact Gaussian prior; tests
about logic use 10–20 steps; the cost test, the 200-step parity test and the calibration against the exact posterior
run the 200-step defaults.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from treg_exp.common.errors import UserError
from treg_exp.models.gaussian import GaussianPrior
from treg_exp.models.tiny import TinyStableDiffusionPrior
from treg_exp.operators.blur import gaussian_deblur
from treg_exp.operators.inpaint import Inpainting
from treg_exp.reporting.calibration import calibrate, exact_sampler_check, make_problem
from treg_exp.solvers.oracles import PosteriorMean
from treg_exp.solvers.treg import TReg, dc_steps

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (1, 3, 64, 64)


@pytest.fixture(scope="module")
def prior64() -> TinyStableDiffusionPrior:
    return TinyStableDiffusionPrior(dtype="float64").load("cpu")


@pytest.fixture(scope="module")
def prior32() -> TinyStableDiffusionPrior:
    return TinyStableDiffusionPrior(dtype="float32").load("cpu")


def _truth(batch: int = 1, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A smooth test image ``[B, 3, 64, 64]`` in [−1, 1] (a colour gradient, different per image)."""
    lin = torch.linspace(-1.0, 1.0, 64, dtype=dtype)
    rows = []
    for b in range(batch):
        r = 0.8 * torch.sin(3.0 * lin[:, None] + b) * torch.cos(2.0 * lin[None, :])
        g = 0.6 * lin[:, None] * lin[None, :] - 0.1 * b
        bl = 0.5 * torch.cos(4.0 * lin[None, :] - b).expand(64, 64)
        rows.append(torch.stack([r, g, bl]))
    return torch.stack(rows)


def _measure(operator, x: torch.Tensor, seed: int = 7) -> torch.Tensor:
    gens = [torch.Generator().manual_seed(seed + b) for b in range(x.shape[0])]
    return operator.measure(x, gens)


def _gens(batch: int = 1, seed: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + b) for b in range(batch)]


# --- the straight-line reference -----------------------------------------------------------------------------
def official_treg(
    prior,
    A,
    At,
    y: torch.Tensor,
    prompt: str,
    null_prompt: str,
    cfg_guidance: float,
    num_sampling: int,
    generator: torch.Generator,
    use_an: bool,
    use_dps: bool,
    null_lr: float = 1e-3,
    cg_lamb: float = 1e-4,
    dps_lamb: float | None = None,
    cfg_one_runs_null: bool = True,
) -> torch.Tensor:
    """The official ``TRegSolver.sample`` (TReg-inverse/TReg, solver/latent_diffusion.py) written out for batch 1,
    float64, from REFERENCE.md: its own prepended-1.0 ᾱ table, its CG, its Adam loop, its DPS step.

    The only changes: randomness from ``generator`` (z_T, then per DC step the encoder's sample inside
    ``prior.encode``, then ξ), and the networks are the prior's. ``cfg_one_runs_null=False`` replaces the official
    ``predict_noise``'s ω = 1 branch (the null branch only) by the conditional one, our declared departure.
    Returns the image in [−1, 1].
    """
    from diffusers import DDIMScheduler

    dtype = torch.float64
    scheduler = DDIMScheduler.from_config(prior.scheduler_config)
    scheduler.set_timesteps(num_sampling)
    skip = scheduler.config.num_train_timesteps // num_sampling
    final_alpha_cumprod = scheduler.final_alpha_cumprod.to(dtype)
    alphas_cumprod = torch.cat([torch.tensor([1.0]), scheduler.alphas_cumprod]).to(dtype)

    def predict_noise(zt, t, uc, c, cfg):
        if uc is None or cfg == 1.0:
            return prior.eps(zt, t, uc if cfg_one_runs_null else c)
        noise_uc, noise_c = prior.eps(torch.cat([zt] * 2), t, torch.cat([uc, c], dim=0)).chunk(2)
        return noise_uc + cfg * (noise_c - noise_uc)

    def cg(a_fn, b, x, m=5, eps=1e-4):
        r = b - a_fn(x)
        p = r.clone()
        rs_old = (r * r).sum()
        for _ in range(m):
            ap = a_fn(p)
            alpha = rs_old / (p * ap).sum()
            x = x + alpha * p
            r = r - alpha * ap
            rs_new = (r * r).sum()
            if rs_new.sqrt() < eps:
                break
            p = r + (rs_new / rs_old) * p
            rs_old = rs_new
        return x

    def adaptive_negation(x0, uc, lr, num_iter=10):
        uc = uc.detach().clone()
        img_feats = prior.embed_image(x0.detach()).detach()
        img_feats = img_feats / img_feats.norm(dim=1, keepdim=True)
        uc.requires_grad = True
        optim = torch.optim.Adam([uc], lr=lr)
        for _ in range(num_iter):
            optim.zero_grad()
            loss = (img_feats @ uc.permute(0, 2, 1)).mean()
            loss.backward()
            optim.step()
        return uc.detach()

    with torch.no_grad():
        uc = prior.null_embedding(1, null_prompt).to(dtype)
        c = prior.embed_text([prompt]).to(dtype)
    h, w = SHAPE[2] // 8, SHAPE[3] // 8
    zt = torch.randn((4, h, w), generator=generator, dtype=torch.float32)[None].to(dtype)
    z0t = zt
    for step, t in enumerate(int(v) for v in scheduler.timesteps):
        prev_t = t - skip
        at = alphas_cumprod[t]
        at_prev = alphas_cumprod[prev_t] if prev_t >= 0 else final_alpha_cumprod
        if step % 3 == 0 and step < 170:
            with torch.no_grad():
                noise_pred = predict_noise(zt, t, uc, c, cfg_guidance)
                z0t = (zt - (1 - at).sqrt() * noise_pred) / at.sqrt()
                x0t = prior.decode(z0t)
                bvec = At(y) + cg_lamb * x0t
                x0y = cg(lambda x: At(A(x)) + cg_lamb * x, bvec, x0t, m=5)
                z0y = prior.encode(x0y, [generator], mode="sample")
            if use_an:
                uc = adaptive_negation(x0y, uc, lr=null_lr)
            with torch.no_grad():
                noise = torch.randn((4, h, w), generator=generator, dtype=torch.float32)[None].to(dtype)
                z0_ema = at_prev * z0y + (1 - at_prev) * z0t
                zt = at_prev.sqrt() * z0_ema + (1 - at_prev) * noise_pred
                zt = zt + (1 - at_prev).sqrt() * at_prev.sqrt() * noise
        elif use_dps:
            lamb = dps_lamb if dps_lamb is not None else at_prev.sqrt()
            with torch.enable_grad():
                zt = zt.detach().requires_grad_(True)
                noise_pred = predict_noise(zt, t, uc, c, cfg=0)
                z0t = (zt - (1 - at).sqrt() * noise_pred) / at.sqrt()
                zt_prime = at_prev.sqrt() * z0t + (1 - at_prev).sqrt() * noise_pred
                x0t = prior.decode(z0t)
                residue = torch.linalg.norm((y - A(x0t)).reshape(-1))
                grad = torch.autograd.grad(residue, zt)[0]
            zt = (zt_prime - lamb * grad).detach()
            z0t = z0t.detach()
        else:
            with torch.no_grad():
                noise_pred = predict_noise(zt, t, uc, c, cfg_guidance)
                z0t = (zt - (1 - at).sqrt() * noise_pred) / at.sqrt()
                zt = at_prev.sqrt() * z0t + (1 - at_prev).sqrt() * noise_pred
    with torch.no_grad():
        img = prior.decode(z0t)
    return (img / 2 + 0.5).clamp(0, 1) * 2 - 1


@pytest.mark.parametrize(
    ("use_an", "use_dps"), [(True, False), (False, False), (True, True)], ids=["an", "no_an", "an_dps"]
)
def test_matches_official_reference(prior64, use_an: bool, use_dps: bool) -> None:
    """The solver (official indexing, DC rule in step units) equals the straight-line official loop to 1e-6."""
    operator = gaussian_deblur(kernel_size=9, kernel_sigma=2.0)
    y = _measure(operator, _truth())
    kwargs = dict(num_steps=20, cfg_scale=5.0, null_prompt="out of focus", null_lr=1e-2, dc_grid=None)
    solver = TReg(adaptive_negation=use_an, use_dps=use_dps, **kwargs)
    ours = solver.solve(y, operator, prior64, ["a photo"], _gens(), SHAPE)
    ref = official_treg(
        prior64,
        operator.forward,
        operator.adjoint,
        y,
        "a photo",
        "out of focus",
        5.0,
        20,
        _gens()[0],
        use_an=use_an,
        use_dps=use_dps,
        null_lr=1e-2,
    )
    assert ours.dtype == torch.float32 and ours.shape == SHAPE
    diff = (ours.double() - ref).abs().max().item()
    assert diff < 1e-6, diff
    # Not trivially equal: the output depends on the options being compared.
    assert ref.std() > 1e-3


@pytest.mark.parametrize("cfg_scale", [0.0, 1.0], ids=["cfg0", "cfg1"])
def test_matches_official_reference_at_defaults(prior64, cfg_scale: float) -> None:
    """The default schedule (200 steps, DC counted on the 200-step grid: 57 DC steps) against the official loop.
    ω = 0 (AN on): equal to 1e-6 — the official code evaluates the CFG pair and multiplies one branch by 0, we run
    one branch: same values. ω = 1 (AN off, to keep the test short; AN is compared at ω = 0 and in the 20-step
    test): the official code runs the null branch only and ours the conditional one (our declared departure), so
    ours equals the official loop with only that branch replaced — and differs from the unmodified one.

    Catches a DC grid that drifts from the official ``step % 3 == 0 and step < 170`` at 200 steps, an ᾱ pairing off
    by one near t = 1 (only the full schedule reaches it), and any other difference hiding behind the ω = 1 one."""
    operator = gaussian_deblur(kernel_size=9, kernel_sigma=2.0)
    y = _measure(operator, _truth())
    use_an = cfg_scale == 0.0
    solver = TReg(cfg_scale=cfg_scale, null_prompt="out of focus", null_lr=1e-2, adaptive_negation=use_an)
    assert solver.num_steps == 200 and solver.dc_grid == 200 and sum(solver.dc_schedule()) == 57
    ours = solver.solve(y, operator, prior64, ["a photo"], _gens(), SHAPE).double()
    kwargs = dict(use_an=use_an, use_dps=False, null_lr=1e-2)
    args = (prior64, operator.forward, operator.adjoint, y, "a photo", "out of focus", cfg_scale)
    reference = official_treg(*args, 200, _gens()[0], cfg_one_runs_null=cfg_scale != 1.0, **kwargs)
    assert (ours - reference).abs().max().item() < 1e-6
    if cfg_scale == 1.0:  # the unmodified official ω = 1 ignores the prompt (shown on 20 steps: the same branch)
        short = TReg(num_steps=20, dc_grid=None, cfg_scale=1.0, null_prompt="out of focus", adaptive_negation=False)
        ours_short = short.solve(y, operator, prior64, ["a photo"], _gens(), SHAPE).double()
        official_short = official_treg(*args, 20, _gens()[0], **kwargs)
        assert (ours_short - official_short).abs().max().item() > 1e-2


def test_dc_schedule_official_and_scaling() -> None:
    """Defaults: 57 DC steps of 200 at the official positions; the same noise levels for other step counts."""
    flags = dc_steps(200, 3, 170, 200)
    assert [i for i, f in enumerate(flags) if f] == [i for i in range(200) if i % 3 == 0 and i < 170]
    assert sum(TReg().dc_schedule()) == 57
    # Counted on the 200-step grid: 100 or 1000 steps keep 57 DC steps at the same timesteps.
    assert sum(dc_steps(100, 3, 170, 200)) == 57
    flags_1000 = dc_steps(1000, 3, 170, 200)
    assert sum(flags_1000) == 57 and [i for i, f in enumerate(flags_1000) if f][:3] == [0, 15, 30]
    # dc_grid=None: the official rule in this run's own steps.
    assert [i for i, f in enumerate(dc_steps(20, 3, 170, None)) if f] == [0, 3, 6, 9, 12, 15, 18]
    with pytest.raises(UserError):
        TReg(dc_every=0)


def test_bad_options_and_inputs(prior64) -> None:
    with pytest.raises(UserError):
        TReg(encode_mode="mode")
    with pytest.raises(UserError):
        TReg(alpha_index_shift=2)
    with pytest.raises(UserError):
        TReg(cfg_scale=-1.0)
    y = torch.zeros(1, 3, 64, 64, dtype=torch.float64)
    with pytest.raises(UserError):
        TReg(num_steps=2).solve(y, gaussian_deblur(9, 2.0), prior64, ["a", "b"], _gens(), SHAPE)
    # Adaptive negation on a prior without an image encoder is a one-line error before any step runs.
    gaussian = GaussianPrior(dtype="float64")
    with pytest.raises(UserError, match="adaptive_negation"):
        TReg(num_steps=2).solve(y, gaussian_deblur(9, 2.0), gaussian, [""], _gens(), SHAPE)
    assert gaussian.counter["unet_calls"] == 0


# --- cost -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("cfg_scale", "rows"), [(5.0, 2), (0.0, 1)], ids=["cfg5", "cfg0"])
def test_cost_counts_at_defaults(prior64, cfg_scale: float, rows: int) -> None:
    """At defaults per image: 200 UNet calls (of 2 rows; 1 at cfg 0), 57 encodes, 58 decodes, 57 CLIP passes.

    (float64: on this CPU the tiny UNet is no slower than in float32, and the fixture is shared.)"""
    operator = gaussian_deblur(kernel_size=9, kernel_sigma=2.0)
    y = _measure(operator, _truth())
    prior64.reset_counter()
    TReg(cfg_scale=cfg_scale).solve(y, operator, prior64, ["a photo"], _gens(), SHAPE)
    counts = prior64.counter
    assert counts["unet_calls"] == 200 and counts["unet_rows"] == 200 * rows
    assert counts["encode_calls"] == 57 and counts["encode_rows"] == 57
    assert counts["decode_calls"] == 58 and counts["decode_rows"] == 58
    assert counts["clip_image_calls"] == 57 and counts["clip_image_rows"] == 57


# --- adaptive negation ----------------------------------------------------------------------------------------
def test_adaptive_negation_closed_form(prior64, monkeypatch) -> None:
    """Each DC step moves every row of c_∅ by −null_iters·null_lr·g/(|g|+ε) with g = f̂/77 (≈ sign(f̂)); c fixed."""
    null_lr, null_iters = 2e-3, 10
    operator = gaussian_deblur(kernel_size=9, kernel_sigma=2.0)
    y = _measure(operator, _truth())
    conds: list[torch.Tensor] = []
    feats: list[torch.Tensor] = []
    eps_fn, embed_fn = prior64.eps, prior64.embed_image

    def record_eps(z, t, cond):
        conds.append(cond.detach().clone())
        return eps_fn(z, t, cond)

    def record_embed(x):
        f = embed_fn(x)
        feats.append(f.detach().clone())
        return f

    monkeypatch.setattr(prior64, "eps", record_eps)
    monkeypatch.setattr(prior64, "embed_image", record_embed)
    solver = TReg(num_steps=10, dc_grid=None, cfg_scale=5.0, null_lr=null_lr, null_iters=null_iters)
    shifts: list[float] = []
    solver.solve(y, operator, prior64, ["a photo"], _gens(), SHAPE, callback=lambda i, v: _collect(shifts, v))
    is_dc = solver.dc_schedule()
    assert sum(is_dc) == 4 and len(feats) == 4 and len(conds) == 10
    c_prompt = prior64.embed_text(["a photo"])
    null0 = prior64.null_embedding(1, solver.null_prompt)
    assert all(torch.equal(cond[1:], c_prompt) for cond in conds)  # c never changes
    assert torch.equal(conds[0][:1], null0)
    rows = null0.shape[1]
    dc_indices = [i for i, f in enumerate(is_dc) if f]
    for k, i in enumerate(dc_indices[:-1]):  # the last DC step (9) has no later UNet call to observe
        delta = conds[i + 1][:1] - conds[i][:1]
        g = feats[k] / rows  # ∂L/∂c_∅[j] for every row j
        expected = -null_iters * null_lr * g / (g.abs() + 1e-8)
        assert torch.allclose(delta, expected.expand_as(delta), rtol=0, atol=1e-10)
        # ≈ −null_iters·null_lr·sign(f̂), exactly so up to Adam's ε on tiny components
        sign_form = -null_iters * null_lr * torch.sign(feats[k]).expand_as(delta)
        assert ((delta - sign_form).abs() <= null_iters * null_lr * 1e-8 / g.abs() + 1e-12).all()
    # ‖c_∅ − c_∅⁰‖ reported at each DC step grows like the accumulated sign steps
    assert len(shifts) == 4 and shifts[0] == pytest.approx(null_iters * null_lr * (rows * 32) ** 0.5, rel=1e-3)


def _collect(out: list, values: dict) -> None:
    if "an/null_shift" in values:
        out.append(float(values["an/null_shift"][0]))


# --- data consistency -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("cg_iters", [5, 50])
def test_data_consistency_lowers_residual(prior64, cg_iters: int) -> None:
    operator = gaussian_deblur(kernel_size=9, kernel_sigma=2.0)
    x = _truth()
    y = _measure(operator, x)
    noise_norm = (y - operator(x)).flatten(1).norm(dim=1)
    log: dict[str, list[torch.Tensor]] = {}

    def callback(step: int, values: dict) -> None:
        for key, value in values.items():
            log.setdefault(key, []).append(value)

    TReg(num_steps=10, dc_grid=None, cg_iters=cg_iters, adaptive_negation=False).solve(
        y, operator, prior64, ["a photo"], _gens(), SHAPE, callback=callback
    )
    before, after = torch.stack(log["dc/residual_before"]), torch.stack(log["dc/residual_after"])
    assert before.shape == (4, 1)
    assert (after < before).all()
    if cg_iters == 50:
        assert (after <= 1.2 * noise_norm).all(), (after / noise_norm).flatten().tolist()


# --- determinism and batching ---------------------------------------------------------------------------------
def test_deterministic_bit_for_bit(prior32) -> None:
    operator = gaussian_deblur(kernel_size=9, kernel_sigma=2.0)
    y = _measure(operator, _truth(dtype=torch.float32))
    solver = TReg(num_steps=8, dc_grid=None, null_lr=1e-2)
    first = solver.solve(y, operator, prior32, ["a photo"], _gens(seed=3), SHAPE)
    second = solver.solve(y, operator, prior32, ["a photo"], _gens(seed=3), SHAPE)
    other = solver.solve(y, operator, prior32, ["a photo"], _gens(seed=4), SHAPE)
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_batch_of_two_equals_two_runs(prior64) -> None:
    """Per-image prompts, null embeddings, Adam and generators: a batch of 2 is two runs of 1 (AN and DPS on)."""
    operator = gaussian_deblur(kernel_size=9, kernel_sigma=2.0)
    x = _truth(batch=2)
    y = _measure(operator, x)
    prompts = ["a photo", "the thing"]
    solver = TReg(num_steps=8, dc_grid=None, null_lr=1e-2, use_dps=True)
    batched = solver.solve(y, operator, prior64, prompts, _gens(2, seed=5), (2, 3, 64, 64))
    singles = [
        solver.solve(y[b : b + 1], operator, prior64, [prompts[b]], _gens(1, seed=5 + b), SHAPE) for b in range(2)
    ]
    assert (batched.double() - torch.cat(singles).double()).abs().max().item() < 1e-8
    assert not torch.allclose(batched[0], batched[1])


def test_trajectory_snapshots(prior64) -> None:
    operator = gaussian_deblur(kernel_size=9, kernel_sigma=2.0)
    y = _measure(operator, _truth())
    seen: list[int] = []
    out = TReg(num_steps=6, dc_grid=None, trajectory_every=2, adaptive_negation=False).solve(
        y, operator, prior64, ["a"], _gens(), SHAPE, callback=lambda i, v: "image/x0" in v and seen.append(i)
    )
    assert seen == [0, 2, 4, 5]
    assert out.shape == SHAPE


def test_gradient_checkpointing_is_delegated(prior64) -> None:
    """gradient_checkpointing=true switches the prior's UNet/VAE checkpointing; the DPS result is unchanged."""
    operator = gaussian_deblur(kernel_size=9, kernel_sigma=2.0)
    y = _measure(operator, _truth())
    kwargs = dict(num_steps=5, dc_grid=None, use_dps=True, adaptive_negation=False)
    plain = TReg(**kwargs).solve(y, operator, prior64, ["a"], _gens(), SHAPE)
    try:
        checkpointed = TReg(gradient_checkpointing=True, **kwargs).solve(y, operator, prior64, ["a"], _gens(), SHAPE)
        assert prior64.gradient_checkpointing and prior64.unet.is_gradient_checkpointing
    finally:
        prior64.set_gradient_checkpointing(False)
    assert (plain.double() - checkpointed.double()).abs().max().item() < 1e-10


# --- the exact Gaussian prior ---------------------------------------------------------------------------------
@pytest.mark.parametrize("task", ["gauss_deblur", "inpaint_random"])
def test_gaussian_prior_calibration(task: str) -> None:
    """TReg at its defaults for this prior (200 steps, 57 DC steps, AN off, null prompt "", ω = 1) scored against the
    exact posterior by treg_exp.reporting.calibration (4 prior draws at 32 px, 3 seeds; 15×15 σ = 2 circular blur, or
    30–70 % random inpainting). Each bound catches a mistake:

    - the exact sampler check within ±0.15 of (1, 1, 0) and the exact posterior mean at (≈0.5, 0, ≈0): a broken
      reference (samples of another posterior, a seed shared between samples and references, a wrong variance τ);
    - ``bias2 < 0.5·bias2(Aᵀy)``: TReg's mean is much nearer the posterior mean than the naive ``Aᵀy`` — catches a
      data-consistency step with the wrong sign or λ (λ = 1 instead of 1e-4 measured 0.82 and 0.90 of Aᵀy's), a
      measurement ignored, and the DC step skipped (checked below: with ``dc_until=0`` it fails the bound);
    - ``spread_ratio > 0.3``: catches a solver that lost its noise (the same output for every seed gives 0).

    MSE is not bounded against ``Aᵀy``: on this smooth prior an exact posterior sample's MSE can exceed ``Aᵀy``'s
    (the deblur case here), and TReg (MSE 1.3 and 2.2 of an exact sample's in benchmarks/CALIBRATION.md) is no exact
    sampler.
    """
    if task == "gauss_deblur":
        operator = gaussian_deblur(kernel_size=15, kernel_sigma=2.0, padding="circular")
    else:
        operator = Inpainting(mask_type="random", drop_ratio=[0.3, 0.7])
    problem = make_problem(operator, num_images=4, resolution=32, seeds=3)
    check = exact_sampler_check(problem)
    assert abs(check.mse_ratio - 1) < 0.15 and abs(check.spread_ratio - 1) < 0.15 and abs(check.bias2) < 0.15, check
    mean = calibrate(PosteriorMean(tol=1e-10), problem)
    assert abs(mean.mse_ratio - 0.5) < 0.1 and mean.spread_ratio < 1e-12 and abs(mean.bias2) < 1e-6, mean

    settings = dict(adaptive_negation=False, null_prompt="", cfg_scale=1.0)
    treg = calibrate(TReg(**settings), problem)
    print(f"{task}: {treg}")
    assert treg.bias2 < 0.5 * treg.adjoint_bias2, treg
    assert treg.spread_ratio > 0.3, treg
    no_dc = calibrate(TReg(dc_until=0, **settings), problem)
    assert no_dc.bias2 > 0.5 * no_dc.adjoint_bias2, no_dc  # the bias bound would catch a DC step that does nothing


def test_text_steers_inpainted_region() -> None:
    """Gaussian prior, truth from the "" prior (mean 0), prompt "red": cfg > 0 pulls the hole toward red."""
    prior = GaussianPrior(dtype="float64").load("cpu")
    gens = _gens(2, seed=11)
    x = prior.sample(prior.embed_text(["", ""]), gens, 64, 64)
    operator = Inpainting(mask_type="box", box_fraction=0.5, placement="center").draw(_gens(2), x.shape)
    y = _measure(operator, x)
    hole = operator(torch.ones_like(x)) == 0
    assert 0.2 < hole.double().mean() < 0.3
    red = prior.embed_text(["red"])[0]  # (0.5, −0.5, −0.5)
    direction = red / red.norm()

    def hole_colour(cfg: float) -> float:
        out = TReg(num_steps=50, adaptive_negation=False, cfg_scale=cfg, null_prompt="").solve(
            y, operator, prior, ["red", "red"], _gens(2, seed=1), x.shape
        )
        means = torch.stack([(out.double()[:, c][hole[:, c]]).mean() for c in range(3)])
        return float(means @ direction)

    no_text, one, three = hole_colour(0.0), hole_colour(1.0), hole_colour(3.0)
    # ω = 1 must use the prompt (the official code's ω = 1 ran the null branch only)
    assert one > no_text + 0.2
    assert three > one + 0.2


# --- configs --------------------------------------------------------------------------------------------------
def test_configs_instantiate() -> None:
    solver = instantiate(OmegaConf.load(ROOT / "conf/solver/treg.yaml"))
    assert isinstance(solver, TReg)
    assert (solver.num_steps, solver.cfg_scale, solver.cg_iters, solver.null_iters) == (200, 5.0, 5, 10)
    assert solver.alpha_index_shift == 1 and solver.encode_mode == "sample" and solver.adaptive_negation
    # every official README command uses this null prompt (the command-line default "" is not the preset)
    assert solver.null_prompt == TReg().null_prompt == "out of focus, depth of field"
    food = OmegaConf.load(ROOT / "conf/experiment/treg_food101.yaml")
    readme = OmegaConf.load(ROOT / "conf/solver_baselines/treg_treg_repo.yaml")  # experiment=treg_food101 selects it
    assert readme.null_prompt == "out of focus, depth of field" and food.task.svd_pairing == "official"
    assert sum(solver.dc_schedule()) == 57
    for name in ("treg_sr16_readme", "treg_gauss_deblur_readme"):
        text = (ROOT / f"conf/experiment/{name}.yaml").read_text()
        assert text.startswith("# @package _global_")
        cfg = OmegaConf.load(ROOT / f"conf/experiment/{name}.yaml")
        assert cfg.task.impl == "svd" and cfg.task.svd_pairing == "official" and cfg.solver.cfg_scale == 5.0
        assert cfg.solver.null_prompt == "out of focus, depth of field"
    assert OmegaConf.load(ROOT / "conf/experiment/treg_gauss_deblur_readme.yaml").solver.null_lr == 5e-4
    for path in (ROOT / "conf/solver_task").glob("treg_*.yaml"):
        assert path.read_text().startswith("# @package solver")
        merged = OmegaConf.merge(OmegaConf.load(ROOT / "conf/solver/treg.yaml"), OmegaConf.load(path))
        assert isinstance(instantiate(merged), TReg)
