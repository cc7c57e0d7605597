"""Generation speed: our batched cached loop vs one prompt at a time vs plain HF generate;
and K samples per prompt with one shared prompt pass vs one prompt pass per sample.

Ratios are against baselines measured in the same run, on the same prompts. Also checks that
every path gives the same greedy tokens. Run: `make bench` or
`.venv/bin/python benchmarks/bench_generation.py --n 32 --tokens 24`.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from tl_truth.answers.generation import (
    GenerationConfig,
    generate_ids,
    stop_token_ids,
    tokenize_prompts,
)
from tl_truth.answers.prompts import default_format
from tl_truth.data.load import load_questions
from tl_truth.models import load_model


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def hf_generate(hf, tok, prompts, n_tokens, stops, batch_size):
    """Plain HF greedy generate, left-padded batches, truncated at the first stop token."""
    out = []
    tok.padding_side = "left"
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i : i + batch_size]
        width = max(map(len, chunk))
        ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in chunk])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
        with torch.no_grad():
            gen = hf.generate(
                ids,
                attention_mask=mask,
                max_new_tokens=n_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
            )[:, width:]
        for row in gen.tolist():
            ans = []
            for t in row:
                if t in stops:
                    break
                ans.append(t)
            out.append(ans)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--k", type=int, default=10, help="samples per prompt for the sampling part")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    tok = model.tokenizer
    qs = load_questions("capitals", args.n).questions
    fmt = default_format(model)
    prompts = tokenize_prompts(tok, [fmt.render(tok, q.question) for q in qs], fmt)
    stops = stop_token_ids(tok, model)

    def ours(bs, cache=True):
        cfg = GenerationConfig(max_new_tokens=args.tokens, batch_size=bs, use_cache=cache)
        res = generate_ids(model, prompts, cfg, progress=False)
        return [r[0]["answer_token_ids"] for r in res]

    generate_ids(model, prompts[:2], GenerationConfig(2), progress=False)  # warm up
    results = {}
    ref, results["tl_truth_batched"] = timed(lambda: ours(32))
    single, results["tl_truth_one_at_a_time"] = timed(lambda: ours(1))
    hf = model.original_model
    hf_b, results["hf_generate_batched"] = timed(
        lambda: hf_generate(hf, tok, prompts, args.tokens, stops, 32)
    )
    hf_1, results["hf_generate_one_at_a_time"] = timed(
        lambda: hf_generate(hf, tok, prompts, args.tokens, stops, 1)
    )
    nocache, results["tl_truth_batched_no_cache"] = timed(lambda: ours(32, cache=False))
    agree = {
        "one_at_a_time": single == ref,
        "hf_batched": hf_b == ref,
        "hf_one_at_a_time": hf_1 == ref,
        "no_cache": nocache == ref,
    }
    base = results["tl_truth_batched"]
    print(f"{args.model}, {args.n} prompts x {args.tokens} tokens, {args.threads} threads")
    for name, s in results.items():
        print(f"  {name:<28}{s:8.2f} s   {s / base:6.2f}x of tl_truth_batched")
    print(f"  same greedy tokens as tl_truth_batched: {json.dumps(agree)}")
    decode_vs_hf = base / results["hf_generate_batched"]

    # K samples per prompt: one shared prompt pass per prompt vs every sample its own row.
    k = args.k
    sub = prompts[: max(1, args.n // k)]

    def sample(share):
        cfg = GenerationConfig(
            max_new_tokens=args.tokens,
            temperature=1.0,
            num_samples=k,
            seed=0,
            batch_size=32,
            share_prompt_pass=share,
        )
        return generate_ids(model, sub, cfg, progress=False)

    shared, t_shared = timed(lambda: sample(True))
    rows, t_rows = timed(lambda: sample(False))
    same = [[s["answer_token_ids"] for s in q] for q in shared] == [
        [s["answer_token_ids"] for s in q] for q in rows
    ]
    print(f"sampling: {len(sub)} prompts x K={k} x {args.tokens} tokens")
    print(f"  shared prompt pass          {t_shared:8.2f} s")
    print(f"  one prompt pass per sample  {t_rows:8.2f} s   {t_rows / t_shared:6.2f}x slower")
    print(f"  same samples: {same}")
    print(
        f"SUMMARY decode_vs_hf_generate={decode_vs_hf:.3f} "
        f"same_tokens_as_hf={int(agree['hf_batched'])} shared_prompt_pass_speedup="
        f"{t_rows / t_shared:.2f}"
    )


if __name__ == "__main__":
    main()
