"""The main job: generate -> capture -> probe grid -> baselines -> one report.

Where in the model, and at which token, does an activation tell us the answer is wrong, and is
that better than the model's own confidence? Every number in the report is on the same test
split; the cell called "best" is chosen by cross-validation on the train split only (choosing
it by test AUC would flatter it), then its test AUC is reported with a bootstrap CI.

The report itself, `ProbeReport`, lives in `tl_truth.studies.main_report` (re-exported here).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from tl_truth.answers.exact_answer import Locate
from tl_truth.answers.generation import GenerationConfig, same_generation_settings
from tl_truth.answers.positions import NAMED_POSITIONS
from tl_truth.answers.prompts import PromptFormat
from tl_truth.answers.run import (
    EXTRACT_CHECKPOINT,
    GENERATE_CHECKPOINT,
    AnswerRun,
    answer_questions,
    clear_checkpoints,
    relocate,
)
from tl_truth.checkpoint import RunLock, maybe_die
from tl_truth.data.questions import QADataset
from tl_truth.probing.activations import ActivationStore, capture, default_hooks
from tl_truth.probing.baselines import evaluate_baselines, logit_scores, p_true_scores
from tl_truth.probing.fused_capture import FusedCapture
from tl_truth.probing.grid import ProbeGrid, fit_probe_grid
from tl_truth.studies.artefacts import EMBED_HOOK, artefact_report, method_scores
from tl_truth.studies.main_report import ARTEFACT_KEYS, ProbeReport, fmt_value

__all__ = [
    "ARTEFACT_KEYS",
    "EXACT_POSITIONS",
    "LAST_TOKEN_POSITIONS",
    "ProbeReport",
    "fmt_value",
    "probe_report",
    "run_all",
    "same_examples",
    "save_report",
    "select_cell",
]

EXACT_POSITIONS = ("before_exact", "exact_first", "exact_last", "after_exact")
LAST_TOKEN_POSITIONS = ("last_generated", "last_prompt")


def select_cell(grid: ProbeGrid, positions: tuple[str, ...]) -> dict | None:
    """The cell among `positions` with the best train cross-validation AUC, with extras.

    Args:
        grid: a fitted (or loaded) `ProbeGrid`.
        positions: the candidate positions (those not in the grid are ignored).

    Returns:
        The cell's hook, layer, position, test AUC and CI, CV AUC, mean-difference and
        shuffled-label AUCs and train/test counts; None if no candidate has a CV score.

    >>> from tl_truth.probing import ProbeGrid
    >>> grid = ProbeGrid.from_dict({
    ...     "hooks": ["blocks.1.hook_resid_post"], "positions": ["exact_first", "exact_last"],
    ...     "auc": [[0.7, 0.8]], "cv_auc": [[0.6, 0.75]], "n_test": [[20, 20]]})
    >>> cell = select_cell(grid, EXACT_POSITIONS)
    >>> cell["position"], cell["auc"], cell["cv_auc"]
    ('exact_last', 0.8, 0.75)
    >>> select_cell(grid, ("last_prompt",)) is None
    True
    """
    positions = tuple(p for p in positions if p in grid.positions)
    if not positions:
        return None
    try:
        best = grid.best(by="cv", positions=positions)
    except ValueError:
        return None
    h, p = grid.hooks.index(best["hook"]), grid.positions.index(best["position"])

    def at(a):
        v = float(np.asarray(a, dtype=float)[h, p])
        return None if np.isnan(v) else v

    return {
        "hook": best["hook"],
        "layer": best["layer"],
        "position": best["position"],
        "auc": at(grid.auc),
        "ci": [at(grid.auc_ci_low), at(grid.auc_ci_high)],
        "cv_auc": at(grid.cv_auc),
        "auc_mean_diff": at(grid.auc_mean_diff),
        "auc_shuffled": at(grid.auc_shuffled),
        "n_train": int(np.asarray(grid.n_train)[h, p]),
        "n_test": int(np.asarray(grid.n_test)[h, p]),
    }


P_TRUE_CHECKPOINT = "p_true.ckpt.jsonl"


def probe_report(
    model: Any,
    run: AnswerRun,
    store: ActivationStore,
    n_boot: int = 1000,
    p_true: bool = True,
    seed: int = 0,
    progress: bool = True,
    n_perm: int = 100,
    checkpoint_dir: str | Path | None = None,
) -> ProbeReport:
    """Fit the probe grid on a captured store; compare with the baselines and the controls.

    The token-embedding hook (captured for the embedding control) is not part of the grid.

    Args:
        model: the model the answers came from (for the p(True) baseline).
        run: the graded answers (`AnswerRun`), in the store's order.
        store: their activations (`capture`).
        n_boot: bootstrap replicates for every CI.
        p_true: score the p(True) baseline (one extra forward pass per test answer).
        seed: the seed of the probes' CV, the bootstrap and the permutations.
        progress: show progress bars.
        n_perm: label permutations for the null of the selected exact-answer cell (0: none).
        checkpoint_dir: where p(True) appends its finished batches (`p_true.ckpt.jsonl`), so
            a killed run does not judge those answers again (None: no checkpoint).

    Returns:
        The `ProbeReport` (not saved; `run_all` saves it).

    Re-scoring a finished run (here a tiny random model's: it answers nothing right, so no
    cell can be selected):

    >>> import tempfile
    >>> import tl_truth as tt
    >>> from tl_truth.testing import tiny_model
    >>> model = tiny_model("llama")
    >>> qs = [tt.make_question(str(i), f"What is {i} + 1?", str(i + 1), "sums", "math")
    ...       for i in range(8)]
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = run_all(model, tt.QADataset("sums", qs), d, tt.GenerationConfig(max_new_tokens=3),
    ...                 n_boot=10, p_true=False, extract_with_model=False, progress=False,
    ...                 n_perm=0)
    ...     report = probe_report(model, AnswerRun.load(d), ActivationStore.open(f"{d}/activations"),
    ...                           n_boot=10, p_true=False, progress=False, n_perm=0)
    >>> report.summary["n"], report.grid.hooks, report.selected["exact"]
    (8, ['blocks.0.hook_resid_post', 'blocks.1.hook_resid_post'], None)
    """
    records = run.records
    t0 = time.perf_counter()
    grid_hooks = [h for h in store.hooks if h != EMBED_HOOK]
    acts, valid = store.load(hooks=grid_hooks)
    labels = store.labels
    train, test = store.split_mask("train"), store.split_mask("test")
    grid = fit_probe_grid(
        acts,
        labels,
        train,
        test,
        grid_hooks,
        store.positions,
        valid=valid,
        n_boot=n_boot,
        seed=seed,
        model=store.model,
        progress=progress,
    )
    t_probe = time.perf_counter() - t0
    maybe_die("probe")

    t1 = time.perf_counter()
    scores = logit_scores(records)
    if p_true:
        # Baselines are only evaluated on the test split: judge only those answers.
        test_rows = np.flatnonzero(test.numpy())
        judged = p_true_scores(
            model,
            [records[i] for i in test_rows],
            progress=progress,
            checkpoint=Path(checkpoint_dir) / P_TRUE_CHECKPOINT if checkpoint_dir else None,
        )
        scores["p_true"] = np.full(len(records), np.nan)
        scores["p_true"][test_rows] = judged
    baselines = evaluate_baselines(scores, labels.numpy(), test.numpy(), n_boot=n_boot, seed=seed)
    t_base = time.perf_counter() - t1

    selected = {
        "exact": select_cell(grid, EXACT_POSITIONS),
        "last_generated": select_cell(grid, ("last_generated",)),
        "last_prompt": select_cell(grid, ("last_prompt",)),
        "any": select_cell(grid, tuple(store.positions)),
    }
    # every probe and baseline scored once, for the same-examples table and the controls
    methods = method_scores(grid, selected, acts, valid, grid.hooks, grid.positions, scores)
    same = same_examples(methods, selected, valid, store, grid.positions, n_boot, seed)
    t2 = time.perf_counter()
    artefacts = artefact_report(
        grid,
        store,
        records,
        selected,
        acts,
        valid,
        methods,
        EXACT_POSITIONS,
        n_boot=n_boot,
        n_perm=n_perm,
        seed=seed,
        progress=progress,
    )
    t_controls = time.perf_counter() - t2
    return ProbeReport(
        run.summary,
        grid,
        baselines,
        selected,
        {
            "probe_s": round(t_probe, 2),
            "baselines_s": round(t_base, 2),
            "controls_s": round(t_controls, 2),
        },
        same_examples=same,
        artefacts=artefacts,
    )


def same_examples(methods, selected, valid, store, positions, n_boot, seed) -> dict | None:
    """Every method on the *same* test examples: those that have an exact answer.

    The exact-answer probe can only be scored where an exact answer was located, which may be
    an easier or harder subset than the whole test split; this table removes that difference.

    Args:
        methods: every method's scores per example (`studies.artefacts.method_scores`).
        selected: the selected cells (`probe_report`); the "exact" one defines the examples.
        valid: [n, positions] which examples have each position.
        store: the activation store (labels and splits).
        positions: the grid's positions (the columns of `valid`).
        n_boot: bootstrap replicates for the CIs.
        seed: the bootstrap seed.

    Returns:
        {"n": examples, "auc": method -> {"auc", "ci", "n"}}, or None when no exact-answer
        cell was selected.

    >>> same_examples({}, {"exact": None}, None, None, [], n_boot=10, seed=0) is None
    True
    """
    ex = selected.get("exact")
    if ex is None:
        return None
    test = store.split_mask("test") & valid[:, positions.index(ex["position"])]
    table = evaluate_baselines(
        methods, store.labels.numpy(), test.numpy(), n_boot=n_boot, seed=seed
    )
    return {"n": int(test.sum()), "auc": table}


def run_all(
    model: Any,
    dataset: QADataset,
    out_dir: str | Path,
    config: GenerationConfig | None = None,
    fmt: PromptFormat | None = None,
    hooks: list[str] | None = None,
    positions: tuple[str, ...] = NAMED_POSITIONS,
    n_boot: int = 1000,
    p_true: bool = True,
    extract_with_model: bool = True,
    progress: bool = True,
    locate: Locate = "blind",
    n_perm: int = 100,
    fused_capture: bool = True,
) -> ProbeReport:
    """`tl-truth run`: everything, written to `out_dir` (reuses finished generations/shards).

    Activations are captured inside generation (`FusedCapture`: the decode loop's hooks, no
    second forward pass); answers it did not record (generations read back on a resumed run)
    get the two-pass capture. The report's `capture` says which path served how many answers.

    Args:
        model: a HookedTransformer or TransformerBridge.
        dataset: the questions.
        out_dir: where generations.jsonl, activations/, report.* and best_probe.* go.
        config: generation settings; fmt: the prompt format.
        hooks: hooks to probe (default: every layer's resid_post); the token embedding is
            always captured too, for the embedding control.
        positions: named positions to capture.
        n_boot: bootstrap replicates for every CI.
        p_true: run the p(True) baseline (one extra forward pass per test answer).
        extract_with_model: the model-based exact-answer extraction fallback.
        locate: "blind" (default) or "paper": how the exact answer is located.
        n_perm: label permutations for the selected cell's null (0: none).
        fused_capture: capture inside generation (False: the two-pass `capture` for all).

    Returns:
        The `ProbeReport` (also saved to `out_dir`).

    On a tiny random model (it answers nothing right: the grid has no cell to select):

    >>> import tempfile
    >>> import tl_truth as tt
    >>> from tl_truth.testing import tiny_model
    >>> model = tiny_model("llama")
    >>> qs = [tt.make_question(str(i), f"What is {i} + 1?", str(i + 1), "sums", "math")
    ...       for i in range(8)]
    >>> with tempfile.TemporaryDirectory() as d:
    ...     report = run_all(model, tt.QADataset("sums", qs), d,
    ...                      tt.GenerationConfig(max_new_tokens=3), n_boot=10, p_true=False,
    ...                      extract_with_model=False, progress=False, n_perm=0)
    ...     files = sorted(p.name for p in Path(d).iterdir())
    >>> files
    ['activations', 'generations.jsonl', 'probe_grid.png', 'report.json', 'report.md', 'summary.json']
    >>> report.summary["n"], report.grid.hooks, report.capture["path"]
    (8, ['blocks.0.hook_resid_post', 'blocks.1.hook_resid_post'], 'fused')
    """
    out = Path(out_dir)
    with RunLock(out):  # a second run on the same directory stops with the holder's name
        t0 = time.perf_counter()
        config = config or GenerationConfig()
        hooks = [EMBED_HOOK, *[h for h in (hooks or default_hooks(model)) if h != EMBED_HOOK]]
        fused = None  # made where generation runs, after a relocation has moved the old store
        gen_file = out / "generations.jsonl"
        if gen_file.exists() and _same_questions(gen_file, dataset):
            run = AnswerRun.load(out)  # resume: generation is the slow part
            if not same_generation_settings(run.summary.get("generation"), config):
                raise ValueError(
                    f"{out} holds generations made with other settings "
                    f"({run.summary.get('generation')}); use another --out or delete it"
                )
            if run.summary.get("locate", "paper") != locate:
                # same answers, another locator: locate again (no generation), keep the old file
                old = run.summary.get("locate", "paper")
                gen_file.replace(out / f"generations.locate-{old}.jsonl")
                if (out / "activations").exists():  # captured at the old positions
                    (out / "activations").replace(out / f"activations.locate-{old}")
                run = relocate(model, dataset, run, locate, extract_with_model, config.batch_size)
                run.save(out)
        else:
            # killed here, a re-run resumes from the batches checkpointed in `out`
            if fused_capture:
                fused = FusedCapture(model, out / "activations", hooks, positions)
            run = answer_questions(
                model,
                dataset,
                config,
                fmt,
                extract_with_model,
                progress,
                locate=locate,
                checkpoint_dir=out,
                capture=fused,
            )
            run.save(out)
            clear_checkpoints(out, [GENERATE_CHECKPOINT, EXTRACT_CHECKPOINT])
        t_gen = time.perf_counter() - t0 - (fused.seconds if fused else 0.0)
        t1 = time.perf_counter()
        if fused_capture:
            fused = fused or FusedCapture(model, out / "activations", hooks, positions)
            store = fused.finish(model, run.records, progress=progress)
            t_cap = fused.seconds  # gathering and writing, during generation and after it
        else:
            store = capture(
                model, run.records, out / "activations", hooks, positions, progress=progress
            )
            t_cap = time.perf_counter() - t1
        report = probe_report(
            model,
            run,
            store,
            n_boot=n_boot,
            p_true=p_true,
            progress=progress,
            n_perm=n_perm,
            checkpoint_dir=out,
        )
        report.timings = {
            "generate_s": round(t_gen, 2),
            "capture_s": round(t_cap, 2),
            **report.timings,
        }
        report.capture = store.meta.get("capture") or {
            "path": "two_pass",
            "fused_rows": 0,
            "two_pass_rows": len(store),
            "two_pass_reasons": {"fused_capture_off": len(store)},
        }
        save_report(report, out)
        clear_checkpoints(out)
        return report


def _same_questions(gen_file: Path, dataset: QADataset) -> bool:
    with gen_file.open() as f:
        ids = [(r["task"], r["id"]) for r in map(json.loads, f)]
    return ids == [(q.task, q.id) for q in dataset.questions]


def save_report(report: ProbeReport, out: str | Path) -> Path:
    """`report.save(out)`: report.json, report.md, probe_grid.png and best_probe.*.

    Args:
        report: the report.
        out: the directory.

    Returns:
        `out`, as a `Path`.

    >>> import tempfile
    >>> from tl_truth.probing import ProbeGrid
    >>> grid = ProbeGrid.from_dict({"hooks": ["blocks.1.hook_resid_post"],
    ...                             "positions": ["exact_last"], "auc": [[0.8]]})
    >>> summary = {"model": {"name": "tiny", "backend": "bridge", "processing": "hf",
    ...                      "fingerprint": "f"},
    ...            "dataset": {"name": "capitals"}, "n": 40, "splits": {}, "accuracy": 0.5,
    ...            "exact_answer_rate": 1.0, "per_task": {}}
    >>> with tempfile.TemporaryDirectory() as d:
    ...     out = save_report(ProbeReport(summary, grid, {}, {"exact": None}), d)
    ...     sorted(p.name for p in out.iterdir())
    ['probe_grid.png', 'report.json', 'report.md']
    """
    return report.save(out)
