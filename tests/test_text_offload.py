"""``model.offload_text_encoders``: the text encoders stay on the CPU and encode there; the denoiser and the VAE go to
the device. No GPU here, so the device is ``meta`` (tensors without storage): a token id or an encoder sent to the
denoiser's device instead of the CPU fails there, and a result left on the CPU is seen."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from tests.test_flow import compose

MODEL_CONFIGS = sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "model").glob("*.yaml"))
TINY_LATENT = ["tiny", "tiny_v", "tiny_sdxl", "tiny_sd3", "tiny_flux"]
PROMPTS = ["a cup of coffee", "a red bicycle", "a cup of coffee"]


def _prior(name: str, offload: bool):
    return instantiate(compose([f"model={name}", f"model.offload_text_encoders={str(offload).lower()}"]).model)


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_every_prior_with_text_encoders_takes_the_option(name: str) -> None:
    """Catches a latent prior whose YAML or constructor lacks the key (Hydra refuses an unknown key; a constructor
    that drops it leaves the attribute False); priors without text encoders (ADM, Gaussian) need not have it."""
    prior = instantiate(compose([f"model={name}"]).model)
    if not prior.text_encoder_names:
        assert "offload_text_encoders" not in compose([f"model={name}"]).model
        return
    assert prior.offload_text_encoders is False
    assert _prior(name, True).offload_text_encoders is True


@pytest.mark.parametrize("name", TINY_LATENT)
def test_offloaded_encoders_stay_on_the_cpu_and_conditioning_is_unchanged(name: str) -> None:
    """Catches encoders moved to the device by ``load``, token ids sent to the denoiser's device, conditioning left on
    the CPU, a :attr:`device` that reports an encoder's device, and any change of the conditioning's values (the
    offloaded prior's rows must equal the plain prior's exactly: the same weights run on the same CPU)."""
    plain = _prior(name, False).load("cpu")
    reference = plain.embed_text(PROMPTS)
    offloaded = _prior(name, True).load("cpu")
    assert torch.equal(offloaded.embed_text(PROMPTS), reference)

    offloaded = _prior(name, True).load("meta")
    assert offloaded.device == torch.device("meta")
    encoders = [getattr(offloaded, n) for n in offloaded.text_encoder_names if getattr(offloaded, n) is not None]
    assert encoders, "the prior has no text encoder to offload"
    others = [m for n, m in offloaded.named_children() if n not in offloaded.text_encoder_names]
    assert all(p.device.type == "cpu" for e in encoders for p in e.parameters())
    assert all(p.device.type == "meta" for m in others for p in m.parameters())
    cond = offloaded.embed_text(PROMPTS)
    assert cond.device == torch.device("meta") and cond.shape == reference.shape
    assert offloaded.counter["text_rows"] == 2  # each distinct prompt encoded once: the cache still works
    offloaded.to("meta")  # a later move keeps them on the CPU too
    assert all(p.device.type == "cpu" for e in encoders for p in e.parameters())
