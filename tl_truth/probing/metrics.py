"""Scores of a correctness detector: ROC AUC, bootstrap CIs, and the rejection metrics.

* ROC AUC is rank based (ties get average ranks) and batched over probe cells.
* Bootstrap CIs resample examples; `paired_bootstrap_auc_diff` resamples the *same* examples
  for two methods, which is what a claim "A beats B" needs.
* The prediction-rejection ratio (PRR, LM-Polygraph's main metric) and the risk-coverage curve
  read a score as "abstain on the least confident answers first": see `rejection_curve`.

Convention everywhere: a higher score means "more likely correct"; label 1 = correct.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

# float64 throughout: the solver's line search needs it to reach sklearn's tolerance
DTYPE = torch.float64


# ---------------------------------------------------------------------------------------------
# ROC AUC (rank based, ties get average ranks) and bootstrap CIs


def _tie_ranks(
    scores: Float[Tensor, "*batch m"], keep: Bool[Tensor, "*batch m"]
) -> tuple[Int[Tensor, "*batch m"], Int[Tensor, "*batch m"], Int[Tensor, "*batch m"]]:
    """Sort order of the kept scores, and each entry's tie group [lo, hi) in that order."""
    s = torch.where(keep, torch.nan_to_num(scores.to(DTYPE)), torch.inf)
    srt, order = s.sort(-1)
    srt, s = srt.contiguous(), s.contiguous()
    return order, torch.searchsorted(srt, s), torch.searchsorted(srt, s, right=True)


def batched_roc_auc(
    scores: Float[Tensor, "*batch n"],
    labels: Bool[Tensor, "*batch n"],
    mask: Bool[Tensor, "*batch n"] | None = None,
) -> Float[Tensor, " *batch"]:
    """ROC AUC along the last axis, only over `mask`ed entries; nan where a class is missing.

    Rank based (ties get average ranks), so it equals `sklearn.metrics.roc_auc_score` per row.

    Args:
        scores: [..., n] scores, higher = more likely label 1.
        labels: [..., n] bool labels (broadcast against `scores`).
        mask: [..., n] entries to use (default all).

    Returns:
        [...] float64 AUCs.

    >>> s = torch.tensor([[0.1, 0.4, 0.35, 0.8], [1.0, 2.0, 3.0, 4.0]])
    >>> batched_roc_auc(s, torch.tensor([False, False, True, True])).tolist()
    [0.75, 1.0]
    """
    mask = torch.ones_like(scores, dtype=torch.bool) if mask is None else mask.bool()
    scores, labels, mask = torch.broadcast_tensors(scores, labels.bool(), mask)
    _, lo, hi = _tie_ranks(scores, mask)  # masked entries rank above every real score
    rank = (lo + hi + 1).to(DTYPE) / 2  # 1-based average rank of each tie group
    pos = labels & mask
    n1 = pos.sum(-1).to(DTYPE)
    n0 = (mask & ~labels).sum(-1).to(DTYPE)
    u = (rank * pos).sum(-1) - n1 * (n1 + 1) / 2
    return torch.where((n1 > 0) & (n0 > 0), u / (n1 * n0).clamp_min(1), torch.nan)


def _as_1d(x: Any) -> Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float64)).reshape(-1)


def roc_auc(scores: Any, labels: Any) -> float:
    """ROC AUC of `scores` for binary `labels` (ties averaged); nan if only one class.

    Args:
        scores: n scores (any array-like), higher = more likely label 1.
        labels: n labels, 1 (or True) = positive.

    Returns:
        The AUC as a float.

    >>> roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    0.75
    >>> roc_auc([0.1, 0.2], [1, 1])
    nan
    """
    return float(batched_roc_auc(_as_1d(scores), _as_1d(labels) > 0.5))


