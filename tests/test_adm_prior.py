"""The pixel ADM priors (treg_exp/models/adm.py): schedule, ε from the learned-variance output, counts, the official
checkpoint layout (against deepinv's DiffUNet, which loads the official files strictly), loading, prompts, errors."""

import importlib.util
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from tests.test_configs import compose_with
from treg_exp.common.errors import UserError, WeightsNotFoundError
from treg_exp.models import adm
from treg_exp.models.adm import AdmArchitecture, AdmPrior, diffusers_to_official
from treg_exp.solvers import core

ROOT = Path(__file__).parents[1]

#: a reduced 512-style architecture: a half-width first level (the time-embedding swap), a class embedding,
#: attention on levels 1 and 2 (down, middle and up), 1x1 skip convolutions where the width changes
REDUCED = [
    "model.image_size=32",
    "model.model_channels=64",
    "model.num_res_blocks=1",
    "model.channel_mult=[0.5,1,1]",
    "model.attention_resolutions=[16,8]",
    "model.num_head_channels=32",
    "model.num_classes=10",
    "model.class_label=3",
]


def one_line(error: BaseException) -> bool:
    return "\n" not in str(error) and len(str(error)) > 20


def reduced_prior(*overrides: str, tmp_path=None) -> AdmPrior:
    """``model=adm_imagenet512_random`` at reduced width, built through the config (as a user would override it)."""
    extra = [f"paths.weights={tmp_path}"] if tmp_path is not None else []
    cfg = compose_with("model=adm_imagenet512_random", *REDUCED, *overrides, *extra)
    return instantiate(cfg.model)


@pytest.fixture(scope="module")
def prior():
    return reduced_prior().load("cpu")


