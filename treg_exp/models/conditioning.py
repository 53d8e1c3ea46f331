"""Text conditioning ``c`` as one tensor per prompt set, whatever the model needs besides the token embeddings.

Solvers treat ``c`` as one tensor ``[B, L, D]``: they stack ``[c_∅; c]`` for a CFG pair (``torch.cat``), slice and
repeat it per image, keep it in float32 and optimise it (TReg's adaptive negation on ``c_∅``, P2L's prompt tuning on
``c``). Models whose networks also read a *pooled* text embedding (SDXL: OpenCLIP-G's projected ``text_embeds``; SD3:
CLIP-L ⊕ CLIP-G ``text_embeds``; FLUX: CLIP-L's pooled output) pack it as one more token row: ``c = [B, L + 1, D]``,
the pooled ``[B, P]`` written at columns ``column … column + P`` of the last row and zeros elsewhere (``P + column ≤
D``). Batching, concatenation, repetition, the CFG pair and the null counterpart are then the tensor's own operations,
and a solver needs no model-specific code. Per-image quantities that depend on the image size and not on the prompt
(SDXL's size/crop ``time_ids``) are not part of ``c``: the prior derives them from the latent's shape in each pass.

What an optimiser of ``c`` changes, per model (the zero columns of the pooled row are never read by the network, so
the network's gradient there is zero; TReg's adaptive-negation loss does move them, harmlessly):

- SD 1.x / 2.x: the CLIP text hidden states ``[B, 77, D]`` (there is no pooled input).
- SDXL: the hidden states (CLIP-L ⊕ OpenCLIP-G penultimate layers, ``[B, 77, 768 + 1280]``) *and* the pooled
  OpenCLIP-G embedding, placed under the OpenCLIP-G columns (``column = 768``). Both: the pooled embedding enters the
  UNet's time embedding, i.e. every ResNet block, so a null or prompt embedding tuned without it keeps half of the
  text signal fixed; and the pooled embedding is the one tensor that lies in CLIP's joint image-text space, where
  TReg's adaptive negation compares text with the image features ``f̂``. With the SDXL prior's image features
  ``[f̂_L ; f̂_G]`` (ViT-L/14 and ViT-bigG/14, each normalised), the AN loss ``mean_k ⟨f̂, c_∅[k]⟩`` is the sum of each
  encoder's own official loss on its half of the hidden states, plus ``⟨f̂_G, pooled⟩`` on the pooled row.
- SD3 / FLUX: likewise the token embeddings and the pooled row (``column = 0``).
"""

from __future__ import annotations

import torch


def pack_pooled(tokens: torch.Tensor, pooled: torch.Tensor, column: int = 0) -> torch.Tensor:
    """``c = [tokens ; pooled row]``: ``[B, L, D]`` and ``[B, P]`` → ``[B, L + 1, D]`` with the pooled embedding at
    columns ``column … column + P`` of the last row and zeros elsewhere."""
    width = tokens.shape[-1]
    if column + pooled.shape[-1] > width:
        raise ValueError(f"pooled width {pooled.shape[-1]} at column {column} does not fit a row of width {width}")
    row = torch.nn.functional.pad(pooled.to(tokens.dtype), (column, width - column - pooled.shape[-1]))
    return torch.cat([tokens, row[:, None]], dim=1)


def split_pooled(cond: torch.Tensor, width: int, column: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of :func:`pack_pooled`: ``[B, L + 1, D]`` → (tokens ``[B, L, D]``, pooled ``[B, width]``)."""
    return cond[:, :-1], cond[:, -1, column : column + width]
