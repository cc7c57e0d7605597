"""The batched L2-logistic solver behind every probe and probe grid.

The objective is scikit-learn's, `C * sum(logloss) + ||w||^2 / 2` with an unpenalised intercept.
Each cell's training rows are reduced exactly to their span (eigh of the Gram matrix; L2
weights always lie in that span, and the reduced features are orthogonal, which gives L-BFGS a
near-exact diagonal preconditioner: the Hessian diagonal at the start point). Batched L-BFGS
then solves the fold problems of every cell in a chunk, one C at a time in ascending order,
each C warm-started from the previous C's solutions; the refit at the chosen C starts from the
mean of that C's fold solutions. float64 throughout: the line search needs it to reach
sklearn's tolerance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from tl_truth.probing.metrics import DTYPE, batched_roc_auc

ProbeKind = Literal["logistic", "mean_diff"]
DEFAULT_CS: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
LABEL_MEANING = "1 = answer correct, 0 = answer wrong"
STD_FLOOR = 1e-6
PROBE_VERSION = 1


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
    theta0: Float[Tensor, "c k r1"] | None = None,
) -> tuple[Float[Tensor, "c k r1"], Bool[Tensor, "c k"], int]:
    """Minimise, for every (cell, problem), sklearn's L2 logistic objective divided by C*sum(w):

    `sum_i w_i logloss_i / sum(w) + |v|^2 / (2 C sum(w))`, intercept unpenalised, by batched
    L-BFGS with per-problem line search, stopping at max|grad| <= tol (sklearn's criterion).
    Starts from `theta0` (a warm start) when given, else from zero.
    Returns theta = [v, b], a converged mask and the iteration count.
    """
    Z = red.Z
    c, m, r = Z.shape
    k = y.shape[1]
    sw = w.sum(-1).clamp_min(1.0)
    lam = inv_c / sw

    def loss_grad(theta: Tensor, Z: Tensor, y: Tensor, w: Tensor, sw: Tensor, lam: Tensor):
        v, b = theta[..., :r], theta[..., r:]
        z = torch.baddbmm(b, v, Z.transpose(1, 2))
        f = (w * (F.softplus(z) - y * z)).sum(-1) / sw + 0.5 * lam * (v * v).sum(-1)
        resid = w * (torch.sigmoid(z) - y) / sw[..., None]
        gv = torch.bmm(resid, Z) + lam[..., None] * v
        return f, torch.cat([gv, resid.sum(-1, keepdim=True)], -1)

    theta = torch.zeros(c, k, r + 1, dtype=Z.dtype) if theta0 is None else theta0
    # Inverse diagonal of the Hessian at the start (p = 1/2 at zero). Z's columns are
    # orthogonal, so at zero on the full data this is the exact Hessian; at a warm start it
    # keeps the curvature the start has reached (refits then take ~6 iterations, not ~12).
    p0 = torch.sigmoid(torch.baddbmm(theta[..., r:], theta[..., :r], Z.transpose(1, 2)))
    hw = w * p0 * (1 - p0) / sw[..., None]
    hess_v = torch.bmm(hw, Z * Z) + lam[..., None]
    h0 = 1 / torch.cat([hess_v, hw.sum(-1, keepdim=True).clamp_min(1e-4)], -1)

    f, g = loss_grad(theta, Z, y, w, sw, lam)
    hist: list[tuple[Tensor, Tensor, Tensor]] = []
    stalled = torch.zeros(c, k, dtype=torch.bool)
    # Problems converge at different speeds: once a quarter of the work left is in cells whose
    # problems are all done, or in problems done in every cell, the rest is compacted, so a
    # batch stops paying for what has finished (one slow cell no longer holds its chunk).
    # `cells` and `probs` index the full batch; finished results wait in the *_out tensors.
    cells, probs = torch.arange(c), torch.arange(k)
    theta_out, g_out, stalled_out = theta.clone(), g.clone(), stalled.clone()
    n_iter = 0
    while n_iter < max_iter:
        done = (g.abs().amax(-1) <= tol) | stalled
        if done.all():
            break
        keep_c = torch.nonzero(~done.all(1)).flatten()
        keep_k = torch.nonzero(~done.all(0)).flatten()
        if len(keep_c) * len(keep_k) * 4 <= 3 * done.numel():
            at = (cells[:, None], probs[None, :])
            theta_out[at], g_out[at], stalled_out[at] = theta, g, stalled
            cells, probs = cells[keep_c], probs[keep_k]
            Z = Z[keep_c]
            theta, f, g, stalled, done, y, w, sw, lam, h0 = (
                t[keep_c][:, keep_k] for t in (theta, f, g, stalled, done, y, w, sw, lam, h0)
            )
            hist = [(s[keep_c][:, keep_k], y_[keep_c][:, keep_k], rho[keep_c][:, keep_k])
                    for s, y_, rho in hist]  # fmt: skip
        n_iter += 1
        p = -_two_loop(g, hist, h0)
        gp = (g * p).sum(-1)
        uphill = gp >= 0  # lost curvature information: restart with the preconditioned gradient
        p = torch.where(uphill[..., None], -h0 * g, p).masked_fill(done[..., None], 0.0)
        gp = (g * p).sum(-1)
        step = torch.ones_like(f)
        for _ in range(40):  # Armijo backtracking, independently per problem
            new = theta + step[..., None] * p
            f_new, g_new = loss_grad(new, Z, y, w, sw, lam)
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
    at = (cells[:, None], probs[None, :])
    theta_out[at], g_out[at], stalled_out[at] = theta, g, stalled
    converged = (g_out.abs().amax(-1) <= tol) & ~stalled_out
    return theta_out, converged, n_iter


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
    # Moments by two batched matmuls (~3x faster than centring a copy); float64 keeps
    # E[x^2] - mean^2 exact enough (agrees with the centred form to ~1e-14 on activations).
    wt = rows.to(X.dtype)[:, None]
    n = wt.sum(-1).clamp_min(1.0)
    mean = torch.bmm(wt, X)[:, 0] / n
    var = (torch.bmm(wt, X * X)[:, 0] / n - mean * mean).clamp_min(0.0)
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
) -> tuple[Int[Tensor, " c"], Float[Tensor, "c n_cs"], Bool[Tensor, " c"], Float[Tensor, "c r1"]]:
    """Each C's fold problems of every cell in one solve, in ascending C, each started from the
    previous C's solutions (a warm start along the regularisation path); returns the C with the
    best mean fold AUC and the mean of that C's fold solutions (the refit's warm start)."""
    c, m, r = red.Z.shape
    n_cs = len(Cs)
    folds = torch.arange(cv)
    fit_rows = (rows[:, None] & (fold[:, None] != folds[None, :, None])).to(DTYPE)
    yk = y.to(DTYPE)[:, None].expand(c, cv, m)
    # Solving the Cs one after another reads Z more often than one solve of all of them, but
    # a batched solve runs until its slowest problem (the largest C) is done; warm-started,
    # the per-C solves need fewer problem-iterations in all.
    theta = torch.empty(c, n_cs, cv, r + 1, dtype=DTYPE)
    converged = torch.ones(c, dtype=torch.bool)
    previous = None
    for ci in sorted(range(n_cs), key=lambda i: Cs[i]):
        inv_c = torch.full((c, cv), 1 / Cs[ci], dtype=DTYPE)
        previous, conv, _ = _fit_logistic(red, yk, fit_rows, inv_c, tol, max_iter, theta0=previous)
        theta[:, ci] = previous
        converged &= conv.all(-1)
    flat = theta.reshape(c, n_cs * cv, r + 1)
    logits = torch.baddbmm(flat[..., r:], flat[..., :r], red.Z.transpose(1, 2))
    held_out = rows[:, None] & (fold[:, None] == folds.repeat(n_cs)[None, :, None])
    cv_auc = batched_roc_auc(logits, y[:, None], held_out).reshape(c, n_cs, cv).nanmean(-1)
    c_index = torch.nan_to_num(cv_auc, nan=-1.0).argmax(-1)  # first best = smallest C on ties
    at_c = theta[torch.arange(c), c_index].mean(1)
    return c_index, cv_auc, converged, at_c


def _refit(
    red: _Reduced,
    targets: list[Bool[Tensor, "c m"]],
    rows: Bool[Tensor, "c m"],
    inv_c: Float[Tensor, " c"],
    tol: float,
    max_iter: int,
    theta0: Float[Tensor, "c r1"] | None = None,
) -> tuple[Float[Tensor, "c t d"], Float[Tensor, "c t"], Bool[Tensor, " c"]]:
    """Fit each label set in `targets` on all rows at the given C; standardised-space weights.

    `theta0` warm-starts the first label set (the real labels); the others start from zero.
    """
    c, m, r = red.Z.shape
    t = len(targets)
    y = torch.stack(targets, 1).to(DTYPE)
    w = rows[:, None].expand(c, t, m).to(DTYPE)
    start = torch.zeros(c, t, r + 1, dtype=DTYPE)
    if theta0 is not None:
        start[:, 0] = theta0
    inv_c = inv_c[:, None].expand(c, t)
    theta, converged, _ = _fit_logistic(red, y, w, inv_c, tol, max_iter, theta0=start)
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
    c_index, cv_auc, conv_cv, theta0 = _cv_choose_c(red, y, fold, rows, Cs, cv, tol, max_iter)
    inv_c = 1 / torch.tensor(Cs, dtype=DTYPE)[c_index]
    targets = [y] if y_shuffled is None else [y, ys]
    W, b, conv = _refit(red, targets, rows, inv_c, tol, max_iter, theta0)
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
