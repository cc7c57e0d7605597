"""Capture inside generation: the store's shards are written as the answers are generated.

`tl-truth run` used to generate every answer, then run each through the model a second time to
read activations at the named positions. `FusedCapture` reads them in the decode loop instead:
its `TokenRecorder` keeps, per batch, each row's activations at the last prompt token and at
every answer token; as soon as the batch is graded and its exact answers located, the named
positions are gathered and written as one shard (`fused_*.safetensors`), and the batch's
token activations are dropped. Memory is bounded by one batch, plus the answers whose exact
answer the model has still to extract (held up to `pending_mb`, gathered in `finish`).

The two-pass capture (`capture_batch`) still serves, explicitly and counted in the store's
`meta.json` ("capture"), every record the decode loop did not record: answers read back from a
checkpoint or generations.jsonl (a resumed run), records whose positions lie inside the prompt
before its last token, and pending answers beyond the memory budget (`two_pass_*` shards).
The values of the two paths agree to floating-point error (in float32, <= ~4e-6 relative to the
activation's norm on SmolLM2 and the tiny models, below float16's resolution: see
`tests/probing/test_fused_capture.py` and `tests/test_integration_smollm2.py`).

Resuming: every shard names, per row, a digest of the record it was gathered for (index,
token ids, exact span); `finish` keeps the rows whose digest still matches, captures the rest,
and only then writes `meta.json`. A killed run therefore loses at most the unwritten batches.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from safetensors import safe_open
from torch import Tensor
from tqdm.auto import tqdm

from tl_truth.answers.positions import NAMED_POSITIONS, PositionFn, resolve_positions
from tl_truth.answers.token_acts import TokenRecorder, fused_index
from tl_truth.checkpoint import digest
from tl_truth.models import model_info
from tl_truth.probing.activation_store import META_FILE, STORE_VERSION, ActivationStore
from tl_truth.probing.activations import capture_batch, store_examples, write_shard
from tl_truth.result_io import read_json_file, read_tensors

FUSED, TWO_PASS = "fused", "two_pass"
log = logging.getLogger(__name__)


def _row_key(index: int, record: Any) -> str:
    span = record.get("exact_answer_token_span")
    return digest(
        index,
        list(record["prompt_token_ids"]),
        list(record["answer_token_ids"]),
        list(span) if span else None,
    )


class FusedCapture:
    """Activations captured inside generation into an `ActivationStore` (see the module doc).

    Pass it to `answer_questions(capture=...)`, then call `finish(model, run.records)`.

    Args:
        model: the model that generates (its identity is saved with the store).
        out_dir: the store's directory (created).
        hooks: hook names to capture.
        positions: position names (`NAMED_POSITIONS`) or callables `record -> index | None`;
            a record with a position inside its prompt (before the last prompt token) is
            served by the two-pass capture.
        dtype: storage dtype (float16 by default, as `capture`).
        batch_size: examples per forward pass of the two-pass fallback.
        shard_size: the most examples per fallback shard.
        pending_mb: memory for answers awaiting the model's exact-answer extraction; those
            beyond it are captured by the two-pass fallback.

    >>> import tempfile
    >>> from tl_truth.answers import GenerationConfig, answer_questions
    >>> from tl_truth.data import load_questions
    >>> from tl_truth.testing import tiny_model
    >>> model = tiny_model("llama")
    >>> with tempfile.TemporaryDirectory() as d:
    ...     fused = FusedCapture(model, d, ["blocks.1.hook_resid_post"], ["last_prompt", "-1"])
    ...     run = answer_questions(model, load_questions("capitals", limit=3),
    ...                            GenerationConfig(max_new_tokens=4), extract_with_model=False,
    ...                            progress=False, capture=fused)
    ...     store = fused.finish(model, run.records, progress=False)
    ...     acts, valid = store.load()
    >>> acts.shape, store.meta["capture"]["path"], store.meta["capture"]["fused_rows"]
    (torch.Size([3, 1, 2, 32]), 'fused', 3)
    """

    def __init__(
        self,
        model: Any,
        out_dir: str | Path,
        hooks: Sequence[str],
        positions: Sequence[str | PositionFn] = NAMED_POSITIONS,
        dtype: torch.dtype = torch.float16,
        batch_size: int = 16,
        shard_size: int = 128,
        pending_mb: float = 1024,
    ):
        self.out = Path(out_dir)
        self.hooks, self.positions = list(hooks), list(positions)
        self.dtype, self.batch_size, self.shard_size = dtype, batch_size, shard_size
        self.info = model_info(model)
        self.recorder = TokenRecorder(self.hooks, dtype)
        self.names = [_positions_label(p) for p in self.positions]
        self.key = digest(STORE_VERSION, self.info.fingerprint, self.hooks, self.names, dtype)
        self.pending: dict[int, Tensor] = {}
        self.pending_bytes, self.pending_limit = 0, pending_mb * 2**20
        self.reasons: Counter = Counter()  # why rows went to the two-pass capture
        self.seconds = 0.0  # time spent gathering and writing (the capture's own cost)
        # A finished store already there: refused now if its settings differ (before any
        # generation); left untouched otherwise (`finish` reuses it if its records match).
        self.finished = False
        if (self.out / META_FILE).exists():
            old = read_json_file(self.out / META_FILE)
            self._check(old, self._base([]), skip=("examples",))
            self.finished = ActivationStore(self.out, old).is_complete()

    # -- during generation ------------------------------------------------------------------
    def add(
        self,
        indices: Sequence[int],
        records: Sequence[Any],
        acts: Sequence[Float[Tensor, "n_hooks tokens d_model"]] | None,
        final: Sequence[bool],
    ) -> None:
        """Gather and write one generated batch (`AnswerCapture` protocol).

        Args:
            indices: the records' indices in the run.
            records: their records (token ids and exact-answer spans so far).
            acts: their recorded activations (None: the batch came from a checkpoint).
            final: False where the exact answer awaits the model's extraction (kept pending).
        """
        if acts is None or self.finished:
            return
        t0 = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        rows, recs, ready = [], [], []
        for f, rec, a, done in zip(indices, records, acts, final, strict=True):
            if done:
                rows.append(f)
                recs.append(rec)
                ready.append(a)
            elif self.pending_bytes + a.numel() * a.element_size() <= self.pending_limit:
                self.pending[f] = a
                self.pending_bytes += a.numel() * a.element_size()
            else:
                self.reasons["over_pending_memory"] += 1
        if rows:
            self._write_fused(rows, recs, ready)
        self.seconds += time.perf_counter() - t0

    def _base(self, records: Sequence[Any]) -> dict:
        """meta.json without its shards."""
        return {
            "version": STORE_VERSION,
            "model": self.info.to_dict(),
            "hooks": self.hooks,
            "positions": self.names,
            "dtype": str(self.dtype).removeprefix("torch."),
            "d_model": self.info.d_model,
            "examples": store_examples(records),
        }

    def _check(self, old: dict, base: dict, skip: tuple[str, ...] = ()) -> None:
        diff = [k for k in base if k not in skip and old.get(k) != base[k]]
        if diff:
            raise ValueError(
                f"{self.out} holds a different activation store (differs in: "
                f"{', '.join(diff)}); use another directory or delete it"
            )

    def _write_fused(self, rows: list[int], recs: list, acts: list[Tensor]) -> None:
        pos = resolve_positions(self.positions, recs)
        idx = fused_index(pos, torch.tensor([len(r["prompt_token_ids"]) for r in recs]))
        ok = [i for i in range(len(rows)) if not bool((idx[i] == -2).any())]
        if len(ok) < len(rows):
            self.reasons["inside_prompt"] += len(rows) - len(ok)
        if not ok:
            return
        out = torch.stack([acts[i][:, idx[i].clamp(min=0)] for i in ok])  # [n, H, P, d]
        out.masked_fill_((idx[ok] < 0)[:, None, :, None], 0.0)
        self._write(FUSED, [rows[i] for i in ok], [recs[i] for i in ok], out, pos[ok] >= 0)

    def _write(self, kind: str, rows: list[int], recs: list, acts: Tensor, valid: Tensor) -> str:
        keys = [_row_key(f, r) for f, r in zip(rows, recs, strict=True)]
        name = f"{kind}_{digest(self.key, keys)}.safetensors"
        meta = {
            "model_fingerprint": self.info.fingerprint,
            "store_key": self.key,
            "row_keys": json.dumps(keys),
        }
        write_shard(self.out / name, {"acts": acts.to(self.dtype), "valid": valid,
                                      "rows": torch.tensor(rows)}, meta)  # fmt: skip
        return name

    # -- once every record is final ---------------------------------------------------------
    def finish(self, model: Any, records: Sequence[Any], progress: bool = True) -> ActivationStore:
        """Gather the pending answers, capture what the decode loop did not, write meta.json.

        Args:
            model: the model (for the two-pass fallback).
            records: every record of the run, final (`AnswerRun.records`), in store order.
            progress: show a progress bar for the fallback.

        Returns:
            The complete `ActivationStore`; its `meta["capture"]` says how many rows each path
            served and why rows needed the two-pass capture.

        Raises:
            ValueError: `out_dir` holds a finished store of other records or settings.
        """
        t0 = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        base = self._base(records)
        meta_path = self.out / META_FILE
        if meta_path.exists():
            old = read_json_file(meta_path)
            self._check(old, base)
            store = ActivationStore(self.out, old)
            if store.is_complete():
                self._clean({s["file"] for s in old["shards"]})
                return store
        # the answers that waited for the model's extraction: their records are final now
        pending = sorted(self.pending)
        for start in range(0, len(pending), self.shard_size):
            chunk = pending[start : start + self.shard_size]
            self._write_fused(chunk, [records[f] for f in chunk], [self.pending[f] for f in chunk])
        self.pending, self.pending_bytes = {}, 0
        shards, covered = self._collect(records)
        missing = [f for f in range(len(records)) if f not in covered]
        shards += self._two_pass(model, records, missing, progress)
        counts = Counter()
        for s in shards:
            counts[s["path"]] += s["n"]
        reasons = dict(self.reasons)
        unexplained = counts[TWO_PASS] - sum(reasons.values())
        if unexplained > 0:  # answers this process did not generate (a resumed run)
            reasons["not_recorded"] = unexplained
        if counts[TWO_PASS]:
            log.info(f"capture: {counts[TWO_PASS]} answers by a second forward pass ({reasons})")
        meta = {
            **base,
            "shards": shards,
            "capture": {
                "path": FUSED
                if not counts[TWO_PASS]
                else TWO_PASS
                if not counts[FUSED]
                else "mixed",
                "fused_rows": counts[FUSED],
                "two_pass_rows": counts[TWO_PASS],
                "two_pass_reasons": reasons,
            },
        }
        tmp = meta_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, meta_path)
        self._clean({s["file"] for s in shards})
        self.seconds += time.perf_counter() - t0
        return ActivationStore(self.out, meta)

    def _clean(self, keep: set[str]) -> None:
        """Delete the shards meta.json does not list (superseded parts, an older capture's
        shards) and torn temporary files."""
        for f in self.out.iterdir():
            if f.is_file() and f.name not in keep and f.suffix in (".safetensors", ".tmp"):
                f.unlink()

    def _collect(self, records: Sequence[Any]) -> tuple[list[dict], set[int]]:
        """The shards already written whose rows still match `records` (rewritten without the
        rows that do not), and the rows they cover."""
        want = [_row_key(f, r) for f, r in enumerate(records)]
        shards, covered = [], set()
        for path in sorted(self.out.glob("*.safetensors")):
            kind = next((k for k in (FUSED, TWO_PASS) if path.name.startswith(k + "_")), None)
            if kind is None:
                continue
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
                rows = f.get_tensor("rows").tolist()
            if meta.get("store_key") != self.key:
                continue
            keys = json.loads(meta["row_keys"])
            good = [
                i
                for i, (r, k) in enumerate(zip(rows, keys, strict=True))
                if r < len(want) and want[r] == k and r not in covered
            ]
            if not good:
                continue
            name = path.name
            if len(good) < len(rows):  # keep only the rows that still match
                t = read_tensors(path)
                name = self._write(
                    kind,
                    [rows[i] for i in good],
                    [records[rows[i]] for i in good],
                    t["acts"][good],
                    t["valid"][good],
                )
            covered.update(rows[i] for i in good)
            shards.append({"file": name, "n": len(good), "path": kind})
        return shards, covered

    def _two_pass(self, model: Any, records: Sequence[Any], rows: list[int], progress: bool):
        """The separate forward pass over prompt + answer for `rows`, in shards."""
        if not rows:
            return []
        pos_all = resolve_positions(self.positions, [records[f] for f in rows])
        order = sorted(range(len(rows)), key=lambda i: _seq_len(records[rows[i]]))
        shards = []
        bar = tqdm(total=len(rows), desc="capture", disable=not progress, unit="ex")
        for start in range(0, len(order), self.shard_size):
            part = order[start : start + self.shard_size]
            acts = []
            for b in range(0, len(part), self.batch_size):
                idx = part[b : b + self.batch_size]
                seqs = [_seq(records[rows[i]]) for i in idx]
                acts.append(capture_batch(model, seqs, pos_all[idx], self.hooks).to(self.dtype))
                bar.update(len(idx))
            chosen = [rows[i] for i in part]
            name = self._write(
                TWO_PASS, chosen, [records[f] for f in chosen], torch.cat(acts), pos_all[part] >= 0
            )
            shards.append({"file": name, "n": len(part), "path": TWO_PASS})
        bar.close()
        return shards


def _positions_label(p: str | PositionFn) -> str:
    return p if isinstance(p, str) else getattr(p, "__name__", repr(p))


def _seq(record: Any) -> list[int]:
    return list(record["prompt_token_ids"]) + list(record["answer_token_ids"])


def _seq_len(record: Any) -> int:
    return len(record["prompt_token_ids"]) + len(record["answer_token_ids"])
