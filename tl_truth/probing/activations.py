"""Activations: capture the residual stream at named positions, stream it to an on-disk store.

Hooks gather only the needed positions inside the forward pass (no full activation cache is
ever held), examples are batched with right padding plus an attention mask, and every
`shard_size` examples are written as one safetensors shard. The store's JSON metadata records
the model identity (fingerprint, backend, processing mode), hooks, positions, dtype, example ids,
labels and splits, so a probe can refuse activations it was not trained on.

Resuming: shards are written to a temporary file and renamed, so a killed run never leaves a
corrupt shard; re-running the same capture keeps the finished shards and does the rest.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

from tl_truth.answers.positions import NAMED_POSITIONS, PositionFn, resolve_positions
from tl_truth.models import ModelInfo, hook_name, model_device, model_info

META_FILE = "meta.json"
STORE_VERSION = 1


def default_hooks(model: Any, kind: str = "resid_post") -> list[str]:
    return [hook_name(kind, layer) for layer in range(model.cfg.n_layers)]


def _layer_of(hook: str) -> int:
    parts = hook.split(".")
    return int(parts[1]) if len(parts) > 2 and parts[0] == "blocks" else -1


@torch.no_grad()
def capture_batch(
    model: Any,
    sequences: Sequence[Sequence[int]],
    positions: Int[Tensor, "batch n_positions"],
    hooks: Sequence[str],
) -> Float[Tensor, "batch n_hooks n_positions d_model"]:
    """One right-padded forward pass; each hook keeps only `positions` (-1 = absent -> zeros)."""
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
    out = torch.zeros((batch, len(hooks), positions.shape[1], model.cfg.d_model))

    def make_hook(j: int):
        def hook(act: Tensor, hook: Any) -> None:
            out[:, j] = act[rows, gather].float().cpu()

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
    out.masked_fill_((positions < 0)[:, None, :, None], 0.0)
    return out


@dataclass
class ActivationStore:
    """An on-disk activation store: `meta.json` + `shard_*.safetensors`.

    Each shard holds `acts` [n, n_hooks, n_positions, d_model], `valid` [n, n_positions] and
    `rows` [n] (indices into the example list of the metadata).
    """

    path: Path
    meta: dict

    @classmethod
    def open(cls, path: str | Path) -> ActivationStore:
        path = Path(path)
        meta_path = path / META_FILE
        if not meta_path.exists():
            raise FileNotFoundError(f"no activation store at {path} (missing {META_FILE})")
        return cls(path, json.loads(meta_path.read_text()))

    # -- description ------------------------------------------------------------------------
    @property
    def hooks(self) -> list[str]:
        return self.meta["hooks"]

    @property
    def positions(self) -> list[str]:
        return self.meta["positions"]

    @property
    def layers(self) -> list[int]:
        return [_layer_of(h) for h in self.hooks]

    @property
    def model(self) -> ModelInfo:
        return ModelInfo(**self.meta["model"])

    @property
    def examples(self) -> list[dict]:
        return self.meta["examples"]

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def labels(self) -> Int[Tensor, " n"]:
        return torch.tensor([int(e["correct"]) for e in self.examples])

    def split_mask(self, split: str) -> Bool[Tensor, " n"]:
        return torch.tensor([e["split"] == split for e in self.examples])

    def shard_files(self) -> list[Path]:
        return [self.path / s["file"] for s in self.meta["shards"]]

    def is_complete(self) -> bool:
        return all(f.exists() for f in self.shard_files())

    # -- reading ----------------------------------------------------------------------------
    def load(
        self, hooks: Sequence[str] | None = None, positions: Sequence[str] | None = None
    ) -> tuple[Float[Tensor, "n n_hooks n_positions d_model"], Bool[Tensor, "n n_positions"]]:
        """All examples' activations (float32) for the chosen hooks/positions, and validity."""
        if not self.is_complete():
            missing = [f.name for f in self.shard_files() if not f.exists()]
            raise RuntimeError(f"activation store {self.path} is incomplete: missing {missing}")
        h_idx = [self.hooks.index(h) for h in (hooks or self.hooks)]
        p_idx = [self.positions.index(p) for p in (positions or self.positions)]
        n, d = len(self), self.meta["d_model"]
        acts = torch.zeros((n, len(h_idx), len(p_idx), d))
        valid = torch.zeros((n, len(p_idx)), dtype=torch.bool)
        for f in self.shard_files():
            shard = load_file(str(f))
            rows = shard["rows"]
            acts[rows] = shard["acts"][:, h_idx][:, :, p_idx].float()
            valid[rows] = shard["valid"][:, p_idx]
        return acts, valid

    def cell(
        self, hook: str, position: str
    ) -> tuple[Float[Tensor, "m d_model"], Int[Tensor, " m"]]:
        """Activations of the examples that have this position, and their row indices."""
        acts, valid = self.load([hook], [position])
        rows = torch.nonzero(valid[:, 0]).squeeze(1)
        return acts[rows, 0, 0], rows

    def cell_by_key(
        self, hook: str, position: str, keys: Sequence[tuple[str, str]]
    ) -> tuple[Float[Tensor, "k d_model"], list[bool]]:
        """One row per (task, id) key: that question's greedy answer (sample 0) at this cell,
        zeros where it has no such answer or position (`available` says which)."""
        if hook not in self.hooks or position not in self.positions:
            raise ValueError(f"{hook} / {position} was not captured in {self.path}")
        x, rows = self.cell(hook, position)
        where = {}
        for i, r in enumerate(rows.tolist()):
            e = self.examples[r]
            if e.get("sample_index", 0) == 0:
                where[(e["task"], e["id"])] = i
        X = torch.zeros(len(keys), x.shape[1])
        available = [k in where for k in keys]
        for i, k in enumerate(keys):
            if k in where:
                X[i] = x[where[k]]
        return X, available


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
    """Capture activations for generation records into an on-disk store (resumable)."""
    hooks = list(hooks or default_hooks(model))
    names = [_positions_label(p) for p in positions]
    if not records:
        raise ValueError("no records to capture")
    info = model_info(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    examples = [
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
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        if old != meta:
            diff = [k for k in meta if old.get(k) != meta[k]]
            raise ValueError(
                f"{out} holds a different activation store (differs in: {', '.join(diff)}); "
                f"use another directory or delete it"
            )
    else:
        tmp = meta_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, meta_path)
    store = ActivationStore(out, meta)

    pos_all = resolve_positions(list(positions), records)
    todo = [s for s in meta["shards"] if not (out / s["file"]).exists()]
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
            "acts": acts.contiguous(),
            "valid": (pos_all[start:end] >= 0).contiguous(),
            "rows": torch.arange(start, end),
        }
        final = out / shard["file"]
        tmp = final.with_name(final.name + ".tmp")
        save_file(tensors, str(tmp), metadata={"model_fingerprint": info.fingerprint})
        os.replace(tmp, final)  # atomic: a killed run leaves no half-written shard
    bar.close()
    return store


def _seq_len(record: dict) -> int:
    return len(record["prompt_token_ids"]) + len(record["answer_token_ids"])
