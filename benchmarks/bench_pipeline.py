"""`tl-truth run` end to end: pipeline time / generation time, with capture inside generation.

In one process, on the same questions (SmolLM2-135M-Instruct, `make demo`'s settings on a
small slice):

(a) generation alone (`answer_questions`, no capture), then the two-pass capture of those answers
    (`capture`), and generation with the capture inside it (`FusedCapture`, every hook of the
    run, then `finish`), alternated `--rounds` times, the fastest of each kept (wall and CPU
    time: the machine may be shared): the capture's cost inside generation against its cost
    as a second forward pass;
(b) `run_all` with the activations captured inside generation (the default);
(c) `run_all` with the two-pass capture (`fused_capture=False`, the previous pipeline).

It prints each pipeline's wall time over (a)'s generation time, and checks the two stores and
AUC grids agree (max |diff| of the float16 activations, relative to their norm; max |dAUC|,
which on a small test split is one rank flip or more: the grid moves as much when the
float16 store is perturbed by one unit in the last place, see the README).

    .venv/bin/python benchmarks/bench_pipeline.py --limit 20
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tl_truth.answers.generation import GenerationConfig
from tl_truth.answers.run import answer_questions
from tl_truth.config import parse_layers
from tl_truth.data.load import load_questions
from tl_truth.models import hook_name, load_model
from tl_truth.probing.activations import ActivationStore, capture
from tl_truth.probing.fused_capture import FusedCapture
from tl_truth.studies.artefacts import EMBED_HOOK
from tl_truth.studies.main_job import run_all


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="capitals,city_country")
    ap.add_argument("--limit", type=int, default=20, help="questions per dataset part")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--layers", default="every:2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2, help="alternated generation timings")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model()
    ds = load_questions(args.dataset, args.limit)
    cfg = GenerationConfig(max_new_tokens=args.max_new_tokens)
    layers = parse_layers(args.layers, model.cfg.n_layers)
    hooks = [hook_name("resid_post", layer) for layer in layers]
    # `make demo`'s settings: no model extraction, p(True), 1000 bootstraps, 100 permutations
    common = dict(hooks=hooks, extract_with_model=False, progress=False)

    # warm up: the weights are memory-mapped, the first pass pages them in
    answer_questions(model, load_questions("capitals", 4), cfg, extract_with_model=False,
                     progress=False)  # fmt: skip
    # (wall s, CPU s) per round; the machine may be shared: the fastest round of each is kept
    runs: dict[str, list[tuple[float, float]]] = {"alone": [], "two_pass": [], "capturing": []}
    all_hooks = [EMBED_HOOK, *hooks]
    with tempfile.TemporaryDirectory() as d:
        for r in range(args.rounds):
            for name in ("alone", "capturing"):
                fused = None
                if name == "capturing":
                    fused = FusedCapture(model, Path(d) / f"fused{r}", all_hooks)
                t0, c0 = time.perf_counter(), time.process_time()
                run = answer_questions(model, ds, cfg, extract_with_model=False, progress=False,
                                       capture=fused)  # fmt: skip
                if fused is not None:
                    fused.finish(model, run.records, progress=False)
                runs[name].append((time.perf_counter() - t0, time.process_time() - c0))
                if name == "alone":  # the same answers through the model a second time
                    t0, c0 = time.perf_counter(), time.process_time()
                    capture(model, run.records, Path(d) / f"two{r}", all_hooks, progress=False)
                    runs["two_pass"].append((time.perf_counter() - t0, time.process_time() - c0))
            print({k: v[-1] for k, v in runs.items()}, flush=True)
    best = {k: min(v) for k, v in runs.items()}
    gen_only, gen_fused = best["alone"][0], best["capturing"][0]

    walls, cpus, reports, stores = {}, {}, {}, {}
    with tempfile.TemporaryDirectory() as d:
        for name, fused in (("fused", True), ("two_pass", False)):
            t0, c0 = time.perf_counter(), time.process_time()
            reports[name] = run_all(model, ds, Path(d) / name, cfg, fused_capture=fused, **common)
            walls[name] = time.perf_counter() - t0
            cpus[name] = time.process_time() - c0
            print(f"{name}: {walls[name]:.1f} s {reports[name].timings}", flush=True)
            acts, valid = ActivationStore.open(Path(d) / name / "activations").load()
            stores[name] = (acts, valid)

    n = len(ds.questions)
    print(
        f"tl-truth run, {n} questions x {len(hooks) + 1} hooks x 15 positions, "
        f"max {args.max_new_tokens} new tokens, {args.threads} threads; "
        f"generation alone {gen_only:.1f} s"
    )
    for name in walls:
        t = reports[name].timings
        print(
            f"  {name:<9} pipeline {walls[name]:6.1f} s = {walls[name] / gen_only:4.2f}x generation"
            f" (CPU {cpus[name]:.0f} s = {cpus[name] / best['alone'][1]:.2f}x)"
            f"   (generate_s {t['generate_s']}, capture_s {t['capture_s']}, "
            f"probe_s {t['probe_s']}, baselines_s {t['baselines_s']}, "
            f"controls_s {t['controls_s']})"
        )
    overhead = gen_fused - gen_only
    cpu_over = best["capturing"][1] - best["alone"][1]
    print(
        f"  capture inside generation: {gen_fused:.1f} s against {gen_only:.1f} s alone, "
        f"{overhead:+.1f} s ({overhead / gen_only:+.1%}; CPU {cpu_over / best['alone'][1]:+.1%})"
        f"; as a second forward pass instead: {best['two_pass'][0]:.1f} s "
        f"({best['two_pass'][0] / gen_only:.0%} of generation; fastest of {args.rounds} "
        f"alternated rounds); gather/write in the fused run "
        f"{reports['fused'].timings['capture_s']} s"
    )
    print(
        f"SUMMARY pipeline_over_generation={walls['fused'] / gen_only:.2f} "
        f"two_pass_pipeline_over_generation={walls['two_pass'] / gen_only:.2f} "
        f"capture_overhead_in_generation={overhead / gen_only:+.3f} "
        f"two_pass_capture_over_generation={best['two_pass'][0] / gen_only:.3f}"
    )
    (a, va), (b, vb) = stores["fused"], stores["two_pass"]
    diff = (a - b).abs()
    rel = (a - b).norm(dim=-1) / b.norm(dim=-1).clamp_min(1e-6)
    grid_a, grid_b = (np.asarray(reports[k].grid.auc, dtype=float) for k in ("fused", "two_pass"))
    d_auc = np.abs(grid_a - grid_b)
    sel = {k: (reports[k].selected.get("exact") or {}) for k in reports}
    print(
        f"  fused vs two-pass stores: same valid {bool(torch.equal(va, vb))}, "
        f"{float((a != b).float().mean()):.2%} of float16 entries differ, max |diff| "
        f"{float(diff.max()):.2e}, max relative {float(rel.masked_select(vb[:, None]).max()):.2e}"
        f"; AUC grid max |dAUC| {float(np.nanmax(d_auc)):.4f}, mean {float(np.nanmean(d_auc)):.4f},"
        f" {int(np.nansum(d_auc <= 0.01))}/{int(np.sum(~np.isnan(d_auc)))} cells within 0.01; "
        f"selected exact-answer cell {sel['fused'].get('hook')} / {sel['fused'].get('position')} "
        f"AUC {sel['fused'].get('auc')} vs {sel['two_pass'].get('hook')} / "
        f"{sel['two_pass'].get('position')} AUC {sel['two_pass'].get('auc')}; "
        f"capture path {reports['fused'].capture['path']}"
    )


if __name__ == "__main__":
    main()
