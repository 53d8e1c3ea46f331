"""Where weights live, and staging one cache folder (``paths.weights``) for runs without internet.

``scripts/fetch_weights.py --out DIR`` fills one folder with everything a run may need::

    DIR/huggingface/hub/models--…            HF_HOME: Stable Diffusion, CLIP ViT-L/14 (Hugging Face cache layout)
    DIR/torch/hub/checkpoints/vgg16-397923af.pth, alexnet-owt-7be5be79.pth        LPIPS backbones (torchvision)
    DIR/torch/hub/checkpoints/pt_inception-2015-12-05-6726825d.pth                pytorch-fid / clean-fid legacy
    DIR/torch/hub/checkpoints/ffhq_10m.pt, 256x256_diffusion_uncond.pt, 512x512_diffusion.pt   ADM (model=adm_*)
    DIR/cleanfid/inception-2015-12-05.pt                                           clean-fid ``clean`` (TorchScript)

and a run started with ``paths.weights=DIR`` calls :func:`stage_weights` first, which points ``HF_HOME`` and
``TORCH_HOME`` at it, turns the Hub offline (``HF_HUB_OFFLINE=1``) and copies clean-fid's Inception file to the
fixed path clean-fid reads (``/tmp/inception-2015-12-05.pt``; ``/tmp`` is node-local on clusters, so it is placed
again on every node a job lands on).

Metrics check their files in ``prepare`` and raise :class:`~treg_exp.common.errors.WeightsNotFoundError` naming the
missing file and :data:`STAGE_HINT` when it is absent and downloads are off.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from treg_exp.common.errors import UserError, WeightsNotFoundError
from treg_exp.models.loading import hub_offline

# File names fixed by the libraries that load them.
VGG16_FILE = "vgg16-397923af.pth"  # torchvision VGG16_Weights.IMAGENET1K_V1 (LPIPS-VGG backbone)
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"  # torchvision AlexNet_Weights.IMAGENET1K_V1 (LPIPS-Alex backbone)
PT_INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"  # pytorch-fid weights (clean-fid legacy_pytorch)
CLEANFID_INCEPTION_FILE = "inception-2015-12-05.pt"  # TorchScript Inception (clean-fid clean / legacy_tensorflow)
CLIP_MODEL = "openai/clip-vit-large-patch14"

# clean-fid builds its TorchScript Inception from "/tmp" (features.feature_extractor); tests point this elsewhere.
CLEANFID_DIR = Path("/tmp")

STAGE_HINT = "stage it with `python scripts/fetch_weights.py --out DIR` and run with paths.weights=DIR"


def downloads_allowed() -> bool:
    """False when the Hub is offline (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``, as :func:`stage_weights` sets)."""
    return not hub_offline()


def torch_checkpoint(name: str) -> Path:
    """Where ``torch.hub.load_state_dict_from_url`` keeps and looks for ``name``: ``TORCH_HOME/hub/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def cleanfid_inception_path() -> Path:
    """The TorchScript Inception file clean-fid's ``clean`` mode loads."""
    return CLEANFID_DIR / CLEANFID_INCEPTION_FILE


def missing(path: Path | str, what: str) -> WeightsNotFoundError:
    """The one-line error for a missing weight file."""
    return WeightsNotFoundError(f"{what} needs {path}, which is missing (downloads are off); {STAGE_HINT}")


def require_file(path: Path, what: str) -> bool:
    """True if ``path`` exists; False if it does not but may be downloaded; raises when downloads are off."""
    if path.is_file():
        return True
    if not downloads_allowed():
        raise missing(path, what)
    return False


def _copy_atomic(source: Path, target: Path) -> None:
    """Copy through a temporary file in the target folder and rename: jobs sharing a node may stage at once."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(handle)
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _patch_imported_hub_constants(hf_home: Path) -> None:
    """huggingface_hub reads its environment once at import: update the module if it is already imported."""
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is None:
        return
    hub_cache = str(hf_home / "hub")
    constants.HF_HOME = str(hf_home)
    constants.HF_HUB_CACHE = hub_cache
    constants.HUGGINGFACE_HUB_CACHE = hub_cache
    constants.HF_HUB_OFFLINE = True


def stage_weights(weights: str | Path | None, cleanfid_dir: Path | None = None) -> dict[str, str]:
    """Use the cache folder ``weights`` (``paths.weights``) for every loader; call it once at start-up.

    Sets ``HF_HOME=weights/huggingface``, ``HF_HUB_OFFLINE=1`` and ``TORCH_HOME=weights/torch`` in ``os.environ``
    (and in ``huggingface_hub.constants`` when that module is already imported), and copies
    ``weights/cleanfid/inception-2015-12-05.pt`` to clean-fid's fixed path (``cleanfid_dir``, default
    :data:`CLEANFID_DIR`) unless an identical file is there. ``weights=None`` changes nothing; a folder that does
    not exist is staged all the same (offline), so that each loader reports the file it misses.

    Returns the environment variables it set (and ``"cleanfid"``: the placed file, when one was placed).
    """
    if weights is None or str(weights) == "":
        return {}
    root = Path(weights).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise UserError(f"paths.weights={weights} is a file, not a folder; {STAGE_HINT}")
    # a folder that does not exist (yet) is still staged: each loader then names the file it misses
    env = {
        "HF_HOME": str(root / "huggingface"),
        "HF_HUB_OFFLINE": "1",
        "TORCH_HOME": str(root / "torch"),
    }
    os.environ.update(env)
    _patch_imported_hub_constants(root / "huggingface")
    staged = dict(env)
    source = root / "cleanfid" / CLEANFID_INCEPTION_FILE
    if source.is_file():
        target = (cleanfid_dir or CLEANFID_DIR) / CLEANFID_INCEPTION_FILE
        if not (target.is_file() and filecmp.cmp(source, target, shallow=False)):
            _copy_atomic(source, target)
        staged["cleanfid"] = str(target)
    return staged