def _bootstrap_aucs(
    scores: Float[Tensor, "g c m"],
    labels: Bool[Tensor, "c m"],
    n_valid: Int[Tensor, " c"],
    n_boot: int,
    gen: torch.Generator,
) -> Float[Tensor, "n_boot g c"]:
    """AUC of `n_boot` resamples (with replacement) of each cell's first `n_valid[c]` entries.

    The same resampled examples are used for every score set `g` (e.g. logistic and mean-diff).
    A resample is a count per original example, so its AUC is a weighted Mann-Whitney U over
    the original sort order (cumulative sums, no sort per replicate).
    """
    g, c, m = scores.shape
    out = torch.full((n_boot, g, c), torch.nan, dtype=DTYPE)
    if m == 0 or n_boot == 0:
        return out
    keep = torch.arange(m) < n_valid[:, None]
    order, lo, hi = _tie_ranks(scores, keep.expand(g, c, m))
    pos, neg = (labels & keep).to(DTYPE), (~labels & keep).to(DTYPE)
    chunk = max(1, 2_000_000 // (g * c * m))  # bounds the [chunk, g, c, m] working set
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        draws = (torch.rand(b, c, m, generator=gen, dtype=DTYPE) * n_valid[:, None]).long()
        counts = torch.zeros(b, c, m, dtype=DTYPE).scatter_add_(
            2,
            draws.clamp_max(m - 1),
            keep.expand(b, c, m).to(DTYPE),  # first n_valid draws
        )
        k_neg = torch.gather(
            (counts * neg)[:, None].expand(b, g, c, m), 3, order.expand(b, -1, -1, -1)
        )
        below = F.pad(k_neg.cumsum(-1), (1, 0))  # below[..., j]: negative weight before rank j
        lo_w, hi_w = (
            torch.gather(below, 3, lo.expand(b, -1, -1, -1)),
            torch.gather(below, 3, hi.expand(b, -1, -1, -1)),
        )
        k_pos = (counts * pos)[:, None]
        u = (k_pos * (lo_w + hi_w) / 2).sum(-1)  # ties with negatives count one half
        n1, n0 = k_pos.sum(-1), (counts * neg).sum(-1)[:, None]
        out[start : start + b] = torch.where(
            (n1 > 0) & (n0 > 0), u / (n1 * n0).clamp_min(1), torch.nan
        )
    return out


def _ci(aucs: Float[Tensor, "n_boot ..."], alpha: float) -> tuple[Tensor, Tensor]:
    q = torch.tensor([alpha / 2, 1 - alpha / 2], dtype=DTYPE)
    lo, hi = torch.nanquantile(aucs, q, dim=0)
    return lo, hi


def bootstrap_auc_ci(
    scores: Any, labels: Any, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) CI of the ROC AUC, resampling examples.

    Args:
        scores: n scores.
        labels: n binary labels.
        n_boot: resamples.
        seed: seeds the resampling (the caller's random state is untouched).
        alpha: 0.05 for a 95% interval.

    Returns:
        `(low, high)`; resamples with a single class are left out.

    >>> lo, hi = bootstrap_auc_ci([0.1, 0.4, 0.35, 0.8, 0.7, 0.2], [0, 0, 1, 1, 1, 0], n_boot=200)
    >>> 0.0 <= lo <= roc_auc([0.1, 0.4, 0.35, 0.8, 0.7, 0.2], [0, 0, 1, 1, 1, 0]) <= hi <= 1.0
    True
    """
    s, y = _as_1d(scores), _as_1d(labels) > 0.5
    gen = torch.Generator().manual_seed(seed)
    aucs = _bootstrap_aucs(s[None, None], y[None], torch.tensor([len(s)]), n_boot, gen)
    lo, hi = _ci(aucs[:, 0, 0], alpha)
    return float(lo), float(hi)


def paired_bootstrap_auc_diff(
    a: Any, b: Any, labels: Any, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, tuple[float, float]]:
    """AUC(a) - AUC(b) on the same examples, with a paired percentile bootstrap CI.

    Each replicate resamples examples once and scores both methods on that resample, so the
    CI reflects the difference, not two independent uncertainties.

    Args:
        a: n scores of method A.
        b: n scores of method B, for the same examples.
        labels: n binary labels.
        n_boot: resamples.
        seed: seeds the resampling.
        alpha: 0.05 for a 95% interval.

    Returns:
        `(difference, (low, high))`.

    >>> d, (lo, hi) = paired_bootstrap_auc_diff([0.1, 0.9, 0.8, 0.2], [0.9, 0.1, 0.8, 0.2],
    ...                                          [0, 1, 1, 0], n_boot=200)
    >>> round(d, 3)
    0.75
    """
    sa, sb, y = _as_1d(a), _as_1d(b), _as_1d(labels) > 0.5
    diff = roc_auc(sa, y) - roc_auc(sb, y)
    gen = torch.Generator().manual_seed(seed)
    boot = _bootstrap_aucs(
        torch.stack([sa, sb])[:, None], y[None], torch.tensor([len(y)]), n_boot, gen
    )
    lo, hi = _ci(boot[:, 0, 0] - boot[:, 1, 0], alpha)
    return diff, (float(lo), float(hi))


def _expected_kept_quality(scores: np.ndarray, quality: np.ndarray) -> np.ndarray:
    """Mean quality of the m most confident answers, m = 1..n; ties broken in expectation."""
    order = np.argsort(-scores, kind="stable")
    s, q = scores[order], quality[order]
    n = len(s)
    # Within a tie group every order is equally likely: each member contributes the group mean.
    _, start, counts = np.unique(-s, return_index=True, return_counts=True)
    group_mean = np.repeat(np.add.reduceat(q, start) / counts, counts)
    return np.cumsum(group_mean) / np.arange(1, n + 1)


def rejection_curve(scores: Any, correct: Any) -> tuple[np.ndarray, np.ndarray]:
    """Coverage and accuracy when keeping only the most confident answers.

    Risk is 1 - accuracy (the risk-coverage curve). Entries with a nan score are dropped; ties
    in the score are broken in expectation.

    Args:
        scores: n confidence scores, higher = more likely correct.
        correct: n 0/1 correctness labels.

    Returns:
        `(coverage, accuracy)`, both of length n: keeping the m = 1..n answers with the
        highest score, coverage m / n and their accuracy.

    >>> cov, acc = rejection_curve([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 1])
    >>> [round(float(v), 3) for v in acc]
    [1.0, 1.0, 1.0, 0.75]
    """
    s, q = np.asarray(scores, dtype=float), np.asarray(correct, dtype=float)
    keep = ~np.isnan(s)
    s, q = s[keep], q[keep]
    n = len(s)
    if n == 0:
        return np.zeros(0), np.zeros(0)
    return np.arange(1, n + 1) / n, _expected_kept_quality(s, q)


def accuracy_at_coverage(scores: Any, correct: Any, coverage: float = 0.8) -> float:
    """Accuracy of the ceil(coverage * n) most confident answers (nan if there are none).

    Args:
        scores: n confidence scores, higher = more likely correct.
        correct: n 0/1 correctness labels.
        coverage: the fraction of answers kept.

    Returns:
        The accuracy of the kept answers.

    >>> accuracy_at_coverage([0.9, 0.8, 0.1, 0.2, 0.7], [1, 1, 0, 0, 1], coverage=0.6)
    1.0
    """
    cov, acc = rejection_curve(scores, correct)
    if len(acc) == 0:
        return float("nan")
    m = max(1, int(np.ceil(coverage * len(acc) - 1e-9)))
    return float(acc[m - 1])


def prediction_rejection_ratio(scores: Any, correct: Any) -> float:
    """PRR: how much of the oracle's gain from rejecting answers the score achieves.

    The area under the accuracy-vs-rejection curve (reject the least confident first, from 0
    to n - 1 rejected) for the score, minus that of a random order (the base accuracy at every
    rejection rate), divided by the same for the oracle (rejects every wrong answer first).
    This is LM-Polygraph's `PredictionRejectionArea` ratio with a 0/1 quality, ties in the
    score broken in expectation.

    Args:
        scores: n confidence scores, higher = more likely correct (nan entries dropped).
        correct: n 0/1 correctness labels.

    Returns:
        1 = oracle, 0 = random, < 0 worse than random; nan when all answers are right or all
        wrong.

    >>> prediction_rejection_ratio([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0])
    1.0
    >>> round(prediction_rejection_ratio([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]), 6)
    -1.0
    """
    s, q = np.asarray(scores, dtype=float), np.asarray(correct, dtype=float)
    keep = ~np.isnan(s)
    s, q = s[keep], q[keep]
    if len(q) == 0 or q.min() == q.max():
        return float("nan")
    area = _expected_kept_quality(s, q).mean()
    oracle = _expected_kept_quality(q, q).mean()
    rnd = q.mean()
    return float((area - rnd) / (oracle - rnd))


def within_group_auc(scores: Any, labels: Any, groups: Any) -> tuple[float, int, int]:
    """AUC over pairs (one positive, one negative) that share a group; ties count one half.

    With groups = normalised exact answers, answer identity cannot separate any pair.

    Args:
        scores: n scores (nan entries dropped).
        labels: n binary labels.
        groups: n hashable group keys.

    Returns:
        `(auc, n_pairs, n_groups)`, n_groups counting groups with at least one pair; the AUC is
        nan when there is no pair.

    >>> within_group_auc([0.9, 0.1, 0.4, 0.6], [1, 0, 1, 0], ["a", "a", "b", "b"])
    (0.5, 2, 2)
    """
    s, y = np.asarray(scores, dtype=float), np.asarray(labels, dtype=float) > 0.5
    g = np.asarray(groups, dtype=object)
    u = pairs = 0.0
    n_groups = 0
    for key in dict.fromkeys(g.tolist()):
        at = (g == key) & ~np.isnan(s)
        pos, neg = s[at & y], s[at & ~y]
        if len(pos) == 0 or len(neg) == 0:
            continue
        n_groups += 1
        diff = pos[:, None] - neg[None, :]
        u += float((diff > 0).sum() + 0.5 * (diff == 0).sum())
        pairs += diff.size
    return (u / pairs if pairs else float("nan")), int(pairs), n_groups


# ---------------------------------------------------------------------------------------------
# Folds


def stratified_folds(
    y: Int[Tensor, " n"], mask: Bool[Tensor, " n"], k: int, seed: int = 0
) -> Int[Tensor, " n"]:
    """Fold id in [0, k) for each masked example, -1 elsewhere; classes spread evenly.

    Args:
        y: [n] 0/1 labels.
        mask: [n] the examples to assign.
        k: number of folds.
        seed: seeds the shuffle within each class.

    Returns:
        [n] int64 fold ids (-1 outside `mask`); a class with >= k members hits every fold.

    >>> folds = stratified_folds(torch.tensor([0, 0, 0, 1, 1, 1, 1]),
    ...                          torch.tensor([True] * 6 + [False]), k=3)
    >>> folds[-1].item(), sorted(folds[:3].tolist()), sorted(folds[3:6].tolist())
    (-1, [0, 1, 2], [0, 1, 2])
    """
    gen = torch.Generator().manual_seed(seed)
    fold = torch.full((len(y),), -1, dtype=torch.long)
    order = []
    for cls in (0, 1):
        idx = torch.nonzero(mask.bool() & (y == cls)).flatten()
        order.append(idx[torch.randperm(len(idx), generator=gen)])
    # Class 0 then class 1, dealt round-robin: each class with >= k members hits every fold.
    order = torch.cat(order)
    fold[order] = torch.arange(len(order)) % k
    return fold
