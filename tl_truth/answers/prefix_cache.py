"""Run a shared token prefix once and reuse its KV cache: for generation, extraction and p(True).

Many prompts the library sends start alike: the model-based extraction prompt opens with the same
~400-token few-shot instruction for every answer, and the two p(True) prompts of an answer (True
as option A, then as option B) agree up to the first option. Running that prefix once and
copying its cache to the rows after it gives the same logits (up to floating-point ties) for a
fraction of the compute.

Rows after a shared prefix are left-padded *after* it (prefix, pads, suffix). Both backends
derive token positions from the attention mask, so the gap changes nothing, with one exception:
a local-attention window counts positions including the padding, so on a sliding-window model
(Gemma 2/3, Mistral) padding that could reach past the window is avoided (`sliding_window`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tl_truth.answers.decode_step import _STATE, DecodeState, _stepper
from tl_truth.models import model_device

MIN_SHARED_PREFIX = 32  # below this, copying caches costs more than it saves


def shared_prefix_len(prompts: Sequence[Sequence[int]]) -> int:
    """Tokens every prompt starts with, leaving at least one token of each prompt after it.

    >>> shared_prefix_len([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]])
    2
    """
    if not prompts:
        return 0
    first, n = prompts[0], min(len(p) for p in prompts) - 1
    for p in prompts[1:]:
        k = 0
        while k < n and p[k] == first[k]:
            k += 1
        n = k
    return max(n, 0)


def sliding_window(model: Any) -> int | None:
    """The local-attention window (tokens) if any layer has one, else None (either backend).

    >>> from tl_truth.testing import tiny_model
    >>> sliding_window(tiny_model("gemma3")), sliding_window(tiny_model("llama"))
    (16, None)
    """
    cfg = model.cfg
    if getattr(cfg, "use_local_attn", False) and getattr(cfg, "window_size", None):
        return int(cfg.window_size)
    hf_cfg = getattr(getattr(model, "original_model", None), "config", None)
    hf_cfg = getattr(hf_cfg, "text_config", None) or hf_cfg
    window = getattr(hf_cfg, "sliding_window", None)
    layer_types = getattr(hf_cfg, "layer_types", None) or []
    if window and (not layer_types or any("sliding" in t for t in layer_types)):
        return int(window)
    return None


def equal_length_groups(rows, prompt_ids, prefix_len: int, batch_size: int) -> list[list]:
    """Rows (sorted by length) cut into batches of at most `batch_size` equal-length suffixes."""
    groups: list[list] = []
    for r in rows:
        length = len(prompt_ids[r[0]]) - prefix_len
        last = groups[-1] if groups else None
        if last and len(last) < batch_size and len(prompt_ids[last[0][0]]) - prefix_len == length:
            last.append(r)
        else:
            groups.append([r])
    return groups


def prefill(model: Any, prefix: Sequence[int], device: Any):
    """A one-row stepper whose KV cache holds `prefix`."""
    stepper = _stepper(model, 1, True)
    state = DecodeState(0, torch.zeros(1, dtype=torch.long, device=device),
                        torch.tensor([len(prefix)], device=device), -1)  # fmt: skip
    token_ = _STATE.set(state)
    try:
        stepper(torch.tensor([list(prefix)], device=device), torch.ones((1, len(prefix)),
                dtype=torch.long, device=device), last_only=True)  # fmt: skip
    finally:
        _STATE.reset(token_)
    return stepper


def expanded_copy(stepper: Any, rows: int, device: Any):
    """A copy of a one-row stepper with its cache repeated `rows` times (the original kept)."""
    twin = copy.copy(stepper)
    twin.cache = copy.deepcopy(stepper.cache)
    twin.expand(torch.zeros(rows, dtype=torch.long, device=device))
    return twin


def left_pad(
    prompts: Sequence[Sequence[int]], pad_id: int
) -> tuple[Int[Tensor, "b w"], Int[Tensor, "b w"], Int[Tensor, " b"], Int[Tensor, " b"]]:
    """Token ids and mask of left-padded rows (CPU), each row's padding and length.

    >>> tokens, mask, pads, lengths = left_pad([[5, 6], [7], []], pad_id=0)
    >>> tokens.tolist(), mask.tolist(), pads.tolist()
    ([[5, 6], [0, 7], [0, 0]], [[1, 1], [0, 1], [0, 0]], [0, 1, 2])
    """
    lengths = torch.tensor([len(p) for p in prompts])
    width = int(lengths.max())
    pads = width - lengths
    tokens = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, p in enumerate(prompts):
        tokens[r, pads[r] :] = torch.tensor(list(p), dtype=torch.long)
        mask[r, pads[r] :] = 1
    return tokens, mask, pads, lengths


def _left_padded(seqs: Sequence[Sequence[int]], pad_id: int, device: Any):
    tokens, mask, _, _ = left_pad(seqs, pad_id)
    return tokens.to(device), mask.to(device)


@torch.no_grad()
def plain_last_logits(
    model: Any, prompts: Sequence[Sequence[int]], pad_id: int
) -> Float[Tensor, "batch vocab"]:
    """Next-token logits after each prompt from one left-padded masked forward (CPU, float32).

    >>> from tl_truth.testing import tiny_model
    >>> plain_last_logits(tiny_model("llama"), [[1, 5, 9], [1, 7]], pad_id=0).shape[0]
    2
    """
    tokens, mask = _left_padded(prompts, pad_id, model_device(model))
    return model(tokens, attention_mask=mask)[:, -1].float().cpu()


@torch.no_grad()
def branched_last_logits(
    model: Any, groups: Sequence[Sequence[Sequence[int]]], pad_id: int
) -> list[Float[Tensor, "branches vocab"]]:
    """Next-token logits after each prompt, each shared prefix run once.

    Three passes: the prefix every prompt shares (one row), each group's own stem after it
    (one row per group), then each prompt's rest (one row per prompt), each pass reading
    copies of the cache before it. Equal to `plain_last_logits` on every prompt up to
    floating-point ties; falls back to it where padding could reach a local-attention window.

    Args:
        model: a HookedTransformer or TransformerBridge.
        groups: prompts (token ids) grouped by the stem they share, e.g. an answer's two p(True)
            prompts; every group non-empty and every prompt at least one token.
        pad_id: the padding token id.

    Returns:
        Per group, [n_prompts_in_group, d_vocab] float32 logits on the CPU.

    >>> from tl_truth.testing import tiny_model
    >>> model = tiny_model("llama")
    >>> groups = [[[1, 5, 9, 2], [1, 5, 9, 3, 4]], [[1, 5, 7, 2], [1, 5, 7, 3]]]
    >>> out = branched_last_logits(model, groups, pad_id=0)
    >>> ref = plain_last_logits(model, [p for g in groups for p in g], pad_id=0)
    >>> bool(torch.allclose(torch.cat(out), ref, atol=1e-4))
    True
    """
    if not groups or any(not g for g in groups) or any(not p for g in groups for p in g):
        raise ValueError("branched_last_logits needs non-empty groups of non-empty prompts")
    flat = [list(p) for g in groups for p in g]
    sizes = [len(g) for g in groups]
    head = shared_prefix_len(flat)
    stems = [head + shared_prefix_len([list(p)[head:] for p in g]) for g in groups]
    stem_rest = [list(g[0])[head:s] for g, s in zip(groups, stems, strict=True)]
    rests = [list(p)[s:] for g, s in zip(groups, stems, strict=True) for p in g]
    width = head + max(map(len, stem_rest)) + max(map(len, rests))
    window = sliding_window(model)
    if (window is not None and width > window) or (head == 0 and not all(stem_rest)):
        # padding could leave the window, or a group would have no token to attend to yet
        return list(torch.split(plain_last_logits(model, flat, pad_id), sizes))
    device = model_device(model)
    if head:
        stepper = expanded_copy(prefill(model, flat[0][:head], device), len(groups), device)
    else:
        stepper = _stepper(model, len(groups), True)
    if any(stem_rest):
        stepper(*_left_padded(stem_rest, pad_id, device), last_only=True)
    index = torch.repeat_interleave(torch.arange(len(groups)), torch.tensor(sizes))
    stepper.expand(index.to(device))
    logits = stepper(*_left_padded(rests, pad_id, device), last_only=True)[:, -1].float().cpu()
    return list(torch.split(logits, sizes))
