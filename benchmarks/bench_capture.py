"""Capture speed and memory: tl_truth's batched hook capture against two baselines.

(a) the reference implementation's approach: one example at a time through Hugging Face with
    `output_hidden_states=True`, then indexing the positions;
(b) TransformerLens `run_with_cache` of every residual hook (batched), then indexing.

All three must give the same vectors (checked); times are ratios against tl_truth measured in
the same run. Peak memory is the peak RSS growth of each step (resource/tracemalloc cannot see
torch's allocator, so we sample RSS in a thread).

    .venv/bin/python benchmarks/bench_capture.py --n 64
"""

from __future__ import annotations

import argparse
import threading
import time

import psutil
import torch

from tl_truth.answers.generation import GenerationConfig
from tl_truth.answers.positions import NAMED_POSITIONS, resolve_positions
from tl_truth.answers.run import answer_questions
from tl_truth.data.load import load_questions
from tl_truth.models import load_model
from tl_truth.probing.activations import capture_batch, default_hooks


class PeakRSS:
    """Peak resident memory growth (MiB) while the block runs."""

    def __enter__(self):
        self.proc = psutil.Process()
        self.base = self.peak = self.proc.memory_info().rss
        self.running = True
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()
        return self

    def _poll(self):
        while self.running:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.mib = (self.peak - self.base) / 2**20


def ours(model, records, positions, hooks, batch_size):
    out = []
    for i in range(0, len(records), batch_size):
        chunk = records[i : i + batch_size]
        seqs = [r["prompt_token_ids"] + r["answer_token_ids"] for r in chunk]
        out.append(capture_batch(model, seqs, positions[i : i + batch_size], hooks))
    return torch.cat(out)


def hf_one_at_a_time(hf, records, positions, n_layers):
    """LLMsKnow style: output_hidden_states per example. hidden_states[l + 1] is the output of
    block l except for the last block, which HF returns after the final norm: not comparable."""
    out = torch.zeros(len(records), n_layers - 1, positions.shape[1], hf.config.hidden_size)
    for i, r in enumerate(records):
        ids = torch.tensor([r["prompt_token_ids"] + r["answer_token_ids"]])
        with torch.no_grad():
            hs = hf(ids, output_hidden_states=True).hidden_states
        for k, p in enumerate(positions[i].tolist()):
            if p >= 0:
                for layer in range(n_layers - 1):
                    out[i, layer, k] = hs[layer + 1][0, p]
    return out


def run_with_cache_then_index(model, records, positions, hooks, batch_size):
    out = []
    for i in range(0, len(records), batch_size):
        chunk = records[i : i + batch_size]
        width = max(len(r["prompt_token_ids"]) + len(r["answer_token_ids"]) for r in chunk)
        tokens = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        for j, r in enumerate(chunk):
            seq = r["prompt_token_ids"] + r["answer_token_ids"]
            tokens[j, : len(seq)] = torch.tensor(seq)
            mask[j, : len(seq)] = 1
        with torch.no_grad():
            _, cache = model.run_with_cache(
                tokens, attention_mask=mask, names_filter=lambda n: n in hooks
            )
        pos = positions[i : i + batch_size]
        rows = torch.arange(len(chunk))[:, None]
        got = torch.stack([cache[h][rows, pos.clamp(min=0)] for h in hooks], 1)
        got.masked_fill_((pos < 0)[:, None, :, None], 0.0)
        out.append(got)
        del cache
    return torch.cat(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model()
    ds = load_questions("capitals", args.n)
    run = answer_questions(
        model, ds, GenerationConfig(max_new_tokens=24), extract_with_model=False, progress=False
    )
    records = run.records
    positions = resolve_positions(list(NAMED_POSITIONS), records)
    hooks = default_hooks(model)
    n_layers = model.cfg.n_layers

    # Warm up (weights are memory-mapped: the first pass pages them in) before any timing.
    ours(model, records[:4], positions[:4], hooks, 4)
    run_with_cache_then_index(model, records[:4], positions[:4], hooks, 4)
    timings, mem, results = {}, {}, {}
    for name, fn in [
        ("tl_truth capture_batch", lambda: ours(model, records, positions, hooks, args.batch_size)),
        (
            "TL run_with_cache + index",
            lambda: run_with_cache_then_index(model, records, positions, hooks, args.batch_size),
        ),
        (
            "HF output_hidden_states, 1 at a time",
            lambda: hf_one_at_a_time(model.original_model, records, positions, n_layers),
        ),
    ]:
        with PeakRSS() as peak:
            t0 = time.perf_counter()
            results[name] = fn()
            timings[name] = time.perf_counter() - t0
        mem[name] = peak.mib
    ref = results["tl_truth capture_batch"]
    same_tl = torch.allclose(ref, results["TL run_with_cache + index"], atol=1e-4, rtol=1e-4)
    hf = results["HF output_hidden_states, 1 at a time"]
    diff_hf = float((ref[:, : n_layers - 1] - hf).abs().max())
    base = timings["tl_truth capture_batch"]
    print(
        f"{len(records)} examples x {len(hooks)} hooks x {len(NAMED_POSITIONS)} positions, "
        f"batch {args.batch_size}, {args.threads} threads"
    )
    for name, s in timings.items():
        print(f"  {name:<40}{s:8.2f} s  {s / base:6.2f}x   peak RSS +{mem[name]:7.1f} MiB")
    print(f"  run_with_cache vectors equal (atol 1e-4): {same_tl}")
    print(f"  HF hidden states, layers 0..{n_layers - 2}: max |diff| = {diff_hf:.2e}")


if __name__ == "__main__":
    main()
