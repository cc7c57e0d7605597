"""Activations: capture the residual stream at named positions, stream it to an on-disk store.

Hooks gather only the needed positions inside the forward pass (no full activation cache is
ever held), examples are batched with right padding plus an attention mask, and every
`shard_size` examples are written as one safetensors shard. The store's JSON metadata records
the model identity (fingerprint, backend, processing mode), hooks, positions, dtype, example ids,
labels and splits, so a probe can refuse activations it was not trained on.

Resuming: shards are written to a temporary file and renamed, so a killed run never leaves a
corrupt shard; re-running the same capture keeps the finished shards and does the rest.

The store itself (reading it back) is `tl_truth.probing.activation_store.ActivationStore`,
re-exported here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from safetensors.torch import save_file
from torch import Tensor
from tqdm.auto import tqdm

from tl_truth.answers.positions import NAMED_POSITIONS, PositionFn, resolve_positions
from tl_truth.checkpoint import maybe_die
from tl_truth.models import hook_name, model_device, model_info
from tl_truth.parallel import current_ranks
from tl_truth.probing.activation_store import META_FILE, STORE_VERSION, ActivationStore, _layer_of
from tl_truth.result_io import read_json_file

__all__ = [
    "META_FILE",
    "STORE_VERSION",
    "ActivationStore",
    "capture",
    "capture_at",
    "capture_batch",
    "default_hooks",
]


def default_hooks(model: Any, kind: str = "resid_post") -> list[str]:
    """One hook per layer: `blocks.{l}.hook_{kind}` for every block of the model.

    Args:
        model: a TransformerLens model (only `model.cfg.n_layers` is read).
        kind: a hook kind of `tl_truth.models.HOOK_KINDS`.

    Returns:
        The hook names, layer 0 first.

    >>> from tl_truth.testing import tiny_model
    >>> default_hooks(tiny_model("llama"))
    ['blocks.0.hook_resid_post', 'blocks.1.hook_resid_post']
    """
    return [hook_name(kind, layer) for layer in range(model.cfg.n_layers)]


@torch.no_grad()
def capture_batch(
    model: Any,
    sequences: Sequence[Sequence[int]],
    positions: Int[Tensor, "batch n_positions"],
    hooks: Sequence[str],
) -> Float[Tensor, "batch n_hooks n_positions width"]:
    """One right-padded forward pass; each hook keeps only `positions` (-1 = absent -> zeros).

    The forward stops after the deepest requested block, and no activation cache is held.
    A hook whose activation has more than one feature axis (`attn.hook_z`: [batch, seq,
    n_heads, d_head]) is flattened to one (`n_heads * d_head`, head-major).

    Args:
        model: a TransformerLens model.
        sequences: token ids of each example (prompt + answer), of any lengths.
        positions: [batch, n_positions] full-sequence indices (`resolve_positions`), -1 where
            an example lacks the position.
        hooks: hook point names (all of the same width).

    Returns:
        [batch, n_hooks, n_positions, width] float32 activations on the CPU (width is
        d_model for the residual stream).

    Raises:
        ValueError: the hooks' activations have different widths.

    >>> import torch
    >>> from tl_truth.testing import tiny_model
    >>> acts = capture_batch(tiny_model("llama"), [[1, 5, 9], [1, 7]],
    ...                      torch.tensor([[2, 0], [1, -1]]), ["blocks.0.hook_resid_post"])
    >>> acts.shape, bool(acts[1, 0, 1].eq(0).all())
    (torch.Size([2, 1, 2, 32]), True)
    """
    batch = len(sequences)
    width = max(len(s) for s in sequences)
    device = model_device(model)
    pad = model.tokenizer.pad_token_id or 0
    tokens = torch.full((batch, width), pad, dtype=torch.long)
    mask = torch.zeros((batch, width), dtype=torch.long)
    for i, s in enumerate(sequences):
        tokens[i, : len(s)] = torch.tensor(list(s))
        mask[i, : len(s)] = 1
    gather = positions.clamp(min=0).to(device)
    rows = torch.arange(batch, device=device)[:, None]
    parts: list[Tensor | None] = [None] * len(hooks)

    def make_hook(j: int):
        def hook(act: Tensor, hook: Any) -> None:
            # layers of a model split across devices live on different devices
            got = act[rows.to(act.device), gather.to(act.device)].float().cpu()
            parts[j] = got.reshape(batch, positions.shape[1], -1)

        return hook

    fwd_hooks = [(h, make_hook(j)) for j, h in enumerate(hooks)]
    # Stop after the deepest requested block: later layers cannot change these activations.
    deepest = max(_layer_of(h) for h in hooks)
    kwargs: dict[str, Any] = {"attention_mask": mask.to(device)}
    before_blocks = {"hook_embed", "hook_pos_embed"}  # fire before block 0: stopping is safe
    if 0 <= deepest < model.cfg.n_layers - 1 and all(
        _layer_of(h) >= 0 or h in before_blocks for h in hooks
    ):
        kwargs["stop_at_layer"] = deepest + 1
    with model.hooks(fwd_hooks=fwd_hooks):
        model(tokens.to(device), **kwargs)
    widths = {p.shape[-1] for p in parts if p is not None}
    if len(widths) > 1:
        raise ValueError(f"hooks {list(hooks)} have different widths {sorted(widths)}")
    width = widths.pop() if widths else model.cfg.d_model
    empty = torch.zeros((batch, positions.shape[1], width))  # a hook that never fired
    out = torch.stack([empty if p is None else p for p in parts], 1)
    out.masked_fill_((positions < 0)[:, None, :, None], 0.0)
    return out


def capture_at(
    model: Any,
    records: Sequence[dict],
    hooks: Sequence[str],
    position: str | PositionFn,
    batch_size: int = 16,
    progress: bool = False,
) -> tuple[Float[Tensor, "n n_hooks width"], Bool[Tensor, " n"]]:
    """Activations of `records` at one named position, in memory (no store): what a
    direction is fitted on when the records are not in a run's store (samples, `hook_z`).

    Args:
        model: a TransformerLens model.
        records: generation records (prompt_token_ids, answer_token_ids, and
            exact_answer_token_span for the exact-answer positions).
        hooks: hook names (of one width; `attn.hook_z` is flattened head-major).
        position: a named position (`NAMED_POSITIONS`) or a callable `record -> index | None`.
        batch_size: examples per forward pass (sorted by length, so little padding).
        progress: show a progress bar.

    Returns:
        ([n, n_hooks, width] float32 activations, zeros where absent; [n] whether the record
        has the position).

    >>> from tl_truth.testing import tiny_model
    >>> recs = [{"prompt_token_ids": [1, 5, 9], "answer_token_ids": [20, 30],
    ...          "exact_answer_token_span": [3, 5]},
    ...         {"prompt_token_ids": [1, 7], "answer_token_ids": [], "exact_answer_token_span": None}]
    >>> acts, valid = capture_at(tiny_model("llama"), recs, ["blocks.1.attn.hook_z"], "exact_last")
    >>> tuple(acts.shape), valid.tolist()
    ((2, 1, 32), [True, False])
    """
    if not records:
        raise ValueError("no records to capture")
    pos = resolve_positions([position], records)
    order = sorted(range(len(records)), key=lambda i: _seq_len(records[i]))
    chunks: dict[int, Tensor] = {}
    bar = tqdm(total=len(records), desc="capture", disable=not progress, unit="ex")
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        seqs = [records[i]["prompt_token_ids"] + records[i]["answer_token_ids"] for i in idx]
        got = capture_batch(model, seqs, pos[idx], hooks)[:, :, 0]
        for i, row in zip(idx, got, strict=True):
            chunks[i] = row
        bar.update(len(idx))
    bar.close()
    return torch.stack([chunks[i] for i in range(len(records))]), pos[:, 0] >= 0


def _positions_label(p: str | PositionFn) -> str:
    return p if isinstance(p, str) else getattr(p, "__name__", repr(p))


def capture(
    model: Any,
    records: Sequence[dict],
    out_dir: str | Path,
    hooks: Sequence[str] | None = None,
    positions: Sequence[str | PositionFn] = NAMED_POSITIONS,
    batch_size: int = 16,
    shard_size: int = 128,
    dtype: torch.dtype = torch.float16,
    progress: bool = True,
) -> ActivationStore:
    """Capture activations for generation records into an on-disk store (resumable).

    Shards are written atomically; re-running the same capture into the same directory keeps the
    finished shards and does the rest. A directory holding a different store is refused.
    Inside `tl_truth.parallel.sharded`, each rank writes its round-robin share of the unfinished
    shards (the shards one process would write) and rank 0 the metadata; all ranks return
    when every shard is written.

    Args:
        model: a TransformerLens model (its `model_info` is saved with the store).
        records: generation records (`AnswerRun.records` or dicts) with id, task, split,
            correct, prompt_token_ids and answer_token_ids (and exact_answer_token_span for
            the exact-answer positions).
        out_dir: the store's directory (created).
        hooks: hook names (default `default_hooks(model)`: resid_post of every layer).
        positions: position names (`tl_truth.answers.positions.NAMED_POSITIONS`) or callables
            `record -> index | None`.
        batch_size: examples per forward pass.
        shard_size: examples per shard file.
        dtype: storage dtype (float16 by default; `load` returns float32).
        progress: show a progress bar.

    Returns:
        The `ActivationStore` (see its example).

    Raises:
        ValueError: no records, or `out_dir` holds a different store.

    >>> import tempfile
    >>> from tl_truth.testing import tiny_model
    >>> records = [{"id": "q1", "task": "demo", "split": "train", "correct": True,
    ...             "prompt_token_ids": [1, 20, 30], "answer_token_ids": [50, 60]}]
    >>> with tempfile.TemporaryDirectory() as d:
    ...     store = capture(tiny_model("llama"), records, d, progress=False)
    ...     acts, valid = store.load()
    >>> acts.shape[:3], store.positions[:2], bool(valid[0, 1]), bool(valid[0, 3])
    (torch.Size([1, 2, 15]), ['last_prompt', 'first_answer'], True, False)
    """
    hooks = list(hooks or default_hooks(model))
    names = [_positions_label(p) for p in positions]
    if not records:
        raise ValueError("no records to capture")
    info = model_info(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    examples = store_examples(records)
    n_shards = (len(records) + shard_size - 1) // shard_size
    meta = {
        "version": STORE_VERSION,
        "model": info.to_dict(),
        "hooks": hooks,
        "positions": names,
        "dtype": str(dtype).removeprefix("torch."),
        "d_model": info.d_model,
        "shard_size": shard_size,
        "examples": examples,
        "shards": [
            {
                "file": f"shard_{i:05d}.safetensors",
                "start": i * shard_size,
                "end": min(len(records), (i + 1) * shard_size),
            }
            for i in range(n_shards)
        ],
    }
    meta_path = out / META_FILE
    ranks = current_ranks()
    error = None
    todo = [s for s in meta["shards"] if not (out / s["file"]).exists()]
    if meta_path.exists():
        old = read_json_file(meta_path)
        if old != meta:
            diff = [k for k in meta if old.get(k) != meta[k]]
            error = (
                f"{out} holds a different activation store (differs in: {', '.join(diff)}); "
                f"use another directory or delete it"
            )
    elif ranks.is_main:  # data parallel: one metadata file, written by rank 0
        tmp = meta_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, meta_path)
    ranks.agree(error)  # every rank stops if the directory holds another store
    store = ActivationStore(out, meta)

    pos_all = resolve_positions(list(positions), records)
    todo = ranks.share(todo)  # data parallel: this rank's shards, round-robin
    bar = tqdm(
        total=sum(s["end"] - s["start"] for s in todo),
        desc="capture",
        disable=not progress,
        unit="ex",
    )
    for shard in todo:
        start, end = shard["start"], shard["end"]
        # Sort by length inside the shard so each batch pads little.
        order = sorted(range(start, end), key=lambda i: _seq_len(records[i]))
        acts = torch.zeros((end - start, len(hooks), len(names), info.d_model), dtype=dtype)
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            seqs = [records[i]["prompt_token_ids"] + records[i]["answer_token_ids"] for i in idx]
            got = capture_batch(model, seqs, pos_all[idx], hooks)
            acts[torch.tensor(idx) - start] = got.to(dtype)
            bar.update(len(idx))
        tensors = {
            "acts": acts,
            "valid": pos_all[start:end] >= 0,
            "rows": torch.arange(start, end),
        }
        write_shard(out / shard["file"], tensors, {"model_fingerprint": info.fingerprint})
    bar.close()
    ranks.barrier()  # data parallel: every shard is written before anyone reads the store
    return store


def store_examples(records: Sequence[dict]) -> list[dict]:
    """The store metadata's entry per record: id, task, split, label, sample, exact span."""
    return [
        {
            "id": r["id"],
            "task": r["task"],
            "split": r["split"],
            "correct": bool(r["correct"]),
            "sample_index": r.get("sample_index", 0),
            # where the named positions came from: a store made for other spans is not reused
            "exact_span": r.get("exact_answer_token_span"),
        }
        for r in records
    ]


def write_shard(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> None:
    """Write one shard atomically (a killed run leaves no half-written shard), then let
    `TL_TRUTH_KILL_AT=capture:n` kill the process (tests)."""
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    maybe_die("capture")


def _seq_len(record: dict) -> int:
    return len(record["prompt_token_ids"]) + len(record["answer_token_ids"])
