"""Model-based exact-answer extraction: the shared few-shot prefix run once vs every prompt in full.

The extraction prompt (`tl_truth.answers.exact_answer.EXTRACTION_PROMPT`) starts with the same
few-shot instruction for every answer; `generate_ids(share_prefix=True)` prefills it once and
copies its KV cache into each batch, batching rows by equal suffix length (no padding). This
measures seconds per answer both ways in the same run and counts answers whose extraction
differs (floating-point ties between the two batchings are the only expected cause).

    .venv/bin/python benchmarks/bench_extraction.py --n 64
"""

from __future__ import annotations

import argparse
import time

import torch

from tl_truth.answers.generation import GenerationConfig
from tl_truth.answers.run import answer_questions, model_extractions
from tl_truth.data.load import load_questions
from tl_truth.models import load_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=64, help="answers to extract from")
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
    model_extractions(model, pairs[:4], progress=False)  # warm-up
    t0 = time.perf_counter()
    full = model_extractions(model, pairs, progress=False, share_prefix=False)
    t_full = time.perf_counter() - t0
    t1 = time.perf_counter()
    shared = model_extractions(model, pairs, progress=False, share_prefix=True)
    t_shared = time.perf_counter() - t1
    differ = sum(a != b for a, b in zip(full, shared, strict=True))
    n = len(pairs)
    print(f"extraction, {n} answers of {args.dataset}, batch 32, {args.threads} threads")
    print(f"  every prompt in full:     {t_full:7.2f} s  ({t_full / n:.3f} s/answer)")
    print(f"  shared prefix run once:   {t_shared:7.2f} s  ({t_shared / n:.3f} s/answer)")
    print(f"  speedup {t_full / t_shared:.2f}x; extractions that differ: {differ}/{n}")


if __name__ == "__main__":
    main()
