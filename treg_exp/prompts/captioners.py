"""Captioning models (``conf/prompt/captioner/``): an image batch in, one caption per image out.

:class:`HubCaptioner` wraps any image-to-text model of transformers (``AutoProcessor`` +
``AutoModelForImageTextToText``: PaliGemma, BLIP-2, Florence-2, LLaVA-1.5), each with its own task prompt
(PaliGemma's ``"caption en"``, Florence-2's ``"<CAPTION>"``, LLaVA's chat turn) and greedy decoding by default.
Weights load local-first (``paths.weights``, the Hugging Face cache) through :mod:`treg_exp.models.loading`, so a
missing model is one line naming how to stage it (``scripts/fetch_weights.py --models <captioner>``).

:class:`TinyCaptioner` is a real captioning architecture (a ViT encoder and a GPT-2 decoder with cross-attention,
transformers' ``VisionEncoderDecoderModel``) at toy width with random weights drawn from a seed and a byte-level
tokenizer written by code: offline, in about a second, for tests of the whole captioning path.

Every generate call is counted in :attr:`Captioner.counter` as ``captioner_calls`` / ``captioner_rows`` (as the
priors count their network passes), so a test can tell that a cached run captioned nothing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
import torch.nn.functional as F

from treg_exp.common import checks
from treg_exp.common.devices import parse_dtype
from treg_exp.common.errors import WeightsNotFoundError
from treg_exp.data.images import to_pil
from treg_exp.models import loading
from treg_exp.models.base import NetworkCounter


class Captioner(ABC):
    """One captioning model.

    Args:
        name: what ``prompts.csv`` and the tables call it (``paligemma``).
        revision: the weights' revision (a Hub commit or tag), recorded with every caption and part of the cache key.
        max_new_tokens: the most tokens one caption may have.
        num_beams: 1 is greedy decoding (deterministic); more is beam search.
        batch_size: images per generate call.
    """

    def __init__(self, name: str, revision: str, max_new_tokens: int, num_beams: int, batch_size: int) -> None:
        self.name = checks.text("prompt.captioner.name", name)
        self.revision = checks.text("prompt.captioner.revision", revision)
        self.max_new_tokens = checks.integer("prompt.captioner.max_new_tokens", max_new_tokens, minimum=1)
        self.num_beams = checks.integer("prompt.captioner.num_beams", num_beams, minimum=1)
        self.batch_size = checks.integer("prompt.captioner.batch_size", batch_size, minimum=1)
        self.counter = NetworkCounter()
        self.device = torch.device("cpu")
        self.model: Any = None

    def identity(self) -> dict[str, Any]:
        """What decides a caption besides the input: part of the cache key."""
        return {
            "name": self.name,
            "revision": self.revision,
            "max_new_tokens": self.max_new_tokens,
            "num_beams": self.num_beams,
        }

    def check(self) -> None:
        """Raise a one-line ``WeightsNotFoundError`` when the weights are not there, loading as little as possible
        (the runner calls it before any image is solved; a run whose captions are all cached loads no model)."""
        return None

    @abstractmethod
    def load(self, device: torch.device) -> None:
        """Load the weights onto ``device`` (idempotent); missing weights raise a one-line ``WeightsNotFoundError``."""

    def release(self) -> None:
        """Drop the model (its memory is the solver's once the captions are written)."""
        self.model = None

    @abstractmethod
    def _generate(self, images: torch.Tensor) -> list[str]:
        """Captions of ``images`` ``[B, 3, H, W]`` in [−1, 1] (one generate call)."""

    @torch.no_grad()
    def caption(self, images: torch.Tensor) -> list[str]:
        """Captions of ``images`` ``[N, 3, H, W]`` in [−1, 1], ``batch_size`` at a time, each stripped."""
        captions = []
        for start in range(0, images.shape[0], self.batch_size):
            chunk = images[start : start + self.batch_size]
            self.counter.add("captioner", chunk.shape[0])
            captions += [text.strip() for text in self._generate(chunk)]
        return captions


class HubCaptioner(Captioner):
    """An image-to-text model of transformers, loaded with ``AutoProcessor`` / ``AutoModelForImageTextToText``.

    Args:
        model_id: Hub id or local folder (``google/paligemma2-3b-mix-224``).
        task_prompt: the text the model is prompted with (``"caption en"``; ``""`` for none); ``{image}`` is
            replaced by the processor's image token where the model wants it written out (LLaVA's chat turn).
        dtype: the weights' dtype (``bfloat16`` | ``float16`` | ``float32``).
        local_files_only: never download (``paths.weights`` / the Hugging Face cache only).
        cache_dir: the staging folder (``paths.weights``) or ``None`` for the default cache.
        name, revision, max_new_tokens, num_beams, batch_size: as :class:`Captioner`.
    """

    def __init__(
        self,
        name: str,
        model_id: str,
        task_prompt: str = "",
        revision: str = "main",
        max_new_tokens: int = 30,
        num_beams: int = 1,
        batch_size: int = 8,
        dtype: str = "bfloat16",
        local_files_only: bool = True,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__(name, revision, max_new_tokens, num_beams, batch_size)
        self.model_id = checks.text("prompt.captioner.model_id", model_id)
        self.task_prompt = "" if task_prompt is None else str(task_prompt)
        self.dtype = parse_dtype(dtype)
        self.local_files_only = checks.boolean("prompt.captioner.local_files_only", local_files_only)
        self.cache_dir = cache_dir
        self.processor: Any = None

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "model_id": self.model_id, "task_prompt": self.task_prompt}

    def _options(self) -> dict[str, Any]:
        return {"cache_dir": self.cache_dir, "local_files_only": self.local_files_only, "revision": self.revision}

    def check(self) -> None:
        """The processor's files and the model's config: seconds, and a missing model is one line."""
        from transformers import AutoConfig, AutoProcessor

        options = self._options()
        try:
            self.processor = loading.load_component(
                AutoProcessor.from_pretrained, self.model_id, "processor", **options
            )
            loading.load_component(AutoConfig.from_pretrained, self.model_id, "config", **options)
        except WeightsNotFoundError as error:  # the loader's hint names the prior's key; this one is the captioner's
            message = str(error).replace("model.local_files_only", "prompt.captioner.local_files_only")
            raise WeightsNotFoundError(message) from None

    def load(self, device: torch.device) -> None:
        if self.model is not None:
            return
        from transformers import AutoModelForImageTextToText

        self.check()
        options = self._options()
        self.model = loading.load_component(
            AutoModelForImageTextToText.from_pretrained, self.model_id, "model", dtype=self.dtype, **options
        )
        self.model.to(device).eval()
        self.device = device

    def _generate(self, images: torch.Tensor) -> list[str]:
        pil = [to_pil(image) for image in images]
        image_token = str(getattr(self.processor, "image_token", "") or "")
        text = self.task_prompt.replace("{image}", image_token)
        inputs = self.processor(images=pil, text=[text] * len(pil) if text else None, return_tensors="pt")
        inputs = {k: v.to(self.device, self.dtype if v.is_floating_point() else v.dtype) for k, v in inputs.items()}
        out = self.model.generate(
            **inputs, max_new_tokens=self.max_new_tokens, num_beams=self.num_beams, do_sample=False
        )
        prompt_ids = inputs.get("input_ids")
        # decoder-only models (PaliGemma, LLaVA, BLIP-2's OPT) return the prompt before the caption: cut it off
        if (
            prompt_ids is not None
            and out.shape[1] > prompt_ids.shape[1]
            and torch.equal(out[:, : prompt_ids.shape[1]], prompt_ids)
        ):
            out = out[:, prompt_ids.shape[1] :]
        return self.processor.batch_decode(out, skip_special_tokens=True)


#: Shapes of the tiny captioner: ViT encoder at 32 px, GPT-2 decoder with cross-attention, width 32.
TINY_WIDTH, TINY_IMAGE_SIZE = 32, 32
#: the weights' standard deviation: at transformers' default 0.02 the random decoder writes one letter over and over
#: whatever the image; at 0.3 different images get different captions (what the cache and determinism tests need)
TINY_INIT_STD = 0.3


#: the tiny captioner's words are lower-case letters and spaces (GPT-2's byte-level form of a space is ``Ġ``), so its
#: random captions are plain text a CLIP tokenizer and a CSV file take as they are
TINY_SYMBOLS = [*"abcdefghijklmnopqrstuvwxyz", "Ġ"]


def tiny_tokenizer() -> Any:
    """A byte-level GPT-2 tokenizer built from no files: letters, space, ``<|endoftext|>`` and ``<pad>``."""
    from transformers import GPT2Tokenizer

    vocab = {symbol: i for i, symbol in enumerate(TINY_SYMBOLS)}
    vocab["<|endoftext|>"] = len(vocab)
    vocab["<pad>"] = len(vocab)
    return GPT2Tokenizer(vocab=vocab, merges=[], pad_token="<pad>")


class TinyCaptioner(Captioner):
    """A random-weight ViT → GPT-2 captioner built in code (see the module docstring): for tests. Its captions are
    ``max_new_tokens`` letters and spaces.

    Args:
        seed: the weights' seed (its revision is ``random-<seed>``).
        dtype: ``float32`` | ``float64`` (float64 makes batch-independence exact in tests).
        name, max_new_tokens, num_beams, batch_size: as :class:`Captioner`.
    """

    def __init__(
        self,
        name: str = "tiny",
        seed: int = 0,
        max_new_tokens: int = 12,
        num_beams: int = 1,
        batch_size: int = 4,
        dtype: str = "float32",
    ) -> None:
        self.seed = checks.integer("prompt.captioner.seed", seed)
        super().__init__(name, f"random-{self.seed}", max_new_tokens, num_beams, batch_size)
        self.dtype = parse_dtype(dtype)
        self.tokenizer: Any = None

    def load(self, device: torch.device) -> None:
        if self.model is not None:
            return
        from transformers import GPT2Config, VisionEncoderDecoderConfig, VisionEncoderDecoderModel, ViTConfig

        self.tokenizer = tiny_tokenizer()
        end = self.tokenizer.eos_token_id
        encoder = ViTConfig(
            hidden_size=TINY_WIDTH,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
            image_size=TINY_IMAGE_SIZE,
            patch_size=8,
            initializer_range=TINY_INIT_STD,
        )
        decoder = GPT2Config(
            vocab_size=len(self.tokenizer),
            n_embd=TINY_WIDTH,
            n_layer=2,
            n_head=4,
            n_positions=64,
            bos_token_id=end,
            eos_token_id=end,
            add_cross_attention=True,
            is_decoder=True,
            initializer_range=TINY_INIT_STD,
        )
        config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
        config.decoder_start_token_id = end
        config.pad_token_id = self.tokenizer.pad_token_id
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.model = VisionEncoderDecoderModel(config=config)
        self.model.to(device=device, dtype=self.dtype).eval()
        self.device = device

    def _generate(self, images: torch.Tensor) -> list[str]:
        pixels = F.interpolate(images.to(self.device, self.dtype), size=TINY_IMAGE_SIZE, mode="bilinear")
        out = self.model.generate(
            pixel_values=pixels,
            max_new_tokens=self.max_new_tokens,
            num_beams=self.num_beams,
            do_sample=False,
            # random weights would often end at once: every caption has max_new_tokens tokens
            min_new_tokens=self.max_new_tokens,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        return self.tokenizer.batch_decode(out, skip_special_tokens=True)
