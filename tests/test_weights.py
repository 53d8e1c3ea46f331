"""Staging a weights folder (paths.weights) and the stand-in weights the metric tests use.

The stand-ins are random-weight networks saved under the exact names and places the libraries look in, so the
offline code path (stage → TORCH_HOME / HF_HOME / clean-fid's /tmp file → load) runs without any download.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from treg_exp.common.errors import UserError, WeightsNotFoundError
from treg_exp.models import weights

ROOT = Path(__file__).resolve().parents[1]
CLIP_SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"
_CACHE: dict[str, Path] = {}


# --- stand-in weights ---------------------------------------------------------------------------------------
def _random_state(model: nn.Module, generator: torch.Generator, expand_above: int = 1_000_000) -> dict:
    """A state dict of ``model``'s shapes: He-normal convolutions, identity batch norms, small linear layers.

    Tensors larger than ``expand_above`` elements that the metrics never use (VGG's classifier) are stored as an
    expanded scalar, so the file stays small; ``load_state_dict`` copies them like any tensor.
    """
    state = {}
    for name, tensor in model.state_dict().items():
        shape = tuple(tensor.shape)
        if name.endswith("num_batches_tracked"):
            state[name] = torch.zeros((), dtype=torch.long)
        elif name.endswith("running_var") or (name.endswith(".weight") and len(shape) == 1):
            state[name] = torch.ones(shape)
        elif name.endswith("running_mean") or name.endswith(".bias"):
            state[name] = torch.zeros(shape)
        elif math.prod(shape) > expand_above and len(shape) == 2:
            state[name] = torch.zeros(1, 1).expand(*shape)
        else:
            fan_in = math.prod(shape[1:])
            state[name] = torch.randn(shape, generator=generator) * math.sqrt(2.0 / fan_in)
    return state


def _fid_inception_shapes() -> nn.Module:
    """pytorch-fid's Inception architecture (as clean-fid builds it) on the meta device: shapes only."""
    from cleanfid import inception_pytorch as ip

    with torch.device("meta"):
        model = ip._inception_v3(num_classes=1008, aux_logits=False, weights=None)
        model.Mixed_5b = ip.FIDInceptionA(192, pool_features=32)
        model.Mixed_5c = ip.FIDInceptionA(256, pool_features=64)
        model.Mixed_5d = ip.FIDInceptionA(288, pool_features=64)
        model.Mixed_6b = ip.FIDInceptionC(768, channels_7x7=128)
        model.Mixed_6c = ip.FIDInceptionC(768, channels_7x7=160)
        model.Mixed_6d = ip.FIDInceptionC(768, channels_7x7=160)
        model.Mixed_6e = ip.FIDInceptionC(768, channels_7x7=192)
        model.Mixed_7b = ip.FIDInceptionE_1(1280)
        model.Mixed_7c = ip.FIDInceptionE_2(2048)
    return model


class _TinyInceptionLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 5, stride=4)
        self.fc = nn.Linear(8 * 4 * 4, 2048)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.adaptive_avg_pool2d(F.relu(self.conv(x)), 4).flatten(1)
        return self.fc(h).view(-1, 2048, 1, 1)


class TinyTorchScriptInception(nn.Module):
    """What clean-fid's InceptionV3W needs of ``inception-2015-12-05.pt``: ``layers`` (normalised 299² → 2048)
    and ``forward(x, return_features)`` on [0, 255] images of any size."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = _TinyInceptionLayers()

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return self.layers((x - 128) / 128).view(-1, 2048)


def _write_tiny_clip(folder: Path) -> None:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from treg_exp.models.tiny import build_tokenizer

    tokenizer = build_tokenizer(folder)
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)


def make_standin_weights(root: Path) -> Path:
    """A ``paths.weights`` folder laid out as ``scripts/fetch_weights.py`` writes it, with random weights."""
    generator = torch.Generator().manual_seed(0)
    checkpoints = root / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    import torchvision

    with torch.device("meta"):
        vgg = torchvision.models.vgg16(weights=None)
    torch.save(_random_state(vgg, generator), checkpoints / weights.VGG16_FILE)
    torch.save(_random_state(_fid_inception_shapes(), generator), checkpoints / weights.PT_INCEPTION_FILE)
    (root / "cleanfid").mkdir()
    torch.manual_seed(0)
    torch.jit.script(TinyTorchScriptInception()).save(str(root / "cleanfid" / weights.CLEANFID_INCEPTION_FILE))
    repo = root / "huggingface" / "hub" / ("models--" + weights.CLIP_MODEL.replace("/", "--"))
    _write_tiny_clip(repo / "snapshots" / CLIP_SNAPSHOT)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(CLIP_SNAPSHOT)
    return root


def standin_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's stand-in weights folder (made once)."""
    if "root" not in _CACHE:
        _CACHE["root"] = make_standin_weights(tmp_path_factory.mktemp("weights"))
    return _CACHE["root"]


