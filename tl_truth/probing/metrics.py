"""ROC AUC (rank based, ties get average ranks), batched over cells, and bootstrap CIs."""

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
    """ROC AUC along the last axis, only over `mask`ed entries; nan where a class is missing."""
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
    """ROC AUC of `scores` for binary `labels` (ties averaged); nan if only one class."""
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
    """Percentile bootstrap (1 - alpha) CI of the ROC AUC, resampling examples."""
    s, y = _as_1d(scores), _as_1d(labels) > 0.5
    gen = torch.Generator().manual_seed(seed)
    aucs = _bootstrap_aucs(s[None, None], y[None], torch.tensor([len(s)]), n_boot, gen)
    lo, hi = _ci(aucs[:, 0, 0], alpha)
    return float(lo), float(hi)


# ---------------------------------------------------------------------------------------------
# Batched L2 logistic regression


def stratified_folds(
    y: Int[Tensor, " n"], mask: Bool[Tensor, " n"], k: int, seed: int = 0
) -> Int[Tensor, " n"]:
    """Fold id in [0, k) for each masked example, -1 elsewhere; classes spread evenly."""
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
