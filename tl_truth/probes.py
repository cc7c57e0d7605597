"""Probes: linear read-outs of "is this answer correct?" from residual-stream activations.

Every probe (geometry-of-truth style) has `from_data`, `predict` and `direction`. Two kinds:

* `logistic`: L2 logistic regression on standardised features, C chosen by stratified k-fold
  CV ROC AUC on the training data only, then refitted on all of it. The objective is
  scikit-learn's, `C * sum(logloss) + ||w||^2 / 2` with an unpenalised intercept, so results
  agree with `LogisticRegression(C=C)` on the same standardised data.
* `mean_diff`: direction `mean(X[y=1]) - mean(X[y=0])` in raw space, score = projection,
  threshold halfway between the class means.

Label convention: 1 = the model's answer is correct, so a higher score means "more likely correct".

`fit_probe_grid` fits every (hook, position) cell at once: per-cell standardisation, an exact
reduction of each cell's training rows to their span (eigh of the Gram matrix; L2-regularised
weights always lie in that span, and the reduced features are orthogonal, which gives L-BFGS a
near-exact diagonal preconditioner), then one batched L-BFGS over every (cell, C, fold) problem.
Probes are saved as `.safetensors` + `.json`; nothing is ever pickled.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

from tl_truth.models import ModelInfo

ProbeKind = Literal["logistic", "mean_diff"]
DEFAULT_CS: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
LABEL_MEANING = "1 = answer correct, 0 = answer wrong"
STD_FLOOR = 1e-6
PROBE_VERSION = 1
DTYPE = torch.float64  # the optimiser's line search needs float64 to reach sklearn's tolerance


class ProbeMismatchError(ValueError):
    """A probe is applied to activations it was not trained on (other model, hook, position...)."""


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


@dataclass
class _Reduced:
    """Rows of standardised features X expressed in an orthogonal basis of their span.

    `Z = X @ V` with orthonormal `V` ([d, r]), so `Z @ v = X @ (V @ v)` and `|V v| = |v|`:
    fitting on Z with the same L2 penalty is exactly fitting on X.
    """

    Z: Float[Tensor, "c m r"]
    left: Float[Tensor, "c q r"]  # V itself ([c, d, r]), or U / sqrt(lambda) ([c, m, r])
    X: Float[Tensor, "c m d"] | None  # set when V = X^T U / sqrt(lambda) (Gram route)

    def weights(self, v: Float[Tensor, "c k r"]) -> Float[Tensor, "c k d"]:
        if self.X is None:
            return torch.bmm(v, self.left.transpose(1, 2))
        return torch.bmm(torch.bmm(v, self.left.transpose(1, 2)), self.X)


def _reduce(X: Float[Tensor, "c m d"]) -> _Reduced:
    c, m, d = X.shape
    if m <= d:  # more features than rows: work in row space via the m x m Gram matrix
        lam, U = torch.linalg.eigh(torch.bmm(X, X.transpose(1, 2)))
    else:
        lam, U = torch.linalg.eigh(torch.bmm(X.transpose(1, 2), X))
    keep = lam > lam[:, -1:].clamp_min(0) * 1e-10
    lam = torch.where(keep, lam, torch.zeros_like(lam))
    if m <= d:
        inv = torch.where(keep, lam.clamp_min(1e-300).rsqrt(), torch.zeros_like(lam))
        return _Reduced(U * lam.sqrt()[:, None], U * inv[:, None], X)
    U = U * keep[:, None]
    return _Reduced(torch.bmm(X, U), U, None)


def _two_loop(
    g: Float[Tensor, "c k p"], hist: list[tuple[Tensor, Tensor, Tensor]], h0: Float[Tensor, "c k p"]
) -> Float[Tensor, "c k p"]:
    """L-BFGS inverse-Hessian product, independently for every problem (dots over the last dim)."""
    q = g.clone()
    alphas = []
    for s, y, rho in reversed(hist):
        a = rho * (s * q).sum(-1)
        q -= a[..., None] * y
        alphas.append(a)
    if hist:  # scale the diagonal preconditioner by the latest curvature (Liu & Nocedal)
        s, y, _ = hist[-1]
        sy, yhy = (s * y).sum(-1), (y * h0 * y).sum(-1)
        q *= torch.where((sy > 0) & (yhy > 0), sy / yhy.clamp_min(1e-300), 1.0)[..., None]
    q *= h0
    for (s, y, rho), a in zip(hist, reversed(alphas), strict=True):
        q += (a - rho * (y * q).sum(-1))[..., None] * s
    return q


def _fit_logistic(
    red: _Reduced,
    y: Float[Tensor, "c k m"],
    w: Float[Tensor, "c k m"],
    inv_c: Float[Tensor, "c k"],
    tol: float = 1e-4,
    max_iter: int = 500,
    history: int = 10,
) -> tuple[Float[Tensor, "c k r1"], Bool[Tensor, "c k"], int]:
    """Minimise, for every (cell, problem), sklearn's L2 logistic objective divided by C*sum(w):

    `sum_i w_i logloss_i / sum(w) + |v|^2 / (2 C sum(w))`, intercept unpenalised, by batched
    L-BFGS with per-problem line search, stopping at max|grad| <= tol (sklearn's criterion).
    Returns theta = [v, b], a converged mask and the iteration count.
    """
    Z = red.Z
    c, m, r = Z.shape
    k = y.shape[1]
    sw = w.sum(-1).clamp_min(1.0)
    lam = inv_c / sw
    Zt = Z.transpose(1, 2)

    def loss_grad(theta: Tensor) -> tuple[Tensor, Tensor]:
        v, b = theta[..., :r], theta[..., r:]
        z = torch.baddbmm(b, v, Zt)
        f = (w * (F.softplus(z) - y * z)).sum(-1) / sw + 0.5 * lam * (v * v).sum(-1)
        resid = w * (torch.sigmoid(z) - y) / sw[..., None]
        gv = torch.bmm(resid, Z) + lam[..., None] * v
        return f, torch.cat([gv, resid.sum(-1, keepdim=True)], -1)

    # Inverse diagonal of the Hessian at theta = 0 (p = 1/2); Z's columns are orthogonal, so
    # for the full-data problem this is the exact initial Hessian.
    hess_v = 0.25 * torch.bmm(w, Z * Z) / sw[..., None] + lam[..., None]
    h0 = 1 / torch.cat([hess_v, torch.full((c, k, 1), 0.25, dtype=Z.dtype)], -1)

    theta = torch.zeros(c, k, r + 1, dtype=Z.dtype)
    f, g = loss_grad(theta)
    hist: list[tuple[Tensor, Tensor, Tensor]] = []
    stalled = torch.zeros(c, k, dtype=torch.bool)
    n_iter = 0
    while n_iter < max_iter:
        done = (g.abs().amax(-1) <= tol) | stalled
        if done.all():
            break
        n_iter += 1
        p = -_two_loop(g, hist, h0)
        gp = (g * p).sum(-1)
        uphill = gp >= 0  # lost curvature information: restart with the preconditioned gradient
        p = torch.where(uphill[..., None], -h0 * g, p).masked_fill(done[..., None], 0.0)
        gp = (g * p).sum(-1)
        step = torch.ones_like(f)
        for _ in range(40):  # Armijo backtracking, independently per problem
            new = theta + step[..., None] * p
            f_new, g_new = loss_grad(new)
            ok = (f_new <= f + 1e-4 * step * gp) | done
            if ok.all():
                break
            step = torch.where(ok, step, step / 2)
        stalled |= ~ok
        new = torch.where(ok[..., None], new, theta)
        f_new = torch.where(ok, f_new, f)
        g_new = torch.where(ok[..., None], g_new, g)
        s, yk = new - theta, g_new - g
        sy = (s * yk).sum(-1)
        hist.append((s, yk, torch.where(sy > 1e-300, 1 / sy.clamp_min(1e-300), 0.0)))
        hist = hist[-history:]
        theta, f, g = new, f_new, g_new
    converged = (g.abs().amax(-1) <= tol) & ~stalled
    return theta, converged, n_iter


# ---------------------------------------------------------------------------------------------
# Fitting a batch of cells (shared by Probe.from_data and fit_probe_grid)


@dataclass
class _CellFits:
    mean: Float[Tensor, "c d"]
    scale: Float[Tensor, "c d"]
    weight: Float[Tensor, "c d"]  # logistic, standardised space
    bias: Float[Tensor, " c"]
    weight_shuffled: Float[Tensor, "c d"]
    bias_shuffled: Float[Tensor, " c"]
    md_weight: Float[Tensor, "c d"]  # mean-diff, same standardised parametrisation
    md_bias: Float[Tensor, " c"]
    c_index: Int[Tensor, " c"]
    cv_auc: Float[Tensor, "c n_cs"]
    fitted: Bool[Tensor, " c"]  # enough examples of both classes for CV
    has_classes: Bool[Tensor, " c"]  # at least one example of each class (mean-diff)
    converged: Bool[Tensor, " c"]


def _standardise_stats(
    X: Float[Tensor, "c m d"], rows: Bool[Tensor, "c m"]
) -> tuple[Float[Tensor, "c d"], Float[Tensor, "c d"]]:
    wt = rows.to(X.dtype)[..., None]
    n = wt.sum(1).clamp_min(1.0)
    mean = (X * wt).sum(1) / n
    var = (((X - mean[:, None]) ** 2) * wt).sum(1) / n
    return mean, var.sqrt().clamp_min(STD_FLOOR)


def _mean_diff(
    X: Float[Tensor, "c m d"], y: Bool[Tensor, "c m"], rows: Bool[Tensor, "c m"], mean, scale
) -> tuple[Float[Tensor, "c d"], Float[Tensor, " c"]]:
    """Mean-diff probe written as standardised-space (weight, bias): decision = (x - mid).diff."""
    pos, neg = (rows & y).to(X.dtype), (rows & ~y).to(X.dtype)
    mu1 = torch.einsum("cm,cmd->cd", pos, X) / pos.sum(1, keepdim=True).clamp_min(1.0)
    mu0 = torch.einsum("cm,cmd->cd", neg, X) / neg.sum(1, keepdim=True).clamp_min(1.0)
    diff = mu1 - mu0
    return diff * scale, -(((mu1 + mu0) / 2 - mean) * diff).sum(-1)


def _cv_choose_c(
    red: _Reduced,
    y: Bool[Tensor, "c m"],
    fold: Int[Tensor, "c m"],
    rows: Bool[Tensor, "c m"],
    Cs: Sequence[float],
    cv: int,
    tol: float,
    max_iter: int,
) -> tuple[Int[Tensor, " c"], Float[Tensor, "c n_cs"], Bool[Tensor, " c"]]:
    """Every (C, fold) problem of every cell in one solve; the C with the best mean fold AUC."""
    c, m, r = red.Z.shape
    n_cs = len(Cs)
    fold_of = torch.arange(cv).repeat(n_cs)  # problem j = ci * cv + f
    inv_c = (1 / torch.tensor(Cs, dtype=DTYPE)).repeat_interleave(cv).expand(c, -1)
    fit_rows = rows[:, None] & (fold[:, None] != fold_of[None, :, None])
    yk = y.to(DTYPE)[:, None].expand(c, n_cs * cv, m)
    theta, converged, _ = _fit_logistic(red, yk, fit_rows.to(DTYPE), inv_c, tol, max_iter)
    logits = torch.baddbmm(theta[..., r:], theta[..., :r], red.Z.transpose(1, 2))
    held_out = rows[:, None] & (fold[:, None] == fold_of[None, :, None])
    cv_auc = batched_roc_auc(logits, y[:, None], held_out).reshape(c, n_cs, cv).nanmean(-1)
    c_index = torch.nan_to_num(cv_auc, nan=-1.0).argmax(-1)  # first best = smallest C on ties
    return c_index, cv_auc, converged.all(-1)


def _refit(
    red: _Reduced,
    targets: list[Bool[Tensor, "c m"]],
    rows: Bool[Tensor, "c m"],
    inv_c: Float[Tensor, " c"],
    tol: float,
    max_iter: int,
) -> tuple[Float[Tensor, "c t d"], Float[Tensor, "c t"], Bool[Tensor, " c"]]:
    """Fit each label set in `targets` on all rows at the given C; standardised-space weights."""
    c, m, r = red.Z.shape
    t = len(targets)
    y = torch.stack(targets, 1).to(DTYPE)
    w = rows[:, None].expand(c, t, m).to(DTYPE)
    theta, converged, _ = _fit_logistic(red, y, w, inv_c[:, None].expand(c, t), tol, max_iter)
    return red.weights(theta[..., :r]), theta[..., r], converged.all(-1)


def _fit_cells(
    X: Float[Tensor, "c m d"],
    y: Bool[Tensor, "c m"],
    fold: Int[Tensor, "c m"],
    Cs: Sequence[float],
    cv: int,
    y_shuffled: Bool[Tensor, "c m"] | None = None,
    kind: ProbeKind = "logistic",
    tol: float = 1e-4,
    max_iter: int = 500,
) -> _CellFits:
    """Fit mean-diff and, for kind="logistic", logistic (CV over Cs, refit) for each cell,
    plus the same probe on `y_shuffled` (the control; logistic reuses the real labels' C).

    Rows with `fold < 0` are padding.
    """
    c = X.shape[0]
    rows = fold >= 0
    X = torch.where(rows[..., None], X.to(DTYPE), 0.0)  # padding rows may hold NaN
    n_pos, n_neg = (rows & y).sum(1), (rows & ~y).sum(1)
    fitted = (n_pos >= cv) & (n_neg >= cv)
    has_classes = (n_pos > 0) & (n_neg > 0)
    mean, scale = _standardise_stats(X, rows)
    md_weight, md_bias = _mean_diff(X, y, rows, mean, scale)
    ys = y if y_shuffled is None else y_shuffled
    common = dict(mean=mean, scale=scale, md_weight=md_weight, md_bias=md_bias)
    if kind == "mean_diff":
        w_shuf, b_shuf = _mean_diff(X, ys, rows, mean, scale)
        return _CellFits(
            weight=md_weight,
            bias=md_bias,
            weight_shuffled=w_shuf,
            bias_shuffled=b_shuf,
            c_index=torch.zeros(c, dtype=torch.long),
            cv_auc=torch.full((c, len(Cs)), torch.nan, dtype=DTYPE),
            fitted=has_classes,
            has_classes=has_classes,
            converged=torch.ones(c, dtype=torch.bool),
            **common,
        )
    X.sub_(mean[:, None]).div_(scale[:, None]).mul_(rows[..., None])  # in place: X is a copy
    red = _reduce(X)
    rows = rows & fitted[:, None]  # unfit cells get zero sample weight: they converge at once
    c_index, cv_auc, conv_cv = _cv_choose_c(red, y, fold, rows, Cs, cv, tol, max_iter)
    inv_c = 1 / torch.tensor(Cs, dtype=DTYPE)[c_index]
    W, b, conv = _refit(red, [y] if y_shuffled is None else [y, ys], rows, inv_c, tol, max_iter)
    return _CellFits(
        weight=W[:, 0],
        bias=b[:, 0],
        weight_shuffled=W[:, -1],
        bias_shuffled=b[:, -1],
        c_index=c_index,
        cv_auc=cv_auc,
        fitted=fitted,
        has_classes=has_classes,
        converged=conv_cv & conv,
        **common,
    )


# ---------------------------------------------------------------------------------------------
# A single probe


def _layer_of(hook: str | None) -> int | None:
    m = re.match(r"blocks\.(\d+)\.", hook or "")
    return int(m.group(1)) if m else None


def _info_dict(model: ModelInfo | dict | None) -> dict | None:
    if model is None:
        return None
    return model.to_dict() if isinstance(model, ModelInfo) else dict(model)


def _model_info(d: dict) -> ModelInfo:
    names = ModelInfo.__dataclass_fields__
    return ModelInfo(**{k: d.get(k) for k in names})


def _tensor(x: Any) -> Tensor:
    return x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))


@dataclass(eq=False)
class Probe:
    """A linear probe: `decision = ((x - mean) / scale) @ weight + bias`; > 0 means "correct"."""

    kind: ProbeKind
    weight: Float[Tensor, " d"]  # standardised space (mean-diff: diff * scale, same formula)
    bias: float
    mean: Float[Tensor, " d"]  # standardisation fitted on the training data
    scale: Float[Tensor, " d"]
    hook: str | None = None
    layer: int | None = None
    position: str | None = None
    C: float | None = None  # chosen L2 strength (sklearn's C); None for mean_diff
    model: dict | None = None  # ModelInfo.to_dict() of the model that produced the activations
    metadata: dict = field(default_factory=dict)

    @classmethod
    def from_data(
        cls,
        X: Float[Tensor, "n d"],
        y: Int[Tensor, " n"],
        kind: ProbeKind = "logistic",
        Cs: Sequence[float] = DEFAULT_CS,
        cv: int = 3,
        seed: int = 0,
        hook: str | None = None,
        layer: int | None = None,
        position: str | None = None,
        model: ModelInfo | dict | None = None,
        tol: float = 1e-4,
        max_iter: int = 500,
    ) -> Probe:
        """Fit on (X, y) only: standardise, choose C by stratified CV AUC, refit on everything."""
        X, y = _tensor(X).to(DTYPE), _tensor(y).long()
        if X.ndim != 2 or y.shape != (X.shape[0],):
            raise ValueError(f"X must be [n, d] and y [n], got {tuple(X.shape)}, {tuple(y.shape)}")
        if not bool(((y == 0) | (y == 1)).all()):
            raise ValueError(f"y must be 0/1 ({LABEL_MEANING})")
        if kind not in ("logistic", "mean_diff"):
            raise ValueError(f"kind must be 'logistic' or 'mean_diff', got {kind!r}")
        n_pos, n_neg = int(y.sum()), int((1 - y).sum())
        need = cv if kind == "logistic" else 1
        if min(n_pos, n_neg) < need:
            raise ValueError(
                f"need at least {need} examples of each class, got {n_pos} correct, {n_neg} wrong"
            )
        info = _info_dict(model)
        if info is not None and info.get("d_model") not in (None, X.shape[1]):
            raise ValueError(f"X has d={X.shape[1]} but model d_model={info['d_model']}")
        meta = {
            "n_train": len(y),
            "n_correct": n_pos,
            "n_wrong": n_neg,
            "label": LABEL_MEANING,
            "cv": cv,
            "seed": seed,
        }
        fold = stratified_folds(y, torch.ones_like(y, dtype=torch.bool), cv, seed)
        fits = _fit_cells(
            X[None], (y == 1)[None], fold[None], Cs, cv, kind=kind, tol=tol, max_iter=max_iter
        )
        common = dict(
            mean=fits.mean[0],
            scale=fits.scale[0],
            hook=hook,
            position=position,
            layer=_layer_of(hook) if layer is None else layer,
            model=info,
        )
        if kind == "mean_diff":
            return cls(kind, fits.weight[0], float(fits.bias[0]), metadata=meta, **common)
        if not bool(fits.converged[0]):
            warnings.warn("logistic probe did not converge; raise max_iter", stacklevel=2)
        meta |= {
            "Cs": [float(x) for x in Cs],
            "cv_auc": [float(x) for x in fits.cv_auc[0]],
            "tol": tol,
            "converged": bool(fits.converged[0]),
        }
        C = float(Cs[int(fits.c_index[0])])
        return cls(kind, fits.weight[0], float(fits.bias[0]), C=C, metadata=meta, **common)

    @property
    def d_model(self) -> int:
        return int(self.weight.shape[0])

    def decision_function(self, X: Float[Tensor, "*batch d"]) -> Float[Tensor, " *batch"]:
        """Signed score; > 0 predicts "correct". Mean-diff scores are raw projections."""
        X = _tensor(X)
        if X.shape[-1] != self.d_model:
            raise ProbeMismatchError(f"d_model: probe has {self.d_model}, input has {X.shape[-1]}")
        X = X.to(self.weight.dtype)  # on X's device: activations may live on the GPU
        w, mean, scale = (t.to(X.device) for t in (self.weight, self.mean, self.scale))
        return ((X - mean) / scale) @ w + self.bias

    def predict_proba(self, X: Float[Tensor, "*batch d"]) -> Float[Tensor, " *batch"]:
        """P(answer correct). Calibrated for logistic; for mean_diff only a monotone squashing."""
        return torch.sigmoid(self.decision_function(X))

    def predict(self, X: Float[Tensor, "*batch d"]) -> Int[Tensor, " *batch"]:
        return (self.decision_function(X) > 0).long()

    @property
    def direction(self) -> Float[Tensor, " d"]:
        """Unit vector in raw activation space; a larger projection means more likely correct."""
        raw = self.weight / self.scale
        return raw / raw.norm().clamp_min(1e-300)

    def check_compatible(
        self,
        model: ModelInfo | dict | None = None,
        hook: str | None = None,
        position: str | None = None,
    ) -> None:
        """Raise ProbeMismatchError listing everything that differs from the probe's training."""
        problems = []
        given = _info_dict(model)
        if given is not None and self.model is not None:
            mine, theirs = _model_info(self.model), _model_info(given)
            problems += [f"{p} (probe != given)" for p in mine.differences(theirs)]
        elif given is not None and given.get("d_model") not in (None, self.d_model):
            problems.append(f"d_model: {self.d_model} != {given['d_model']} (probe != given)")
        if hook is not None and hook != self.hook:
            problems.append(f"hook: {self.hook!r} != {hook!r} (probe != given)")
        if position is not None and position != self.position:
            problems.append(f"position: {self.position!r} != {position!r} (probe != given)")
        if problems:
            raise ProbeMismatchError(
                "probe does not match these activations: " + "; ".join(problems)
            )

    def save(self, path: str | Path) -> tuple[Path, Path]:
        """Write `path.safetensors` (weight, mean, scale, bias) and `path.json` (the rest)."""
        _paths(path)[0].parent.mkdir(parents=True, exist_ok=True)
        tensors = {
            "weight": self.weight.contiguous(),
            "mean": self.mean.contiguous(),
            "scale": self.scale.contiguous(),
            "bias": torch.tensor([self.bias], dtype=torch.float64),
        }
        meta = {
            "format": "tl_truth.probe",
            "version": PROBE_VERSION,
            "kind": self.kind,
            "hook": self.hook,
            "layer": self.layer,
            "position": self.position,
            "C": self.C,
            "model": self.model,
            "metadata": self.metadata,
        }
        st, js = _paths(path)
        save_file(tensors, str(st))
        js.write_text(json.dumps(meta, indent=2))
        return st, js

    @classmethod
    def load(
        cls,
        path: str | Path,
        expect_model: ModelInfo | dict | None = None,
        expect_hook: str | None = None,
        expect_position: str | None = None,
    ) -> Probe:
        st, js = _paths(path)
        meta = json.loads(js.read_text())
        if meta.get("format") != "tl_truth.probe":
            raise ValueError(f"{js} is not a tl_truth probe")
        t = load_file(str(st))
        probe = cls(
            kind=meta["kind"],
            weight=t["weight"],
            bias=float(t["bias"][0]),
            mean=t["mean"],
            scale=t["scale"],
            hook=meta["hook"],
            layer=meta["layer"],
            position=meta["position"],
            C=meta["C"],
            model=meta["model"],
            metadata=meta["metadata"],
        )
        probe.check_compatible(expect_model, expect_hook, expect_position)
        return probe


def _paths(path: str | Path) -> tuple[Path, Path]:
    """(x.safetensors, x.json) for x, x.json or x.safetensors; dots inside x are kept."""
    p = Path(path)
    base = p.with_suffix("") if p.suffix in (".json", ".safetensors") else p
    return base.parent / f"{base.name}.safetensors", base.parent / f"{base.name}.json"


# ---------------------------------------------------------------------------------------------
# The (hook, position) grid


@dataclass(eq=False)
class ProbeGrid:
    """Test metrics and fitted probes for every (hook, position) cell; arrays are [H, P].

    `auc`, `auc_ci_*`, `auc_shuffled`, `C` and `weight` are for the grid's `kind` of probe;
    `auc_mean_diff` and `md_*` are always the mean-diff probe's. Unfittable cells are nan.
    """

    hooks: list[str]
    positions: list[str]
    layers: list[int | None]  # from "blocks.{layer}."; None for other hooks
    kind: ProbeKind
    auc: np.ndarray
    auc_ci_low: np.ndarray
    auc_ci_high: np.ndarray
    auc_shuffled: np.ndarray
    auc_mean_diff: np.ndarray
    md_ci_low: np.ndarray
    md_ci_high: np.ndarray
    n_train: np.ndarray
    n_test: np.ndarray
    C: np.ndarray  # chosen C; nan for mean_diff grids and unfitted cells
    cv_auc: np.ndarray  # [H, P] train CV AUC at the chosen C: select cells with this, not test
    cv_auc_per_c: np.ndarray  # [H, P, n_Cs] mean fold AUC of each C
    fitted: np.ndarray  # bool: the grid's kind of probe exists for this cell
    md_fitted: np.ndarray
    weight: Float[Tensor, "H P d"]
    bias: Float[Tensor, "H P"]
    mean: Float[Tensor, "H P d"]
    scale: Float[Tensor, "H P d"]
    md_weight: Float[Tensor, "H P d"]
    md_bias: Float[Tensor, "H P"]
    model: dict | None = None
    metadata: dict = field(default_factory=dict)

    def _cell(self, hook: str, position: str) -> tuple[int, int]:
        if hook not in self.hooks:
            raise KeyError(f"unknown hook {hook!r}; grid has {self.hooks}")
        if position not in self.positions:
            raise KeyError(f"unknown position {position!r}; grid has {self.positions}")
        return self.hooks.index(hook), self.positions.index(position)

    def probe(self, hook: str, position: str, kind: ProbeKind | None = None) -> Probe:
        """The fitted probe of one cell, ready to apply or save."""
        kind = kind or self.kind
        h, p = self._cell(hook, position)
        if kind == "logistic" and self.kind != "logistic":
            raise ValueError("this grid fitted mean_diff probes only (kind='mean_diff')")
        md = kind == "mean_diff"
        if not (self.md_fitted if md else self.fitted)[h, p]:
            raise ValueError(f"cell ({hook}, {position}) had too few examples for a {kind} probe")
        meta = {
            "n_train": int(self.n_train[h, p]),
            "n_test": int(self.n_test[h, p]),
            "label": LABEL_MEANING,
            "test_auc": float((self.auc_mean_diff if md else self.auc)[h, p]),
            **{k: self.metadata[k] for k in ("cv", "seed") if k in self.metadata},
        }
        common = dict(
            mean=self.mean[h, p].clone(),
            scale=self.scale[h, p].clone(),
            hook=hook,
            layer=self.layers[h],
            position=position,
            model=self.model,
        )
        if md:
            w, b = self.md_weight[h, p].clone(), float(self.md_bias[h, p])
            return Probe("mean_diff", w, b, metadata=meta, **common)
        meta |= {"Cs": self.metadata["Cs"], "cv_auc": [float(x) for x in self.cv_auc_per_c[h, p]]}
        w, b = self.weight[h, p].clone(), float(self.bias[h, p])
        return Probe("logistic", w, b, C=float(self.C[h, p]), metadata=meta, **common)

    def to_dataframe(self):
        """Long format, one row per cell."""
        import pandas as pd

        H, P = self.auc.shape
        hh, pp = (a.ravel() for a in np.meshgrid(np.arange(H), np.arange(P), indexing="ij"))
        return pd.DataFrame(
            {
                "hook": [self.hooks[i] for i in hh],
                "layer": [self.layers[i] for i in hh],
                "position": [self.positions[j] for j in pp],
                "auc": self.auc.ravel(),
                "ci_low": self.auc_ci_low.ravel(),
                "ci_high": self.auc_ci_high.ravel(),
                "auc_shuffled": self.auc_shuffled.ravel(),
                "auc_mean_diff": self.auc_mean_diff.ravel(),
                "n_train": self.n_train.ravel(),
                "n_test": self.n_test.ravel(),
                "C": self.C.ravel(),
            }
        )

    def _values(self, kind: str) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(AUC, CI low, CI high) for "auc"/the grid's kind, "mean_diff" or "shuffled"."""
        if kind in ("auc", self.kind):
            return self.auc, self.auc_ci_low, self.auc_ci_high
        if kind in ("mean_diff", "auc_mean_diff"):
            return self.auc_mean_diff, self.md_ci_low, self.md_ci_high
        if kind in ("shuffled", "auc_shuffled"):
            return self.auc_shuffled, None, None
        raise ValueError(f"kind must be 'auc', {self.kind!r}, 'mean_diff' or 'shuffled'")

    def best(
        self, kind: str | None = None, by: str = "cv", positions: Sequence[str] | None = None
    ) -> dict:
        """The best cell and its test AUC with the 95% CI.

        `by="cv"` (default) chooses by the train cross-validation AUC, so the reported test AUC
        is an honest estimate; `by="test"` picks the highest test AUC, which is optimistic.
        Mean-difference probes have no CV score and are always chosen by test AUC.
        `positions` restricts the choice to some positions.
        """
        kind = kind or self.kind
        values, lo, hi = self._values(kind)
        key = np.asarray(self.cv_auc, dtype=float) if by == "cv" and kind == "logistic" else values
        if by not in ("cv", "test"):
            raise ValueError(f"by must be 'cv' or 'test', got {by!r}")
        cols = (
            [self.positions.index(p) for p in positions]
            if positions
            else range(len(self.positions))
        )
        cols = list(cols)
        sub = key[:, cols]
        if np.isnan(sub).all():
            raise ValueError("no cell has a score (too few examples everywhere)")
        h, c = np.unravel_index(np.nanargmax(sub), sub.shape)
        p = cols[c]
        return {
            "hook": self.hooks[h],
            "layer": self.layers[h],
            "position": self.positions[p],
            "auc": float(values[h, p]),
            "ci": None if lo is None else (float(lo[h, p]), float(hi[h, p])),
            "selected_by": "train_cv_auc" if key is not values else "test_auc",
        }

    def plot(self, ax: Any = None, kind: str = "auc", cmap: str = "viridis"):
        """Heatmap of test AUC, layers (rows) x positions (columns), with a colorbar.

        Returns the matplotlib Axes (its `.figure` is the figure).
        """
        import matplotlib.pyplot as plt

        values = self._values(kind)[0]
        if ax is None:
            size = (1.5 + 0.45 * len(self.positions), 1.5 + 0.22 * len(self.hooks))
            _, ax = plt.subplots(figsize=size)
        im = ax.imshow(values, aspect="auto", origin="lower", cmap=cmap, vmin=0.5, vmax=1.0)
        labels = [
            h if la is None else str(la) for la, h in zip(self.layers, self.hooks, strict=True)
        ]
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xticks(range(len(self.positions)), self.positions, rotation=60, ha="right")
        ax.set_ylabel("layer" if None not in self.layers else "hook")
        ax.set_xlabel("position")
        ax.set_title(f"test ROC AUC ({self.kind if kind == 'auc' else kind})")
        ax.figure.colorbar(im, ax=ax, label="ROC AUC")
        return ax


@dataclass
class _GridData:
    """What every chunk of cells needs: activations, labels and per-position row selections."""

    X: Float[Tensor, "n H P d"]
    y: Int[Tensor, " n"]
    y_shuffled: Int[Tensor, " n"]
    folds: Int[Tensor, "P n"]  # stratified fold of each train example valid at the position
    train_order: Int[Tensor, "P n"]  # per position: the valid train examples first
    n_train: Int[Tensor, " P"]
    test_order: Int[Tensor, "P n"]
    n_test: Int[Tensor, " P"]


def _compact(rows: Bool[Tensor, "P n"]) -> tuple[Int[Tensor, "P n"], Int[Tensor, " P"]]:
    """Per position: indices of the selected examples first (in order), and how many."""
    return torch.sort((~rows).to(torch.uint8), dim=1, stable=True).indices, rows.sum(1)


def _grid_data(X, y, train, test, valid, cv: int, gen: torch.Generator, seed: int) -> _GridData:
    # One permutation of the train labels, shared by every cell's shuffled control.
    y_shuffled = y.clone()
    tr = torch.nonzero(train).flatten()
    y_shuffled[tr] = y[tr[torch.randperm(len(tr), generator=gen)]]
    tr_rows, te_rows = (train[:, None] & valid).T, (test[:, None] & valid).T
    folds = torch.stack([stratified_folds(y, rows, cv, seed) for rows in tr_rows])
    return _GridData(X, y, y_shuffled, folds, *_compact(tr_rows), *_compact(te_rows))


def _gather(
    data: _GridData, order: Tensor, counts: Tensor, h: Tensor, p: Tensor
) -> tuple[Float[Tensor, "c m d"], Int[Tensor, "c m"], Bool[Tensor, "c m"]]:
    """Each cell's selected rows, padded to the chunk's largest count (`keep` marks real rows)."""
    m = max(int(counts[p].max()), 1)
    idx = order[p, :m]
    keep = torch.arange(m) < counts[p][:, None]
    return data.X[idx, h[:, None], p[:, None]], idx, keep


@dataclass(frozen=True)
class _Options:
    kind: ProbeKind
    Cs: tuple[float, ...]
    cv: int
    shuffled_control: bool
    tol: float
    max_iter: int


def _fit_chunk(data: _GridData, h: Tensor, p: Tensor, opts: _Options) -> _CellFits:
    X, idx, keep = _gather(data, data.train_order, data.n_train, h, p)
    fold = data.folds[p[:, None], idx].masked_fill(~keep, -1)
    y_shuf = (data.y_shuffled[idx] == 1) if opts.shuffled_control else None
    y = data.y[idx] == 1
    return _fit_cells(X, y, fold, opts.Cs, opts.cv, y_shuf, opts.kind, opts.tol, opts.max_iter)


def _evaluate_chunk(
    data: _GridData, h: Tensor, p: Tensor, fits: _CellFits, n_boot: int, gen: torch.Generator
) -> dict[str, Tensor]:
    """Test AUCs of the probe, its shuffled control and mean-diff; bootstrap CIs of the two."""
    X, idx, keep = _gather(data, data.test_order, data.n_test, h, p)
    X = (torch.where(keep[..., None], X.to(DTYPE), 0.0) - fits.mean[:, None]) / fits.scale[:, None]
    W = torch.stack([fits.weight, fits.weight_shuffled, fits.md_weight], 1)
    b = torch.stack([fits.bias, fits.bias_shuffled, fits.md_bias], 1)
    scores = torch.baddbmm(b[..., None], W, X.transpose(1, 2))  # [c, 3, m]
    labels = data.y[idx] == 1
    auc = batched_roc_auc(scores, labels[:, None], keep[:, None])
    lo = hi = torch.full((2, len(h)), torch.nan, dtype=DTYPE)
    if n_boot > 0:
        boot = _bootstrap_aucs(
            scores[:, [0, 2]].transpose(0, 1), labels, data.n_test[p], n_boot, gen
        )
        lo, hi = _ci(boot, 0.05)
    return {
        "auc": auc[:, 0],
        "auc_shuffled": auc[:, 1],
        "auc_mean_diff": auc[:, 2],
        "auc_ci_low": lo[0],
        "auc_ci_high": hi[0],
        "md_ci_low": lo[1],
        "md_ci_high": hi[1],
    }


def _chunk_columns(
    fits: _CellFits, metrics: dict[str, Tensor], opts: _Options
) -> dict[str, Tensor]:
    """Per-cell outputs of one chunk, nan/zero where a probe could not be fitted."""
    ok, md_ok = fits.fitted, fits.has_classes
    nan = torch.tensor(torch.nan, dtype=DTYPE)
    shuffled_ok = ok & opts.shuffled_control
    Cs = torch.tensor(opts.Cs, dtype=DTYPE)
    logistic = opts.kind == "logistic"
    return {
        "auc": torch.where(ok, metrics["auc"], nan),
        "auc_ci_low": torch.where(ok, metrics["auc_ci_low"], nan),
        "auc_ci_high": torch.where(ok, metrics["auc_ci_high"], nan),
        "auc_shuffled": torch.where(shuffled_ok, metrics["auc_shuffled"], nan),
        "auc_mean_diff": torch.where(md_ok, metrics["auc_mean_diff"], nan),
        "md_ci_low": torch.where(md_ok, metrics["md_ci_low"], nan),
        "md_ci_high": torch.where(md_ok, metrics["md_ci_high"], nan),
        "C": torch.where(ok & logistic, Cs[fits.c_index], nan),
        "cv_auc": torch.where(
            ok & logistic, fits.cv_auc.gather(1, fits.c_index[:, None])[:, 0], nan
        ),
        "cv_auc_per_c": torch.where(ok[:, None], fits.cv_auc, nan),
        "fitted": ok,
        "md_fitted": md_ok,
        "weight": fits.weight * ok[:, None],
        "bias": fits.bias * ok,
        "mean": fits.mean,
        "scale": fits.scale,
        "md_weight": fits.md_weight * md_ok[:, None],
        "md_bias": fits.md_bias * md_ok,
    }


def _check_grid_inputs(X, y, train, test, valid, hooks, positions, model):
    X = _tensor(X)
    if X.ndim != 4:
        raise ValueError(f"X must be [n, n_hooks, n_positions, d], got {tuple(X.shape)}")
    n, H, P, d = X.shape
    if min(n, H, P, d) == 0:
        raise ValueError(f"X is empty: shape {tuple(X.shape)}")
    if (len(hooks), len(positions)) != (H, P):
        raise ValueError(f"X has {H} hooks x {P} positions; got {len(hooks)} x {len(positions)}")
    y = _tensor(y).long()
    if y.shape != (n,) or not bool(((y == 0) | (y == 1)).all()):
        raise ValueError(f"y must be [n] with values 0/1 ({LABEL_MEANING})")
    train, test = _as_mask(train, (n,), "train"), _as_mask(test, (n,), "test")
    if bool((train & test).any()):
        raise ValueError("train and test overlap")
    valid = (
        torch.ones(n, P, dtype=torch.bool) if valid is None else _as_mask(valid, (n, P), "valid")
    )
    info = _info_dict(model)
    if info is not None and info.get("d_model") not in (None, d):
        raise ValueError(f"X has d={d} but model d_model={info['d_model']}")
    return X, y, train, test, valid, info


def _as_mask(x: Any, shape: tuple[int, ...], name: str) -> Tensor:
    t = _tensor(x).bool()
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    return t


def fit_probe_grid(
    X: Float[Tensor, "n n_hooks n_positions d"],
    y: Int[Tensor, " n"],
    train: Bool[Tensor, " n"],
    test: Bool[Tensor, " n"],
    hooks: Sequence[str],
    positions: Sequence[str],
    valid: Bool[Tensor, "n n_positions"] | None = None,
    kind: ProbeKind = "logistic",
    Cs: Sequence[float] = DEFAULT_CS,
    cv: int = 3,
    n_boot: int = 1000,
    seed: int = 0,
    shuffled_control: bool = True,
    model: ModelInfo | dict | None = None,
    progress: bool = True,
    chunk_cells: int = 64,
    tol: float = 1e-4,
    max_iter: int = 100,
) -> ProbeGrid:
    """Fit a probe for every (hook, position) cell, all cells of a chunk in one batched solve.

    Each cell trains on the train examples valid at its position (`valid[:, p]`); logistic
    probes choose C among `Cs` by stratified `cv`-fold CV AUC and are refitted on all of them.
    On the valid test examples each cell gets: ROC AUC, a percentile bootstrap 95% CI
    (`n_boot` resamples of the test set, 0 to skip), the AUC of a shuffled-label control (train
    labels permuted once; the logistic control reuses the C chosen on the real labels, so it has
    the same capacity) and the AUC of a mean-diff probe (always fitted, cheap). Cells with fewer
    than `cv` train examples of a class get nan; a one-class test set gives a nan AUC.
    The control is ~0.5 when the probe's AUC comes from the labels; but where one direction
    dominates the variance and also separates the classes, a label-free (strongly regularised)
    probe aligns with it with a random sign, so read the control as |AUC - 0.5| there.
    `chunk_cells` bounds memory: about chunk_cells * n_train * (d + 3 * n_train) float64s.
    """
    hooks, positions = list(hooks), list(positions)
    X, y, train, test, valid, info = _check_grid_inputs(
        X, y, train, test, valid, hooks, positions, model
    )
    if kind not in ("logistic", "mean_diff"):
        raise ValueError(f"kind must be 'logistic' or 'mean_diff', got {kind!r}")
    n, H, P, d = X.shape
    gen = torch.Generator().manual_seed(seed)
    data = _grid_data(X, y, train, test, valid, cv, gen, seed)
    opts = _Options(kind, tuple(Cs), cv, shuffled_control, tol, max_iter)
    parts: list[dict[str, Tensor]] = []
    n_unconverged = 0
    for start in tqdm(range(0, H * P, chunk_cells), desc="probe grid", disable=not progress):
        cells = torch.arange(start, min(start + chunk_cells, H * P))
        h, p = cells // P, cells % P
        fits = _fit_chunk(data, h, p, opts)
        n_unconverged += int((fits.fitted & ~fits.converged).sum())
        parts.append(_chunk_columns(fits, _evaluate_chunk(data, h, p, fits, n_boot, gen), opts))
    if n_unconverged:
        warnings.warn(f"{n_unconverged} cells did not converge; raise max_iter", stacklevel=2)

    cols = {k: torch.cat([part[k] for part in parts]) for k in parts[0]}
    cols = {k: v.reshape(H, P, *v.shape[1:]) for k, v in cols.items()}
    tensors = ("weight", "bias", "mean", "scale", "md_weight", "md_bias")
    arrays = {k: v.numpy() for k, v in cols.items() if k not in tensors}
    return ProbeGrid(
        hooks=hooks,
        positions=positions,
        layers=[_layer_of(hook) for hook in hooks],
        kind=kind,
        n_train=data.n_train.repeat(H).reshape(H, P).numpy(),
        n_test=data.n_test.repeat(H).reshape(H, P).numpy(),
        model=info,
        metadata={
            "Cs": [float(c) for c in Cs],
            "cv": cv,
            "seed": seed,
            "tol": tol,
            "n_boot": n_boot,
            "shuffled_control": "train labels permuted once; logistic refit with the real C",
            "label": LABEL_MEANING,
            "n_unconverged": n_unconverged,
        },
        **arrays,
        **{k: cols[k] for k in tensors},
    )