def stage_standins(tmp_path_factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Stage the stand-in weights for one test; the environment and clean-fid's folder are restored after it."""
    root = standin_weights(tmp_path_factory)
    isolate_staging(monkeypatch, tmp_path / "cleanfid_tmp")
    weights.stage_weights(root)
    return root


@pytest.fixture
def staged(tmp_path_factory, tmp_path, monkeypatch) -> Path:
    return stage_standins(tmp_path_factory, tmp_path, monkeypatch)


def isolate_staging(monkeypatch: pytest.MonkeyPatch, cleanfid_dir: Path) -> None:
    """Let stage_weights change the environment and hub constants for this test only; clean-fid's folder → tmp."""
    for key in ("HF_HOME", "HF_HUB_OFFLINE", "TORCH_HOME"):
        monkeypatch.setenv(key, os.environ.get(key, ""))
    import huggingface_hub.constants as constants

    for name in ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE"):
        monkeypatch.setattr(constants, name, getattr(constants, name))
    cleanfid_dir.mkdir(parents=True, exist_ok=True)
    monkeypatch.setattr(weights, "CLEANFID_DIR", cleanfid_dir)


# --- tests ----------------------------------------------------------------------------------------------------
def test_stage_weights_points_loaders_at_the_folder(staged, tmp_path):
    import huggingface_hub.constants as constants

    assert os.environ["TORCH_HOME"] == str(staged.resolve() / "torch")
    assert os.environ["HF_HOME"] == str(staged.resolve() / "huggingface")
    assert os.environ["HF_HUB_OFFLINE"] == "1" and not weights.downloads_allowed()
    # huggingface_hub was imported before staging: its cached constants follow too
    assert constants.HF_HUB_CACHE == str(staged.resolve() / "huggingface" / "hub") and constants.HF_HUB_OFFLINE
    # torch.hub (torchvision, pytorch-fid) now finds the staged checkpoints under their fixed names
    assert weights.torch_checkpoint(weights.VGG16_FILE).is_file()
    assert weights.torch_checkpoint(weights.PT_INCEPTION_FILE).is_file()
    # clean-fid's TorchScript file is copied byte for byte to clean-fid's fixed folder
    placed = weights.cleanfid_inception_path()
    assert placed.parent == tmp_path / "cleanfid_tmp"
    assert placed.read_bytes() == (staged / "cleanfid" / weights.CLEANFID_INCEPTION_FILE).read_bytes()
    from huggingface_hub import try_to_load_from_cache

    assert CLIP_SNAPSHOT in try_to_load_from_cache(weights.CLIP_MODEL, "config.json")


def test_stage_weights_replaces_a_stale_cleanfid_file_and_keeps_an_identical_one(staged, tmp_path):
    placed = weights.cleanfid_inception_path()
    placed.write_bytes(b"stale")
    weights.stage_weights(staged)
    assert placed.read_bytes() == (staged / "cleanfid" / weights.CLEANFID_INCEPTION_FILE).read_bytes()
    mtime = placed.stat().st_mtime_ns
    weights.stage_weights(staged)
    assert placed.stat().st_mtime_ns == mtime


def test_stage_weights_none_changes_nothing_a_file_is_one_line_and_a_missing_folder_goes_offline(tmp_path, monkeypatch):
    isolate_staging(monkeypatch, tmp_path / "c")
    before = dict(os.environ)
    assert weights.stage_weights(None) == {}
    assert dict(os.environ) == before
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        weights.stage_weights(tmp_path / "file")
    staged = weights.stage_weights(tmp_path / "absent")
    assert staged["HF_HUB_OFFLINE"] == "1" and "cleanfid" not in staged and not weights.downloads_allowed()
    with pytest.raises(WeightsNotFoundError, match=str(tmp_path / "absent")):
        weights.require_file(weights.torch_checkpoint(weights.VGG16_FILE), "LPIPS-vgg")


def test_require_file_raises_with_the_staging_command_when_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError) as info:
        weights.require_file(tmp_path / "x.pth", "LPIPS-vgg")
    message = str(info.value)
    assert "\n" not in message and "x.pth" in message and "scripts/fetch_weights.py" in message
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # read at import, under conftest's 1
    assert weights.require_file(tmp_path / "x.pth", "LPIPS-vgg") is False  # may be downloaded


def test_fetch_weights_plan_matches_the_staged_layout(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("fetch_weights", ROOT / "scripts" / "fetch_weights.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["fetch_weights"] = module
    spec.loader.exec_module(module)
    assert module.main(["--out", str(tmp_path), "--dry-run"]) == 0
    targets = {item.target for item in module.plan(tmp_path, ["sd15"])}
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    for name in (weights.VGG16_FILE, weights.ALEXNET_FILE, weights.PT_INCEPTION_FILE):
        assert checkpoints / name in targets
    assert tmp_path / "cleanfid" / weights.CLEANFID_INCEPTION_FILE in targets
    sources = {item.source for item in module.plan(tmp_path, ["sd15"])}
    assert weights.CLIP_MODEL in sources and module.HF_MODELS["sd15"] in sources
    assert not any(tmp_path.iterdir())  # a dry run downloads nothing
    assert "clip-vit-large-patch14" in capsys.readouterr().out


@pytest.mark.parametrize("key", ["sd35_medium", "sd3_medium", "flux_dev"])
def test_fetch_weights_gated_model_fails_in_one_line(tmp_path, capsys, monkeypatch, key: str):
    """A gated repository the account cannot read: fetch_weights.py exits 2 with one line on stderr naming the
    licence page and HF_TOKEN, and downloads nothing after it."""
    import huggingface_hub

    spec = importlib.util.spec_from_file_location("fetch_weights", ROOT / "scripts" / "fetch_weights.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["fetch_weights"] = module
    spec.loader.exec_module(module)
    calls: list[str] = []

    def refuse(repo_id, **_):
        calls.append(repo_id)
        raise OSError("401 Client Error: access to this gated repository is restricted")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)
    monkeypatch.setattr(module, "unreachable", lambda items: None)  # the Hub answers; the repository refuses
    assert module.main(["--out", str(tmp_path), "--models", key]) == 2
    error = capsys.readouterr().err.strip()
    repo = module.HF_MODELS[key]
    assert "\n" not in error and "HF_TOKEN" in error and module.loading.GATED[repo] in error
    assert calls == [repo]
