"""DDS, DiffPIR and RED through the decoder on the new ε / v latent priors (SDXL, SD 2.1-v)."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from tests.test_configs import compose_with
from tests.test_daps import generators, problem
from treg_exp.solvers.ddim import DDIMSolver


@pytest.mark.parametrize("model", ["tiny_sdxl", "tiny_v"])
@pytest.mark.parametrize(("name", "options"), [("dds", {"num_steps": 4}), ("diffpir", {"num_steps": 4}), ("red", {})])
def test_plug_and_play_solvers_fit_y_on_sdxl_and_v_priors(model: str, name: str, options: dict) -> None:
    """Each of DDS, DiffPIR and RED at its defaults (few steps) on the tiny SDXL (two encoders, pooled row, time ids)
    and SD 2.1-v builds: a finite image whose ``‖A x̂ − y‖`` is below that of the prior's own DDIM sample from the
    same seed. Catches a data step lost on the way through SDXL's conditioning or the v-to-ε conversion (their
    refusal on flow priors is tests/test_flow.py's)."""
    cfg = compose_with(f"model={model}", f"solver={name}", "task=gauss_deblur")
    prior = instantiate(cfg.model).load("cpu")
    solver = instantiate(cfg.solver, **options)
    operator, y = problem(64)
    out = solver.solve(y.float(), operator, prior, ["a photo"], generators(), (1, 3, 64, 64))
    sample = DDIMSolver(num_steps=4, guidance_scale=1.0).solve(None, None, prior, ["a photo"], generators(), out.shape)
    assert torch.isfinite(out).all()
    assert float((operator(out.double()) - y).norm()) < float((operator(sample.double()) - y).norm())
