"""One forward pass of the decoding loop: per-backend KV-cache steppers, and the state hooks read.

`generate` feeds one token per step through the model's own KV cache, and the two backends keep
that cache differently (TransformerBridge passes Hugging Face's cache object back through
`forward`; HookedTransformer has its own), so each has a small stepper with one interface.
While a pass runs, `decode_state()` tells a hook where the pass sits in the padded batch, so
steering hooks can work in token positions that mean the same with and without the cache.

A stepper called with `last_only=True` unembeds only the last position (on the bridge, Hugging
Face's `logits_to_keep`, as `generate` does): the decoding loop needs no other logits, and over
a prompt the unembedding is ~20% of a small model's forward. Hooks on the residual stream still
see every position; a hook on the unembedding sees the last one.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tl_truth.models import backend_of, model_device


@dataclass
class DecodeState:
    """Where the current forward pass sits in the batch being decoded (for hooks)."""

    offset: int  # padded positions already in the KV cache before this forward pass
    pad_lengths: Int[Tensor, " batch"]  # left padding per row
    prompt_lengths: Int[Tensor, " batch"]  # unpadded prompt length per row
    step: int  # 0 = the prompt pass, k = k-th generated token being fed

    def absolute_positions(self, seq_len: int) -> Int[Tensor, "batch seq"]:
        """Unpadded positions of this pass's tokens; negative for padding."""
        pos = torch.arange(self.offset, self.offset + seq_len, device=self.pad_lengths.device)
        return pos[None, :] - self.pad_lengths[:, None]


_STATE: contextvars.ContextVar[DecodeState | None] = contextvars.ContextVar(
    "tl_truth_decode_state", default=None
)


def decode_state() -> DecodeState | None:
    """The decoding state of the forward pass running now, or None outside `generate`."""
    return _STATE.get()


# ---------------------------------------------------------------------------------------------
# One forward step per backend, both through the model's own cache


class _BridgeStepper:
    """TransformerBridge: pass HF's cache object back through `forward` with the full mask."""

    def __init__(self, model: Any):
        self.model, self.cache, self.mask = model, None, None

    def __call__(
        self, tokens: Tensor, mask: Tensor, last_only: bool = False
    ) -> Float[Tensor, "batch seq vocab"]:
        self.mask = mask if self.mask is None else torch.cat([self.mask, mask], dim=1)
        # last_only: unembed the last position only (HF's `logits_to_keep`, as `generate`
        # does); over a whole prompt the unembedding is ~20% of a small model's forward.
        logits, self.cache = self.model(
            tokens,
            attention_mask=self.mask,
            past_key_values=self.cache,
            use_cache=True,
            return_type="logits_and_cache",
            **({"logits_to_keep": 1} if last_only else {}),
        )
        return logits

    def expand(self, index: Int[Tensor, " rows"]) -> None:
        """Repeat cached rows (`index` into the current rows), e.g. one prefill per prompt."""
        self.cache.reorder_cache(index.to(self.mask.device))  # index_select on every layer
        self.mask = self.mask[index]


class _HookedStepper:
    """HookedTransformer: its own KV cache, which appends each step's mask itself."""

    def __init__(self, model: Any, batch: int):
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

        self.model = model
        self.cache = TransformerLensKeyValueCache.init_cache(model.cfg, model_device(model), batch)

    def __call__(
        self, tokens: Tensor, mask: Tensor, last_only: bool = False
    ) -> Float[Tensor, "batch seq vocab"]:
        return self.model(tokens, attention_mask=mask, past_kv_cache=self.cache)  # every position

    def expand(self, index: Int[Tensor, " rows"]) -> None:
        for entry in self.cache.entries:
            entry.past_keys = entry.past_keys[index.to(entry.past_keys.device)]
            entry.past_values = entry.past_values[index.to(entry.past_values.device)]
        mask = self.cache.previous_attention_mask
        self.cache.previous_attention_mask = mask[index.to(mask.device)]


class _NoCacheStepper:
    """Reference path: re-run the whole sequence every step (slow; for tests and debugging)."""

    def __init__(self, model: Any):
        self.model, self.tokens, self.mask = model, None, None

    def __call__(
        self, tokens: Tensor, mask: Tensor, last_only: bool = False
    ) -> Float[Tensor, "batch seq vocab"]:
        self.tokens = tokens if self.tokens is None else torch.cat([self.tokens, tokens], 1)
        self.mask = mask if self.mask is None else torch.cat([self.mask, mask], 1)
        return self.model(self.tokens, attention_mask=self.mask)[:, -tokens.shape[1] :]

    def expand(self, index: Int[Tensor, " rows"]) -> None:
        """Keep or repeat rows (`index` into the current rows) of the sequence so far."""
        self.tokens, self.mask = self.tokens[index], self.mask[index]


def _stepper(model: Any, batch: int, use_cache: bool):
    if not use_cache:
        return _NoCacheStepper(model)
    return _BridgeStepper(model) if backend_of(model) == "bridge" else _HookedStepper(model, batch)
