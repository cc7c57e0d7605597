"""`fit_probe_grid`: a probe for every (hook, position) cell, fitted all at once.

See `tl_truth.probing.solver` for the solver, `tl_truth.probing.probe` for one probe and
`tl_truth.probing.grid_result` for the `ProbeGrid` it returns (re-exported here).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from tl_truth.models import ModelInfo
from tl_truth.probing.grid_result import ProbeGrid
from tl_truth.probing.metrics import _bootstrap_aucs, _ci, batched_roc_auc, stratified_folds
from tl_truth.probing.probe import _info_dict, _layer_of, _tensor
from tl_truth.probing.solver import (
    DEFAULT_CS,
    DTYPE,
    LABEL_MEANING,
    ProbeKind,
    _CellFits,
    _fit_cells,
)

__all__ = ["ProbeGrid", "fit_probe_grid"]


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
    X: Float[Tensor, "n n_hooks n_positions d"] | Any,
    y: Int[Tensor, " n"] | None = None,
    train: Bool[Tensor, " n"] | None = None,
    test: Bool[Tensor, " n"] | None = None,
    hooks: Sequence[str] | None = None,
    positions: Sequence[str] | None = None,
    valid: Bool[Tensor, "n n_positions"] | None = None,
    kind: ProbeKind = "logistic",
    Cs: Sequence[float] = DEFAULT_CS,
    cv: int = 3,
    n_boot: int = 1000,
    seed: int = 0,
    shuffled_control: bool = True,
    model: ModelInfo | dict | None = None,
    progress: bool = True,
    chunk_cells: int = 8,
    tol: float = 1e-4,
    max_iter: int = 100,
) -> ProbeGrid:
    """Fit a probe for every (hook, position) cell, all cells of a chunk in one batched solve.

    `fit_probe_grid(store)` fits an `ActivationStore`'s grid: activations, validity, labels,
    train/test splits, hooks, positions and model all come from the store; `hooks`/`positions`
    then pick a subset of the captured ones, and `train`/`test` masks may replace the store's
    splits (e.g. `rows_of_task & store.split_mask("train")` for one task's grid). With arrays,
    `X` is [n, n_hooks, n_positions, d] and `y`, `train`, `test`, `hooks`, `positions` are needed.

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

    Args:
        X: an `ActivationStore`, or [n, n_hooks, n_positions, d] activations.
        y: [n] labels, 1 = the answer is correct (from the store if X is one).
        train: [n] bool mask of the training examples (default: the store's "train" split).
        test: [n] bool mask of the test examples, disjoint from `train`.
        hooks: the hook name of each row (with a store: a subset of its hooks, default all).
        positions: the position name of each column (likewise).
        valid: [n, n_positions] which examples have each position (default all; from the store).
        kind: "logistic" (C chosen by CV) or "mean_diff".
        Cs: the L2 strengths (scikit-learn's C) to choose from.
        cv: CV folds.
        n_boot: bootstrap resamples for the CIs (0: no CIs).
        seed: seeds folds, the shuffled control and the bootstrap.
        shuffled_control: also fit the shuffled-label control.
        model: the activations' `ModelInfo` (from the store if X is one), kept in the probes.
        progress: show a progress bar.
        chunk_cells: cells per batched solve; bounds memory at about
            chunk_cells * n_train * (d + 3 * n_train) float64s. The default keeps a chunk's
            reduced features (~8 x 300^2 float64s) in cache across the L-BFGS iterations:
            64 was 1.3-1.5x slower, its solves bound by memory bandwidth.
        tol: L-BFGS tolerance.
        max_iter: L-BFGS iterations (a warning counts the cells that did not converge).

    Returns:
        A `ProbeGrid` with the metrics of every cell and its probes' weights.

    Raises:
        ValueError: missing or inconsistent inputs (shapes, labels, overlapping splits, a `d`
            that is not the model's d_model, an unknown kind).

    >>> g = torch.Generator().manual_seed(0)
    >>> y = torch.arange(80) % 2
    >>> X = torch.randn(80, 2, 3, 8, generator=g)  # [n, hooks, positions, d]
    >>> X[:, 1, 2, 0] += 2.5 * y  # only blocks.1 at position "c" knows the label
    >>> train = torch.arange(80) < 56
    >>> grid = fit_probe_grid(X, y, train, ~train, ["blocks.0.hook_resid_post",
    ...                       "blocks.1.hook_resid_post"], ["a", "b", "c"], n_boot=50,
    ...                       progress=False)
    >>> grid.auc.shape, bool(grid.auc[1, 2] > 0.9), bool(abs(grid.auc[0, 0] - 0.5) < 0.3)
    ((2, 3), True, True)

    From a store (the tiny random model: the labels below are arbitrary, so only shapes mean
    anything):

    >>> import tempfile
    >>> from tl_truth.probing import capture
    >>> from tl_truth.testing import tiny_model
    >>> records = [{"id": str(i), "task": "demo", "split": "train" if i < 12 else "test",
    ...             "correct": i % 2 == 0, "prompt_token_ids": [1, 20 + i, 30, 40],
    ...             "answer_token_ids": [50 + i, 60]} for i in range(16)]
    >>> with tempfile.TemporaryDirectory() as d:
    ...     store = capture(tiny_model("llama"), records, d,
    ...                     positions=["last_prompt", "first_answer"], progress=False)
    ...     grid = fit_probe_grid(store, n_boot=0, progress=False)
    >>> grid.hooks, grid.positions, grid.n_train.tolist(), grid.model["name"]
    (['blocks.0.hook_resid_post', 'blocks.1.hook_resid_post'], ['last_prompt', 'first_answer'], [[12, 12], [12, 12]], 'tiny-llama')
    """
    from tl_truth.probing.activations import ActivationStore  # (it does not import this module)

    if isinstance(X, ActivationStore):
        if y is not None or valid is not None:
            raise ValueError("with an ActivationStore, labels and validity come from the store")
        store = X
        hooks, positions = list(hooks or store.hooks), list(positions or store.positions)
        X, valid = store.load(hooks, positions)
        y = store.labels
        train = store.split_mask("train") if train is None else train
        test = store.split_mask("test") if test is None else test
        model = store.model if model is None else model
    elif any(a is None for a in (y, train, test, hooks, positions)):
        raise ValueError("give an ActivationStore, or X, y, train, test, hooks and positions")
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
    # Cells grouped by position, positions by train count: a chunk's cells then (nearly) share
    # one row count, so little padding enters the O(n_train^3) reduction.
    by_count = torch.sort(data.n_train, stable=True).indices
    order = (torch.arange(H)[None] * P + by_count[:, None]).flatten()
    for start in tqdm(range(0, H * P, chunk_cells), desc="probe grid", disable=not progress):
        cells = order[start : start + chunk_cells]
        h, p = cells // P, cells % P
        fits = _fit_chunk(data, h, p, opts)
        n_unconverged += int((fits.fitted & ~fits.converged).sum())
        parts.append(_chunk_columns(fits, _evaluate_chunk(data, h, p, fits, n_boot, gen), opts))
    if n_unconverged:
        warnings.warn(f"{n_unconverged} cells did not converge; raise max_iter", stacklevel=2)

    back = torch.argsort(order)
    cols = {k: torch.cat([part[k] for part in parts])[back] for k in parts[0]}
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
