"""`tl-truth run` end to end: pipeline time / generation time, at `make demo`'s size.

In one process, on the same questions (SmolLM2-135M-Instruct, `make demo`'s settings: 831
questions of capitals + city_country, every second layer, 24 new tokens, no model extraction,
p(True), 1000 bootstraps, 100 permutations), 2 threads:

(a) generation alone (`answer_questions`, no capture): the denominator;
(b) the two-pass capture of (a)'s answers (`capture`): the second forward pass the pipeline
    used to make;
(c) `run_all`, the default pipeline (activations captured inside generation), timed whole;
(a') generation alone again: the denominator is the mean of (a) and (a'), and their spread is
    printed (on a shared 2-core machine one timing can move by 10-20%).

It prints (c)'s wall time over (a), the capture's cost inside generation ((c)'s generate_s +
capture_s against (a)), (b) over (a), and each stage of (c). The previous, two-pass pipeline
is (c) with (b) in place of the capture inside generation: its ratio is composed from these
measured parts (labelled so), not run a second time (it would double the benchmark's time).
Greedy decoding is deterministic, so (a) and (c) generate the same answers: the two stores
hold the same tokens, and are compared (max |diff| of the float16 activations relative to
their norm; the probe grid fitted on each, max |dAUC|).

The ratio is measured at the demo's size because a pipeline's fixed costs (the probe grid's
240 cells, the permutation null's 100 refits of 64 cells, bootstraps) do not shrink with the
slice: `--limit 20` (40 questions) prints a larger ratio than the demo pays.

    .venv/bin/python benchmarks/bench_pipeline.py                # make demo's size, ~10 min
    .venv/bin/python benchmarks/bench_pipeline.py --limit 20     # a quick look
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tl_truth.answers.generation import GenerationConfig
from tl_truth.answers.run import AnswerRun, answer_questions
from tl_truth.config import parse_layers
from tl_truth.data.load import load_questions
from tl_truth.models import hook_name, load_model
from tl_truth.probing.activations import ActivationStore, capture
from tl_truth.probing.grid import fit_probe_grid
from tl_truth.studies.artefacts import EMBED_HOOK
from tl_truth.studies.main_job import run_all


def _grid(store: ActivationStore) -> np.ndarray:
    hooks = [h for h in store.hooks if h != EMBED_HOOK]
    acts, valid = store.load(hooks=hooks)
    train, test = store.split_mask("train"), store.split_mask("test")
    grid = fit_probe_grid(acts, store.labels, train, test, hooks, store.positions, valid=valid,
                          n_boot=0, progress=False)  # fmt: skip
    return np.asarray(grid.auc, dtype=float)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="capitals,city_country")
    ap.add_argument("--limit", type=int, default=600, help="questions per dataset part")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--layers", default="every:2")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model()
    ds = load_questions(args.dataset, args.limit)
    cfg = GenerationConfig(max_new_tokens=args.max_new_tokens)
    layers = parse_layers(args.layers, model.cfg.n_layers)
    hooks = [hook_name("resid_post", layer) for layer in layers]
    all_hooks = [EMBED_HOOK, *hooks]
    # warm up: the weights are memory-mapped, the first pass pages them in
    answer_questions(model, load_questions("capitals", 4), cfg, extract_with_model=False,
                     progress=False)  # fmt: skip

    with tempfile.TemporaryDirectory() as d:

        def generation_alone():
            t0, c0 = time.perf_counter(), time.process_time()
            run = answer_questions(model, ds, cfg, extract_with_model=False, progress=False)
            return run, time.perf_counter() - t0, time.process_time() - c0

        run, alone_1, cpu_1 = generation_alone()
        print(f"(a) generation alone: {alone_1:.1f} s (CPU {cpu_1:.0f} s)", flush=True)

        t0 = time.perf_counter()
        two = capture(model, run.records, Path(d) / "two_pass", all_hooks, progress=False)
        two_pass = time.perf_counter() - t0
        print(f"(b) two-pass capture: {two_pass:.1f} s", flush=True)

        # `make demo`'s settings: p(True), 1000 bootstraps, 100 permutations
        t0, c0 = time.perf_counter(), time.process_time()
        report = run_all(model, ds, Path(d) / "run", cfg, hooks=hooks, extract_with_model=False,
                         progress=False)  # fmt: skip
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        t = report.timings
        print(f"(c) run_all: {wall:.1f} s (CPU {cpu:.0f} s) {t}", flush=True)
        fused = ActivationStore.open(Path(d) / "run" / "activations")
        same_answers = [r["answer_token_ids"] for r in run.records] == [
            r["answer_token_ids"] for r in AnswerRun.load(Path(d) / "run").records
        ]
        a, va = fused.load()
        b, vb = two.load()
        grid_a, grid_b = _grid(fused), _grid(two)
        _, alone_2, cpu_2 = generation_alone()
        print(f"(a') generation alone again: {alone_2:.1f} s (CPU {cpu_2:.0f} s)", flush=True)
        alone, alone_cpu = (alone_1 + alone_2) / 2, (cpu_1 + cpu_2) / 2

    n = len(ds.questions)
    with_capture = t["generate_s"] + t["capture_s"]
    overhead = with_capture - alone
    rest = wall - with_capture
    composed = (wall - with_capture + alone + two_pass) / alone
    print(
        f"tl-truth run, {n} questions x {len(all_hooks)} hooks x 15 positions, max "
        f"{args.max_new_tokens} new tokens, {args.threads} threads; generation alone {alone:.1f} s "
        f"(mean of {alone_1:.1f} s before and {alone_2:.1f} s after: "
        f"{abs(alone_1 - alone_2) / alone:.0%} apart)"
    )
    print(
        f"  pipeline {wall:.1f} s = {wall / alone:.2f}x generation alone (CPU "
        f"{cpu / alone_cpu:.2f}x): generation with capture {with_capture:.1f} s "
        f"({overhead:+.1f} s = {overhead / alone:+.1%}), probe grid {t['probe_s']} s "
        f"({t['probe_s'] / alone:.0%}), baselines {t['baselines_s']} s "
        f"({t['baselines_s'] / alone:.0%}, p(True) on the test answers), controls "
        f"{t['controls_s']} s ({t['controls_s'] / alone:.0%}), the rest (report, plots, "
        f"files) {rest - t['probe_s'] - t['baselines_s'] - t['controls_s']:.1f} s"
    )
    print(
        f"  the second forward pass it replaces: {two_pass:.1f} s ({two_pass / alone:.0%} of "
        f"generation); the two-pass pipeline, composed from these measured parts: "
        f"{composed:.2f}x"
    )
    print(
        f"SUMMARY pipeline_over_generation={wall / alone:.2f} "
        f"two_pass_pipeline_over_generation={composed:.2f} "
        f"capture_overhead_in_generation={overhead / alone:+.3f} "
        f"two_pass_capture_over_generation={two_pass / alone:.3f}"
    )
    rel = (a - b).norm(dim=-1) / b.norm(dim=-1).clamp_min(1e-6)
    d_auc = np.abs(grid_a - grid_b)
    print(
        f"  fused vs two-pass stores: same answers {same_answers}, same valid "
        f"{bool(torch.equal(va, vb))}, {float((a != b).float().mean()):.2%} of float16 entries "
        f"differ, max |diff| {float((a - b).abs().max()):.2e}, max relative "
        f"{float(rel.masked_select(vb[:, None]).max()):.2e}; probe grid max |dAUC| "
        f"{float(np.nanmax(d_auc)):.4f}, {int(np.nansum(d_auc <= 0.01))}/"
        f"{int(np.sum(~np.isnan(d_auc)))} cells within 0.01; capture path {report.capture['path']}"
    )


if __name__ == "__main__":
    main()
