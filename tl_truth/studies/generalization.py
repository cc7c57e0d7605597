"""Generalisation across tasks: train the probe on task A, test it on task B.

For each task A the (hook, position) is A's own best by cross-validation on A's training split
(among the exact-answer positions by default, as in the paper); the probe fit there on A's train
split is scored on every task B's test split. The paper's reading subtracts the logit baseline
(the logit aggregation that is best on B's train split, scored on the same B test rows): a probe
that only carries "this answer looks confident" shows up as ~0 off the diagonal.

The result, `GeneralizationResult`, lives in `tl_truth.studies.generalization_result`
(re-exported here).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from tl_truth.answers.positions import EXACT_POSITIONS
from tl_truth.probing.activations import ActivationStore
from tl_truth.probing.baselines import LOGIT_SCORES, logit_scores
from tl_truth.probing.grid import fit_probe_grid
from tl_truth.probing.metrics import bootstrap_auc_ci, roc_auc
from tl_truth.studies.generalization_result import PANELS, GeneralizationResult
from tl_truth.studies.main_job import select_cell

__all__ = ["PANELS", "GeneralizationResult", "generalization_matrix"]


def _value(x: float) -> float | None:
    """A metric as stored: NaN (e.g. one class only) -> None."""
    x = float(x)
    return None if np.isnan(x) else x


def _train_best_logit(logits: dict[str, np.ndarray], y: np.ndarray, rows: np.ndarray) -> str | None:
    best, best_auc = None, -1.0
    for name in LOGIT_SCORES:
        keep = rows & ~np.isnan(logits[name])
        if keep.sum() == 0 or y[keep].min() == y[keep].max():
            continue
        auc = roc_auc(logits[name][keep], y[keep])
        if auc > best_auc:
            best, best_auc = name, auc
    return best


def generalization_matrix(
    store: ActivationStore,
    records: Sequence[dict],
    positions: Sequence[str] | None = EXACT_POSITIONS,
    min_per_class: int = 5,
    n_boot: int = 1000,
    seed: int = 0,
    progress: bool = True,
) -> GeneralizationResult:
    """The train-task x test-task AUC matrix from one captured run holding several tasks.

    A task with fewer than `min_per_class` correct or wrong training answers gets no probe
    (its row is empty, with the reason in `cells`); a cell whose test rows hold fewer than
    `min_per_class` of either class gets no AUC (the counts are in `n_test`).

    Args:
        store: the run's activations (`capture`), holding several tasks.
        records: the run's generations (same order as the store's examples).
        positions: the candidate positions for each task's best cell (None: every captured
            position).
        min_per_class: the fewest correct and wrong answers a probe or an AUC needs.
        n_boot: bootstrap replicates for the CIs.
        seed: the seed of the probes' CV and of the bootstrap.
        progress: show progress bars.

    Returns:
        The `GeneralizationResult`.

    A tiny random model's activations of hand-made records (the AUCs mean nothing here):

    >>> import tempfile
    >>> from tl_truth.probing import capture
    >>> from tl_truth.testing import tiny_model
    >>> records = [
    ...     {"id": str(i), "task": task, "split": "train" if i < 8 else "test",
    ...      "correct": i % 2 == 0, "prompt_token_ids": [1, 2 + i, 3],
    ...      "answer_token_ids": [4 + i, 5, 6], "token_logprobs": [-0.5, -0.2, -0.1],
    ...      "exact_answer_token_span": [3, 5]}
    ...     for task in ("capitals", "elements") for i in range(12)]
    >>> with tempfile.TemporaryDirectory() as d:
    ...     store = capture(tiny_model("llama"), records, d, hooks=["blocks.1.hook_resid_post"],
    ...                     positions=["exact_last"], progress=False)
    ...     res = generalization_matrix(store, records, min_per_class=2, n_boot=10,
    ...                                 progress=False)
    >>> res.tasks, len(res.auc), res.cells["capitals"]["position"]
    (['capitals', 'elements'], 2, 'exact_last')
    """
    ex = store.examples
    if len(records) != len(ex) or any(
        (r["task"], r["id"]) != (e["task"], e["id"]) for r, e in zip(records, ex, strict=True)
    ):
        raise ValueError("records do not follow the activation store's examples")
    tasks = list(dict.fromkeys(e["task"] for e in ex))
    skills = {
        t: next(r.get("skill") or "unknown" for r in records if r["task"] == t) for t in tasks
    }
    cand = [p for p in (positions or store.positions) if p in store.positions]
    if not cand:
        raise ValueError(f"none of the positions {positions} was captured ({store.positions})")
    acts, valid = store.load(positions=cand)
    y = store.labels
    task_of = np.array([e["task"] for e in ex])
    train, test = store.split_mask("train"), store.split_mask("test")
    logits = logit_scores(records)
    # Each test task's logit baseline is the aggregation (mean / min / max, whole answer or
    # exact tokens) with the best AUC on that task's *train* answers, so the baseline is not
    # tuned on the test rows it is compared on.
    baseline = {
        t: _train_best_logit(logits, y.numpy(), (task_of == t) & train.numpy()) for t in tasks
    }

    cells: dict[str, dict] = {}
    probes = {}
    for t in tasks:
        m = torch.as_tensor(task_of == t)
        tr = m & train
        n_pos, n_neg = int(y[tr].sum()), int((1 - y[tr]).sum())
        if min(n_pos, n_neg) < min_per_class:
            cells[t] = {
                "skipped": f"{n_pos} correct / {n_neg} wrong training answers",
                "n_train_correct": n_pos,
                "n_train_wrong": n_neg,
            }
            continue
        grid = fit_probe_grid(
            acts[m],
            y[m],
            train[m],
            test[m],
            store.hooks,
            cand,
            valid=valid[m],
            n_boot=0,
            seed=seed,
            model=store.model,
            shuffled_control=False,
            progress=progress,
        )
        best = select_cell(grid, tuple(cand))
        if best is None:  # e.g. too few examples at every position for CV
            cells[t] = {
                "skipped": "no cell has a score (too few examples everywhere)",
                "n_train_correct": n_pos,
                "n_train_wrong": n_neg,
            }
            continue
        cells[t] = {
            "hook": best["hook"],
            "position": best["position"],
            "cv_auc": best["cv_auc"],
            "n_train_correct": n_pos,
            "n_train_wrong": n_neg,
        }
        probes[t] = grid.probe(best["hook"], best["position"])

    n = len(tasks)
    auc = [[None] * n for _ in range(n)]
    ci = [[[None, None] for _ in range(n)] for _ in range(n)]
    logit_auc = [[None] * n for _ in range(n)]
    # n_test[a][b] = [correct, wrong] test answers of b that have a's probe position
    n_test: dict[str, dict[str, list[int]]] = {a: {} for a in tasks}
    for i, a in enumerate(tasks):
        if a not in probes:
            continue
        probe = probes[a]
        h, p = store.hooks.index(probe.hook), cand.index(probe.position)
        for j, b in enumerate(tasks):
            rows = torch.as_tensor(task_of == b) & test & valid[:, p]
            yb = y[rows].numpy()
            n_test[a][b] = [int(yb.sum()), int((1 - yb).sum())]
            if min(n_test[a][b]) < min_per_class:
                continue  # an AUC on a handful of examples of one class means little
            scores = probe.decision_function(acts[rows, h, p]).double().numpy()
            auc[i][j] = _value(roc_auc(scores, yb))
            lo, hi = bootstrap_auc_ci(scores, yb, n_boot=n_boot, seed=seed)
            ci[i][j] = [_value(lo), _value(hi)]
            r = rows.numpy()
            name = baseline[b]
            if name is not None and not np.isnan(logits[name][r]).any():
                logit_auc[i][j] = _value(roc_auc(logits[name][r], yb))
    return GeneralizationResult(
        tasks,
        skills,
        auc,
        ci,
        logit_auc,
        cells,
        n_test,
        meta={
            "model": store.meta["model"],
            "positions": cand,
            "logit_baseline": baseline,
            "logit_baseline_rule": "per test task, the best of "
            + ", ".join(LOGIT_SCORES)
            + " on that task's train answers",
        },
    )
