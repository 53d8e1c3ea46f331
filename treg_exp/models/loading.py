"""Loading pretrained components without surprises: local first, online only when allowed, one-line errors.

The Hugging Face clients retry for 20 s to 4 min before failing when a file is missing and the network is down, and
``CLIPTokenizer.from_pretrained`` (transformers ≥ 5) silently returns a tokenizer holding only its 2 special tokens
when its files are absent. So every component is first looked up with ``local_files_only=True`` (no network, fails
in well under a second); only when that fails *and* downloads are allowed (``local_files_only: false`` in the
config and ``HF_HUB_OFFLINE`` unset) is it fetched; a tokenizer with too few tokens counts as missing.

Where weights may live, tried in this order (``cache_dir`` is ``paths.weights`` in the model configs):
1. ``model_id`` is a local directory (a diffusers folder, e.g. written by ``save_pretrained``);
2. ``<cache_dir>/<model_id>`` is a local directory (a folder staged by hand);
3. the Hugging Face cache ``<cache_dir>/huggingface/hub`` (what ``scripts/fetch_weights.py --out DIR`` writes) or
   ``<cache_dir>`` itself, by Hub id; ``cache_dir=None``: the default cache (``HF_HOME`` …);
4. the Hub, when allowed.
"""

from __future__ import annotations

import functools
import os
import socket
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

from treg_exp.common import checks
from treg_exp.common.errors import WeightsNotFoundError

T = TypeVar("T")

#: A tokenizer with at most this many tokens was built from no files (only its special tokens).
MIN_TOKENIZER_SIZE = 3

_TRUE = {"1", "true", "yes", "on"}


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set, read now rather than at import time."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").strip().lower() in _TRUE:
            return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:  # pragma: no cover - huggingface_hub ships with diffusers
        return False


def downloads_allowed(local_files_only: bool) -> bool:
    """Whether a loader may go online: the config allows it and the environment is not offline."""
    return not local_files_only and not hub_offline()