def noisy(batch: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def labels(*classes: int) -> torch.Tensor:
    return torch.tensor(classes, dtype=torch.float32)[:, None]


# --- schedule --------------------------------------------------------------------------------------------------------
def test_schedule_is_adms_linear_betas_and_ddim_respacing(prior):
    """ᾱ from guided-diffusion's construction (numpy float64 linspace 1e-4 → 0.02, cumprod); the grids are its
    ``ddimN`` respacing (t = k·T/N, last t = 0) and ᾱ after the last step is 1. Catches SD's scaled-linear betas, a
    steps_offset of 1 (t = 981 …) or a last step that keeps ᾱ_0."""
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    expected = np.cumprod(1.0 - betas)
    assert np.allclose(prior.schedule.alphas_cumprod.numpy(), expected, rtol=1e-13, atol=0)
    plan = core.ddim_plan(prior.schedule, 50)
    assert [s.t for s in plan] == list(range(980, -1, -20))  # space_timesteps(1000, "ddim50")
    assert plan[-1].alpha_bar_prev == 1.0
    assert [s.t for s in core.ddim_plan(prior.schedule, 1000)] == list(range(999, -1, -1))


# --- ε, shapes, counts -----------------------------------------------------------------------------------------------
def test_eps_is_the_first_three_of_six_output_channels(prior):
    """ε = the network's output channels 0–2 and v = 3–5, checked against a direct call of the UNet; the two halves
    differ, so returning the wrong half (or all six) fails."""
    x = noisy()
    cond = labels(3, 7)
    with torch.no_grad():
        direct = prior.unet(x, torch.tensor(400), class_labels=torch.tensor([3, 7]), return_dict=False)[0]
        eps, v = prior.model_output(x, 400, cond)
        eps_only = prior.eps(x, 400, cond)
    assert direct.shape == (2, 6, 32, 32) and eps.shape == v.shape == (2, 3, 32, 32)
    assert torch.equal(eps, direct[:, :3]) and torch.equal(v, direct[:, 3:]) and torch.equal(eps_only, eps)
    assert not torch.allclose(direct[:, :3], direct[:, 3:])


def test_counts_and_identities(prior):
    """encode/decode are identities counted as one pass of B rows; each ε is one UNet call of B rows (a CFG pair one
    call of 2B), so the solvers' cost accounting is the same as on the latent priors."""
    prior.reset_counter()
    x = noisy()
    assert prior.latent_shape(x.shape) == (2, 3, 32, 32)
    z = prior.encode(x)
    assert torch.equal(z, x) and z is not x and torch.equal(prior.decode(z), x)
    cond = prior.embed_text(["1", "2"])
    with torch.no_grad():
        prior.eps(x, 999, cond)
        core.guided_prediction(prior, x, 500, cond, prior.null_embedding(2), 3.0)
    c = prior.counter
    assert (c["encode_calls"], c["encode_rows"], c["decode_calls"], c["decode_rows"]) == (1, 2, 1, 2)
    assert (c["unet_calls"], c["unet_rows"]) == (2, 6)


def test_class_label_conditions_and_batch_rows_are_independent(prior):
    """The class reaches the network (different classes, different ε), and row b of a batch equals a run of row b
    alone (no cross-talk between images)."""
    x = noisy()
    with torch.no_grad():
        both = prior.eps(x, 300, labels(3, 5))
        first = prior.eps(x[:1], 300, labels(3))
        other_class = prior.eps(x[:1], 300, labels(5))
    assert torch.allclose(both[:1], first, atol=1e-5)
    assert (first - other_class).abs().max() > 1e-3


def test_eps_is_differentiable_and_checkpointing_keeps_the_gradient():
    """DPS-type solvers backpropagate through ε to x_t; gradient checkpointing must give the same gradient."""
    grads = []
    for enabled in (False, True):
        prior = reduced_prior(f"model.gradient_checkpointing={str(enabled).lower()}").load("cpu")
        x = noisy(1).requires_grad_(True)
        (grad,) = torch.autograd.grad(prior.eps(x, 200, labels(3)).square().sum(), x)
        grads.append(grad)
    assert grads[0].abs().max() > 0
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_image_sides_must_fit_the_downsamplings(prior):
    """Three levels halve twice: sides must be multiples of 4; others fail with one line, not deep in a conv."""
    with pytest.raises(UserError) as error:
        prior.latent_shape((1, 3, 30, 32))
    assert one_line(error.value) and "multiples of 4" in str(error.value)


# --- prompts ---------------------------------------------------------------------------------------------------------
def test_prompts_are_ignored_with_one_warning():
    """No text: any prompt gives the same (empty) conditioning and the same ε, and only the first ignored prompt
    warns."""
    prior = reduced_prior("model.num_classes=null").load("cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cond = prior.embed_text(["a photo of a face", "a dog"])
        again = prior.embed_text(["something else"])
        null = prior.null_embedding(2)
    ignored = [w for w in caught if "ignored" in str(w.message)]
    assert len(ignored) == 1 and issubclass(ignored[0].category, UserWarning)
    assert cond.shape == (2, 0) and again.shape == (1, 0) and null.shape == (2, 0)
    with torch.no_grad():
        assert torch.equal(prior.eps(noisy(), 500, cond), prior.eps(noisy(), 500, null))


def test_class_model_takes_integer_prompts_as_classes(prior):
    """A prompt that is a class index selects that class; any other prompt falls back to class_label (3)."""
    prior._warned.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cond = prior.embed_text(["7", "a dog", "", "12"])  # 12 is outside the 10 classes: not a class index
    assert cond[:, 0].tolist() == [7.0, 3.0, 3.0, 3.0]
    assert sum("ignored" in str(w.message) for w in caught) == 1
    assert prior.null_embedding(1)[:, 0].tolist() == [3.0]


# --- the official layout and loading ---------------------------------------------------------------------------------
def _deepinv_ffhq(seed: int = 0):
    """deepinv's DiffUNet for DPS's FFHQ model (it loads the official ffhq_10m.pt with strict=True), with seeded
    non-zero random weights (its own init zeroes the output convolutions, which would hide any wiring error)."""
    from deepinv.models.diffunet import DiffUNet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = DiffUNet(pretrained=None).eval()
        with torch.no_grad():
            for name, p in net.named_parameters():
                if p.dim() > 1:
                    p.normal_(0.0, p[0].numel() ** -0.5)
                else:  # every 1-D weight is a GroupNorm scale
                    p.normal_(1.0 if name.endswith("weight") else 0.0, 0.1)
    state = {k: v for k, v in net.state_dict().items() if "alphas_cumprod" not in k}  # deepinv's own buffers
    return net, state


def test_official_layout_and_eps_match_deepinv_diffunet(tmp_path):
    """The full adm_ffhq256 architecture, holding a state dict in guided-diffusion's key layout taken from deepinv's
    DiffUNet (an independent implementation that strict-loads the official files), gives deepinv's ε to float32
    rounding. Catches a wrong key map, a wrong q/k/v split of the legacy attention, a wrong time embedding (sin/cos
    order, width) or scale-shift norm, or skip connections joined in the wrong order. (The file path of loading is
    the round-trip test's, at reduced width: a 374 MB file is not written here.)"""
    net, state = _deepinv_ffhq()
    prior = instantiate(compose_with("model=adm_ffhq256", f"paths.weights={tmp_path}").model).load("cpu", state=state)
    x = noisy(1)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "trained at 256x256; running at 32x32"
        ours = prior.eps(x, 600, prior.embed_text([""]))
        reference = net.forward_diffusion(x, torch.tensor([600]))[:, :3]
    scale = reference.abs().max()
    assert scale > 0.1
    assert (ours - reference).abs().max() <= 1e-4 * scale
    assert set(diffusers_to_official(prior.unet.state_dict(), prior.architecture)) == set(state)


def test_imagenet256_layout_matches_deepinv_large_model():
    """guided-diffusion's ImageNet-256 key names and shapes (deepinv's large DiffUNet = 256x256_diffusion_uncond's
    architecture), built on the meta device: no memory, no time."""
    from deepinv.models.diffunet import DiffUNet

    arch = AdmArchitecture(256, 256, 2, (1, 1, 2, 2, 4, 4), (32, 16, 8))
    with torch.device("meta"):
        reference = {k: v.shape for k, v in DiffUNet(large_model=True, pretrained=None).state_dict().items()}
        ours = {k: v.shape for k, v in diffusers_to_official(adm.build_unet(arch).state_dict(), arch).items()}
    reference = {k: v for k, v in reference.items() if "alphas_cumprod" not in k}
    assert ours == reference


def test_checkpoint_round_trip_is_exact(prior, tmp_path):
    """A checkpoint written in the official layout and loaded back (weights=official, model.checkpoint) gives
    bit-identical ε; it holds a class embedding ``label_emb.weight`` [classes, 4·model_channels]."""
    official = diffusers_to_official(prior.unet.state_dict(), prior.architecture)
    assert official["label_emb.weight"].shape == (10, 256)
    assert official["time_embed.0.weight"].shape == (256, 64)  # the sinusoid has model_channels dims
    path = tmp_path / "adm.pt"
    torch.save(official, path)
    loaded = reduced_prior("model.weights=official", f"model.checkpoint={path}", tmp_path=tmp_path).load("cpu")
    x = noisy()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert torch.equal(loaded.eps(x, 700, labels(1, 9)), prior.eps(x, 700, labels(1, 9)))
    # a checkpoint of another architecture is refused with one line naming the file
    with pytest.raises(UserError) as error:
        reduced_prior("model.weights=official", f"model.checkpoint={path}", "model.num_classes=null").load("cpu")
    assert one_line(error.value) and str(path) in str(error.value) and "label_emb" in str(error.value)


@pytest.mark.parametrize("name", ["adm_ffhq256", "adm_imagenet256", "adm_imagenet512"])
def test_missing_weights_fail_fast_with_one_line(name, tmp_path):
    """No file and downloads off: one line naming the model, the file and the staging command, in well under a
    second (before the 0.1-0.6 G-parameter network is built)."""
    cfg = compose_with(f"model={name}", f"paths.weights={tmp_path}", "model.local_files_only=true")
    prior = instantiate(cfg.model)
    start = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as error:
        prior.load("cpu")
    assert time.perf_counter() - start < 1.0 and prior.unet is None
    message = str(error.value)
    assert one_line(error.value) and name in message and adm.RELEASES[name].file in message
    assert f"scripts/fetch_weights.py --out DIR --models {name}" in message


def test_missing_explicit_checkpoint_fails_with_one_line(tmp_path):
    prior = reduced_prior("model.weights=official", f"model.checkpoint={tmp_path / 'nope.pt'}")
    with pytest.raises(WeightsNotFoundError) as error:
        prior.load("cpu")
    assert one_line(error.value) and "nope.pt" in str(error.value)


def test_fetch_weights_stages_where_the_prior_looks(tmp_path):
    """``fetch_weights.py --out DIR --models adm_*`` writes each file where ``model=adm_* paths.weights=DIR`` looks."""
    spec = importlib.util.spec_from_file_location("fetch_weights", ROOT / "scripts" / "fetch_weights.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["fetch_weights"] = module
    spec.loader.exec_module(module)
    for name, release in adm.RELEASES.items():
        (item,) = [i for i in module.plan(tmp_path, [name]) if i.source == release.url]
        item.target.parent.mkdir(parents=True, exist_ok=True)
        item.target.touch()
        prior = instantiate(compose_with(f"model={name}", f"paths.weights={tmp_path}").model)
        assert prior.checkpoint_path() == item.target


# --- learned variance ------------------------------------------------------------------------------------------------
def test_learned_range_log_variance_matches_guided_diffusions_construction(prior):
    """guided-diffusion's LEARNED_RANGE on a respaced grid, built as its code does (respaced betas from the kept ᾱ,
    posterior variance, log-variance clipped by repeating the second entry): ours at every step of a 50-step grid."""
    alphas_cumprod = prior.schedule.alphas_cumprod.numpy()
    kept = list(range(0, 1000, 20))
    betas, last = [], 1.0
    for t in kept:
        betas.append(1.0 - alphas_cumprod[t] / last)
        last = alphas_cumprod[t]
    betas = np.array(betas)
    ac = np.cumprod(1.0 - betas)
    ac_prev = np.append(1.0, ac[:-1])
    posterior_variance = betas * (1.0 - ac_prev) / (1.0 - ac)
    min_log = np.log(np.append(posterior_variance[1], posterior_variance[1:]))
    max_log = np.log(betas)
    plan = core.ddim_plan(prior.schedule, 50)
    alpha_bars = [s.alpha_bar for s in plan]
    v = torch.tensor([-1.0, -0.3, 0.0, 0.8, 1.0], dtype=torch.float64)
    for index in range(len(plan)):
        k = len(kept) - 1 - index  # guided-diffusion's index of this step (0 = least noisy)
        fraction = (v.numpy() + 1.0) / 2.0
        expected = fraction * max_log[k] + (1.0 - fraction) * min_log[k]
        got = adm.learned_range_log_variance(v, alpha_bars, index)
        assert np.allclose(got.numpy(), expected, rtol=1e-10, atol=1e-12), index


# --- configuration errors --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "override, words",
    [
        ("model.weights=pretrained", "model.weights"),
        ("model.class_label=10", "class_label"),
        ("model.model_channels=40", "GroupNorm"),
        ("model.num_head_channels=48", "num_head_channels"),
        ("model.dtype=float8", "dtype"),
    ],
)
def test_bad_config_values_fail_in_the_constructor(override, words):
    with pytest.raises(Exception) as error:
        reduced_prior(override)
    from treg_exp.common.errors import find_user_error

    user_error = find_user_error(error.value)
    assert user_error is not None and one_line(user_error) and words in str(user_error)
