"""The cells a report names: the best one among some positions, and all methods on the same
examples.

`select_cell` picks a probe-grid cell by train cross-validation (never by test AUC);
`same_examples` scores every method on the test examples that have an exact answer. Both are
parts of the main job's report (`tl_truth.studies.main_job.probe_report`).
"""

from __future__ import annotations

import numpy as np

from tl_truth.probing.baselines import evaluate_baselines
from tl_truth.probing.grid import ProbeGrid

__all__ = ["EXACT_POSITIONS", "LAST_TOKEN_POSITIONS", "same_examples", "select_cell"]

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
