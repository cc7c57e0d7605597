"""A permutation null for the selected probe: what the whole pipeline scores with no signal.

One shuffled-label probe is a single noisy draw. Worse, the reported cell is the best of many
(chosen by train cross-validation), so even a null distribution at a fixed cell would be too
kind. Here each replicate permutes the *train* labels, refits every candidate cell, re-selects
the cell by the same rule (highest train CV AUC, first in hook-major order on ties), and records
the test AUC of that cell against the real test labels. The p-value
`(1 + #{null >= observed}) / (1 + n)` is then honest about the selection (a max statistic).

This also catches the label-free artefact the single draw hinted at: when one direction
dominates the activations and happens to separate right from wrong answers (say, gold-matched
answer tokens against junk tokens), probes fitted on permuted labels still find it, and the
null sits far above 0.5.

Cost control: each cell's standardisation and span reduction do not depend on the labels, so
they are computed once and every permutation is an extra problem of the same batched solve.
By default C is held at each cell's real-label choice (`full_c_search=False`); the CV folds
are still redrawn for every permutation and the cell is still re-selected.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from tl_truth.probing.metrics import DTYPE, batched_roc_auc, stratified_folds
from tl_truth.probing.solver import DEFAULT_CS, _fit_logistic, _reduce, _standardise_stats


@dataclass
class PermutationNull:
    """The null distribution of the selected probe's test AUC.

    Args:
        null_aucs: the re-selected cell's test AUC under each permutation of the train labels
            (nan where no cell could be fitted).
        observed: the real pipeline's test AUC.
        rule: how the cell and C were chosen in each permutation (the full search, or C held
            at each cell's real-label choice).
        cells: the candidate (hook, position) names.

    >>> null = PermutationNull(np.array([0.5, 0.6, 0.4, np.nan]), observed=0.55, rule="demo")
    >>> null.n, round(null.null_mean, 3), null.p_value
    (3, 0.5, 0.5)
    """

    null_aucs: np.ndarray
    observed: float
    rule: str
    cells: list[tuple[str, str]] = field(default_factory=list)

    @property
    def n(self) -> int:
        """How many permutations gave a score."""
        return int(np.isfinite(self.null_aucs).sum())

    @property
    def null_mean(self) -> float:
        """The mean null AUC (nan without any)."""
        return float(np.nanmean(self.null_aucs)) if self.n else float("nan")

    @property
    def null_p95(self) -> float:
        """The 95th percentile of the null AUCs (nan without any)."""
        return float(np.nanquantile(self.null_aucs, 0.95)) if self.n else float("nan")

    @property
    def p_value(self) -> float:
        """`(1 + #{null >= observed}) / (1 + n)`: the permutation p-value of the observed AUC."""
        if not self.n or np.isnan(self.observed):
            return float("nan")
        null = self.null_aucs[np.isfinite(self.null_aucs)]
        return float((1 + (null >= self.observed - 1e-12).sum()) / (1 + len(null)))

    def to_dict(self) -> dict:
        """The summary for report.json.

        Returns:
            n, observed, null_mean, null_p95, p_value, rule and n_candidate_cells.

        >>> PermutationNull(np.array([0.5, 0.7]), observed=0.9, rule="demo").to_dict()["p_value"]
        0.3333333333333333
        """
        return {
            "n": self.n,
            "observed": self.observed,
            "null_mean": self.null_mean,
            "null_p95": self.null_p95,
            "p_value": self.p_value,
            "rule": self.rule,
            "n_candidate_cells": len(self.cells),
        }


def _cell_null(
    X: Float[Tensor, "m d"],
    Y: Bool[Tensor, "b m"],
    folds: Int[Tensor, "b m"],
    X_test: Float[Tensor, "t d"],
    y_test: Bool[Tensor, " t"],
    Cs: Sequence[float],
    cv: int,
    tol: float,
    max_iter: int,
) -> tuple[Float[Tensor, " b"], Float[Tensor, " b"]]:
    """CV AUC (best over Cs) and test AUC of the refit, for b label sets on one cell."""
    b, m = Y.shape
    X = X.to(DTYPE)
    rows = torch.ones(1, m, dtype=torch.bool)
    mean, scale = _standardise_stats(X[None], rows)
    Z = (X - mean) / scale
    red = _reduce(Z[None])
    r = red.Z.shape[-1]
    n_cs = len(Cs)
    # problem j = (perm, C, fold), fold fastest
    fold_of = torch.arange(cv).repeat(b * n_cs)
    perm_of = torch.arange(b).repeat_interleave(n_cs * cv)
    inv_c = (1 / torch.tensor(Cs, dtype=DTYPE)).repeat_interleave(cv).repeat(b)
    fit_w = (folds[perm_of] != fold_of[:, None]).to(DTYPE)[None]
    yk = Y[perm_of].to(DTYPE)[None]
    theta, _, _ = _fit_logistic(red, yk, fit_w, inv_c[None], tol, max_iter)
    logits = torch.baddbmm(theta[..., r:], theta[..., :r], red.Z.transpose(1, 2))[0]
    held = folds[perm_of] == fold_of[:, None]
    cv_auc = batched_roc_auc(logits, Y[perm_of], held).reshape(b, n_cs, cv).nanmean(-1)
    best = torch.nan_to_num(cv_auc, nan=-1.0).argmax(-1)
    cv_best = cv_auc.gather(1, best[:, None])[:, 0]
    # refit each permutation on all its train rows at its chosen C, score the real test labels
    inv_best = (1 / torch.tensor(Cs, dtype=DTYPE))[best]
    theta, _, _ = _fit_logistic(
        red, Y.to(DTYPE)[None], torch.ones(1, b, m, dtype=DTYPE), inv_best[None], tol, max_iter
    )
    W = red.weights(theta[..., :r])[0]  # [b, d] in standardised space
    scores = ((X_test.to(DTYPE) - mean) / scale) @ W.T + theta[0, :, r]
    test_auc = batched_roc_auc(scores.T, y_test[None].expand(b, -1))
    return cv_best, test_auc


def permutation_null(
    X: Float[Tensor, "n H P d"],
    y: Int[Tensor, " n"],
    train: Bool[Tensor, " n"],
    test: Bool[Tensor, " n"],
    valid: Bool[Tensor, "n P"],
    cells: Sequence[tuple[int, int]],
    observed: float,
    n_perm: int = 100,
    Cs: Sequence[float] | None = None,
    chosen_c: Sequence[float] | None = None,
    cv: int = 3,
    seed: int = 0,
    tol: float = 1e-4,
    max_iter: int = 100,
    batch: int = 50,
    names: Sequence[tuple[str, str]] | None = None,
    progress: bool = True,
) -> PermutationNull:
    """Permute the train labels `n_perm` times, refit every candidate cell, re-select, score.

    Args:
        X, y, train, test, valid: as for `fit_probe_grid` (`valid[:, p]`: rows with position p).
        cells: candidate (hook index, position index) pairs, the set the real cell was chosen
            from, in the order ties are broken (hook-major, as `ProbeGrid.best`).
        observed: the real selected cell's test AUC.
        n_perm: permutations.
        Cs: the C grid searched by CV in every permutation (full rule); None holds each cell
            at `chosen_c` (its real-label choice; required then).
        cv: CV folds, as for the grid; folds are redrawn, stratified on the permuted labels.
        seed: seeds the permutations (and nothing of the caller's random state).
        batch: permutations per solve (memory: about batch * len(Cs or [1]) * cv * n_train
            float64s per cell).
        tol, max_iter: the L-BFGS stopping rule, as for the grid.
        names: (hook, position) names of `cells`, kept in the result.
        progress: show a progress bar.

    Returns:
        A `PermutationNull` with the null AUCs, mean, 95th percentile and p-value.

    Example (pure noise: the observed AUC is typical of the null)::

        >>> g = torch.Generator().manual_seed(0)
        >>> X = torch.randn(60, 1, 1, 5, generator=g)
        >>> y = (torch.arange(60) % 2).long()
        >>> train = torch.arange(60) < 40
        >>> null = permutation_null(X, y, train, ~train, torch.ones(60, 1, dtype=torch.bool),
        ...                         [(0, 0)], observed=0.5, n_perm=20, chosen_c=[1.0],
        ...                         progress=False)
        >>> null.n, null.p_value > 0.05
        (20, True)
    """
    if Cs is None and chosen_c is None:
        raise ValueError("give Cs (full C search) or chosen_c (C held per cell)")
    if chosen_c is not None and len(chosen_c) != len(cells):
        raise ValueError(f"chosen_c has {len(chosen_c)} values for {len(cells)} cells")
    y = torch.as_tensor(y).long()
    train, test, valid = (torch.as_tensor(t).bool() for t in (train, test, valid))
    gen = torch.Generator().manual_seed(seed)
    tr = torch.nonzero(train).flatten()
    Y = y.repeat(n_perm, 1)
    for b in range(n_perm):
        Y[b, tr] = y[tr[torch.randperm(len(tr), generator=gen)]]
    cv_all = torch.full((n_perm, len(cells)), torch.nan, dtype=DTYPE)
    test_all = torch.full((n_perm, len(cells)), torch.nan, dtype=DTYPE)
    for j, (h, p) in enumerate(tqdm(cells, desc="permutation null", disable=not progress)):
        rows = torch.nonzero(train & valid[:, p]).flatten()
        trows = torch.nonzero(test & valid[:, p]).flatten()
        if len(rows) < 2 * cv or len(trows) == 0:
            continue
        cs = list(Cs) if Cs is not None else [float(chosen_c[j])]
        if any(np.isnan(c) for c in cs):
            continue  # the real cell was not fitted: it cannot be selected either
        for start in range(0, n_perm, batch):
            sl = slice(start, min(start + batch, n_perm))
            Yb = Y[sl][:, rows] == 1
            # folds stratified on each permutation's labels, seeded per permutation
            folds = torch.stack(
                [
                    stratified_folds(Yb[i].long(), torch.ones(len(rows)), cv, seed + start + i)
                    for i in range(Yb.shape[0])
                ]
            )
            enough = torch.stack([(Yb.sum(1) >= cv), ((~Yb).sum(1) >= cv)]).all(0)
            cv_b, test_b = _cell_null(
                X[rows, h, p], Yb, folds, X[trows, h, p], y[trows] == 1, cs, cv, tol, max_iter
            )
            cv_all[sl, j] = torch.where(enough, cv_b, torch.nan)
            test_all[sl, j] = torch.where(enough, test_b, torch.nan)
    # re-select per permutation: first maximum in the given (hook-major) order
    key = torch.nan_to_num(cv_all, nan=-1.0)
    pick = key.argmax(1)
    null = test_all.gather(1, pick[:, None])[:, 0]
    null = torch.where(torch.isnan(cv_all).all(1), torch.nan, null)
    rule = (
        "train labels permuted; every candidate cell refit; cell re-selected by train CV AUC; "
        + ("C searched over the same grid" if Cs is not None else "C held at the real choice")
    )
    return PermutationNull(
        null_aucs=null.numpy(),
        observed=float(observed),
        rule=rule,
        cells=list(names) if names is not None else [(str(h), str(p)) for h, p in cells],
    )


__all__ = ["DEFAULT_CS", "PermutationNull", "permutation_null"]