@functools.lru_cache(maxsize=4)
def hub_reachable(endpoint: str | None = None, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hub endpoint (``HF_ENDPOINT``, default huggingface.co) opens within
    ``timeout`` s. Asked once per process before any download, because the Hub client retries for 20 s to 4 min
    on a machine without network. With an HTTPS proxy configured the direct probe means nothing: assume yes."""
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    if endpoint is None:
        from huggingface_hub import constants

        endpoint = constants.ENDPOINT
    url = urlparse(endpoint)
    try:
        with socket.create_connection((url.hostname or "", url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


#: ``scripts/fetch_weights.py --models`` keys of the Hub models it knows (CLIP ViT-L/14 is always fetched).
FETCH_KEYS = {
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "sd15",
    "CompVis/stable-diffusion-v1-4": "sd14",
    "stabilityai/stable-diffusion-2-1-base": "sd21base",
    "stabilityai/stable-diffusion-2-1": "sd21",
    "stabilityai/stable-diffusion-3-medium-diffusers": "sd3_medium",
    "stabilityai/stable-diffusion-3.5-medium": "sd35_medium",
    "black-forest-labs/FLUX.1-dev": "flux_dev",
    "black-forest-labs/FLUX.1-schnell": "flux_schnell",
    "stabilityai/stable-diffusion-xl-base-1.0": "sdxl",
    "madebyollin/sdxl-vae-fp16-fix": "sdxl_vae_fp16",
    "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k": "sdxl",
    "latent-consistency/lcm-lora-sdv1-5": "lcm_lora_sd15",
    "latent-consistency/lcm-lora-sdxl": "lcm_lora_sdxl",
    "tianweiy/DMD2": "dmd2_sdxl_unet",
    "openai/clip-vit-large-patch14": None,
    # the captioners of prompt=caption (conf/prompt/captioner/)
    "google/paligemma2-3b-mix-224": "paligemma",
    "Salesforce/blip2-opt-2.7b": "blip2",
    "florence-community/Florence-2-large": "florence2",
    "llava-hf/llava-1.5-7b-hf": "llava",
}


#: Hub repositories that need a licence accepted on their page and a token (``HF_TOKEN``): id → licence page.
GATED = {
    "stabilityai/stable-diffusion-3-medium-diffusers": "https://huggingface.co/stabilityai/stable-diffusion-3-medium",
    "stabilityai/stable-diffusion-3.5-medium": "https://huggingface.co/stabilityai/stable-diffusion-3.5-medium",
    "black-forest-labs/FLUX.1-dev": "https://huggingface.co/black-forest-labs/FLUX.1-dev",
}


def gated_note(model_id: str) -> str:
    """One sentence for a gated repository: where its licence is accepted, and that ``HF_TOKEN`` must be set."""
    return f"{model_id} is gated: accept its licence at {GATED[model_id]} and set HF_TOKEN to a token of that account."


def staging_hint(model_id: str) -> str:
    """How to make ``model_id`` available offline (one sentence)."""
    if model_id in FETCH_KEYS:
        key = FETCH_KEYS[model_id]
        command = "python scripts/fetch_weights.py --out DIR" + (f" --models {key}" if key else "")
        stage = f"stage it with `{command}`"
    else:
        stage = f"stage it as a diffusers folder DIR/{model_id} (or in the Hugging Face cache DIR/huggingface/hub)"
    gated = f" ({gated_note(model_id)})" if model_id in GATED else ""
    return (
        f"{stage} and run with `paths.weights=DIR` "
        f"(or allow downloads: model.local_files_only=false and HF_HUB_OFFLINE unset){gated}"
    )


def hf_cache_dir(cache_dir: str | os.PathLike | None) -> str | None:
    """The Hugging Face hub cache inside ``cache_dir``: ``cache_dir/huggingface/hub`` when that exists (the layout
    ``scripts/fetch_weights.py --out DIR`` writes), else ``cache_dir`` itself; ``None`` keeps the default cache."""
    if cache_dir is None:
        return None
    nested = Path(cache_dir).expanduser() / "huggingface" / "hub"
    return str(nested) if nested.is_dir() else str(Path(cache_dir).expanduser())


def missing_weights(
    model_id: str, what: str, where: str, reason: BaseException | str | None = None
) -> WeightsNotFoundError:
    """A one-line :class:`WeightsNotFoundError` naming the model, the missing part, where we looked, how to stage it."""
    detail = ""
    if reason is not None:
        lines = str(reason).strip().splitlines()
        if lines:
            detail = f"; {type(reason).__name__ if isinstance(reason, BaseException) else 'note'}: {lines[0][:160]}"
    return WeightsNotFoundError(
        f"weights for model '{model_id}' not found ({what} missing in {where}{detail}); {staging_hint(model_id)}"
    )


def resolve_source(model_id: str, cache_dir: str | os.PathLike | None) -> tuple[str, bool]:
    """Where to load ``model_id`` from: ``(path_or_id, is_local_dir)``.

    A local directory (``model_id`` itself, or ``<cache_dir>/<model_id>``) wins; otherwise the Hub id, to be looked
    up in the HF cache ``cache_dir`` (and online when allowed).
    """
    if Path(model_id).expanduser().is_dir():
        return str(Path(model_id).expanduser()), True
    if model_id.startswith(("/", "./", "../", "~")):  # a path, never a Hub id (owner/name)
        checks.existing_path("model.model_id", model_id, "a Hub id (owner/name) or a local diffusers folder", True)
    if cache_dir is not None:
        staged = Path(cache_dir).expanduser() / model_id
        if staged.is_dir():
            return str(staged), True
    return model_id, False


def load_component(
    loader: Callable[..., T],
    model_id: str,
    what: str,
    *,
    cache_dir: str | os.PathLike | None,
    local_files_only: bool,
    check: Callable[[T], bool] | None = None,
    **kwargs: Any,
) -> T:
    """Call ``loader(source, **kwargs)`` (a ``from_pretrained``) local-first; raise a one-line error when missing.

    Args:
        loader: e.g. ``UNet2DConditionModel.from_pretrained``.
        model_id: Hub id or local directory (see :func:`resolve_source`).
        what: the part being loaded, for the error message (e.g. ``"unet"``).
        cache_dir: HF cache directory or staging folder; ``None`` for the default cache.
        local_files_only: the config's setting; downloads also need ``HF_HUB_OFFLINE`` unset.
        check: returns False for a result that was silently built without its files (the offline tokenizer).
        kwargs: passed through (``subfolder``, ``revision``, dtype …).
    """
    source, is_local = resolve_source(model_id, cache_dir)
    hub_cache = hf_cache_dir(cache_dir)
    extra = {} if is_local else {"cache_dir": hub_cache}
    try:
        with warnings.catch_warnings():
            # diffusers passes a deprecated argument to huggingface_hub on every config lookup: noise for users
            warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
            result = loader(source, local_files_only=True, **extra, **kwargs)
        if check is None or check(result):
            return result
        reason: BaseException | str = "loaded without its files"
    except (OSError, ValueError) as error:  # missing files surface as OSError / ValueError
        reason = error
    if is_local:
        raise missing_weights(model_id, what, f"local directory {source}", reason) from None
    where = f"the Hugging Face cache {hub_cache or '(default)'}"
    if not downloads_allowed(local_files_only):
        why = "local_files_only=true" if local_files_only else "HF_HUB_OFFLINE is set"
        # an OSError here just says "file not found" (transformers words it as a connection problem): leave it out
        shown = None if isinstance(reason, OSError) else reason
        raise missing_weights(model_id, what, f"{where}, downloads off: {why}", shown) from None
    if not hub_reachable():
        raise missing_weights(model_id, what, f"{where}, and the Hub is unreachable from this machine") from None
    try:
        result = loader(source, local_files_only=False, **extra, **kwargs)
    except Exception as error:  # network failures come in many types; the user needs one line either way
        raise missing_weights(model_id, what, f"{where} or on the Hub", error) from None
    if check is not None and not check(result):
        raise missing_weights(model_id, what, f"{where} or on the Hub", "downloaded files are incomplete")
    return result


def tokenizer_is_complete(tokenizer: Any) -> bool:
    """False for the tokenizer transformers builds from no files (only its special tokens)."""
    return len(tokenizer) > MIN_TOKENIZER_SIZE
