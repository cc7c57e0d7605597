"""Cached prefixes: model-based extraction and p(True), shared parts run once vs every prompt in full.

* Extraction: every prompt (`tl_truth.answers.exact_answer.EXTRACTION_PROMPT`) starts with the
  same ~400-token few-shot instruction; `generate_ids(share_prefix=True)` prefills it once and
  copies its KV cache into each batch, the answers left-padded after it.
* p(True): an answer's two judge prompts ((A) True, then (A) False) agree up to the first option,
  and all share the chat header; `p_true_scores` runs each shared part once
  (`branched_last_logits`) on batches sorted by length. The baseline here is the previous code:
  both orders as full left-padded prompts, batches in the records' order.

Seconds per answer both ways in the same run, and how far the outputs move (extractions that
differ; the largest p(True) difference). Run: `make bench` or
`.venv/bin/python benchmarks/bench_extraction.py --n 64`
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from tl_truth.answers.generation import GenerationConfig, tokenize_prompts
from tl_truth.answers.prompts import default_format
from tl_truth.answers.run import answer_questions, model_extractions
from tl_truth.data.load import load_questions
from tl_truth.models import load_model
from tl_truth.probing.baselines import (
    last_token_logits,
    letter_token_ids,
    p_true_scores,
    render_p_true_prompt,
)


def p_true_plain(model, records, batch_size: int = 16) -> np.ndarray:
    """p(True) as before the cached prefixes: both orders in full, records in their order."""
    tok, fmt = model.tokenizer, default_format(model)
    a, b = letter_token_ids(tok)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    out = []
    for s in range(0, len(records), batch_size):
        rows = records[s : s + batch_size]
        both = []
        for true_first in (True, False):
            texts = [render_p_true_prompt(tok, fmt, r["question"], r["answer"], true_first)
                     for r in rows]  # fmt: skip
            logits = last_token_logits(model, tokenize_prompts(tok, texts, fmt), pad)
            p_a = torch.softmax(logits[:, [a, b]], -1)[:, 0].double().numpy()
            both.append(p_a if true_first else 1.0 - p_a)
        out.extend(((both[0] + both[1]) / 2).tolist())
    return np.asarray(out)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=64, help="answers to extract from and judge")
    ap.add_argument("--dataset", default="fanoutqa")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model()
    ds = load_questions(args.dataset, limit=args.n)
    run = answer_questions(
        model, ds, GenerationConfig(max_new_tokens=24), extract_with_model=False, progress=False
    )
    by_key = {(q.task, q.id): q for q in ds.questions}
    pairs = [(by_key[(r["task"], r["id"])], r["answer"]) for r in run.records]
    n = len(pairs)
    model_extractions(model, pairs[:4], progress=False)  # warm-up
    full, t_full = timed(lambda: model_extractions(model, pairs, progress=False,
                                                   share_prefix=False))  # fmt: skip
    shared, t_shared = timed(lambda: model_extractions(model, pairs, progress=False))
    differ = sum(a != b for a, b in zip(full, shared, strict=True))
    print(f"extraction, {n} answers of {args.dataset}, batch 32, {args.threads} threads")
    print(f"  every prompt in full:     {t_full:7.2f} s  ({t_full / n:.3f} s/answer)")
    print(f"  shared prefix run once:   {t_shared:7.2f} s  ({t_shared / n:.3f} s/answer)")
    print(f"  speedup {t_full / t_shared:.2f}x; extractions that differ: {differ}/{n}")

    records = [{"question": q.question, "answer": a} for q, a in pairs]
    plain, t_plain = timed(lambda: p_true_plain(model, records))
    cached, t_cached = timed(lambda: p_true_scores(model, records, progress=False))
    print(f"p(True), the same {n} answers, batch 16 answers (32 prompts), {args.threads} threads")
    print(f"  both prompts in full:     {t_plain:7.2f} s  ({t_plain / n:.3f} s/answer)")
    print(f"  shared stems run once:    {t_cached:7.2f} s  ({t_cached / n:.3f} s/answer)")
    print(f"  speedup {t_plain / t_cached:.2f}x; max |p(True) difference| "
          f"{np.abs(plain - cached).max():.2e}")  # fmt: skip
    print(f"SUMMARY extraction_s_per_answer={t_shared / n:.3f} "
          f"p_true_s_per_answer={t_cached / n:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
