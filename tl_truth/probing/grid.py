"""`fit_probe_grid`: a probe for every (hook, position) cell, fitted all at once.

See `tl_truth.probing.solver` for the solver and `tl_truth.probing.probe` for one probe.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from tl_truth.models import ModelInfo
from tl_truth.probing.metrics import _bootstrap_aucs, _ci, batched_roc_auc, stratified_folds
from tl_truth.probing.probe import Probe, _info_dict, _layer_of, _tensor
from tl_truth.probing.solver import (
    DEFAULT_CS,
    DTYPE,
    LABEL_MEANING,
    ProbeKind,
    _CellFits,
    _fit_cells,
)
from tl_truth.results import Result, json_safe

# The (hook, position) grid


# [H, P] metric arrays (and `cv_auc_per_c`, [H, P, n_Cs]) that `to_dict` holds
_METRICS = (
    "auc",
    "auc_ci_low",
    "auc_ci_high",
    "auc_shuffled",
    "auc_mean_diff",
    "md_ci_low",
    "md_ci_high",
    "n_train",
    "n_test",
    "C",
    "cv_auc",
    "cv_auc_per_c",
    "fitted",
    "md_fitted",
)


@dataclass(eq=False)
class ProbeGrid(Result):
    """Test metrics and fitted probes for every (hook, position) cell; arrays are [H, P].

    `auc`, `auc_ci_*`, `auc_shuffled`, `C` and `weight` are for the grid's `kind` of probe;
    `auc_mean_diff` and `md_*` are always the mean-diff probe's. Unfittable cells are nan.

    The result protocol (`tl_truth.results.Result`): `save(dir)` writes the metrics
    (`probe_grid.json`, `.md`, `.png`), not the probes' weights (save a probe with
    `grid.probe(hook, position).save(path)`); a grid from `ProbeGrid.load(dir)` has
    `has_weights == False`.
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

    result_name = "probe_grid"
    json_raw_keys = ("model", "metadata")

    @property
    def has_weights(self) -> bool:
        """False for a grid read back from JSON (metrics only)."""
        return self.weight.ndim == 3 and self.weight.shape[-1] > 0

    def to_dict(self) -> dict:
        """Hooks, positions and every metric array as nested lists (no weights)."""
        return {
            "hooks": self.hooks,
            "layers": self.layers,
            "positions": self.positions,
            "kind": self.kind,
            **{k: np.asarray(getattr(self, k)).tolist() for k in _METRICS},
            "model": self.model,
            "metadata": self.metadata,
        }

    def to_json(self) -> dict:
        d = super().to_json()
        d["C"] = json_safe(np.asarray(self.C).tolist(), None)  # a C of 1e-5 must survive
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ProbeGrid:
        """A grid with the metrics in `d` (missing ones nan / False) and no weights."""
        H, P = len(d["hooks"]), len(d["positions"])

        def arr(key: str, dtype: Any = float, shape: tuple = (H, P)) -> np.ndarray:
            v = d.get(key)
            if v is None:
                return np.full(shape, np.nan) if dtype is float else np.zeros(shape, dtype)
            if dtype is float:
                return np.array(v, dtype=object).astype(float)  # None -> nan
            return np.asarray(v, dtype=dtype)

        empty = torch.zeros(H, P, 0)
        return cls(
            hooks=list(d["hooks"]),
            positions=list(d["positions"]),
            layers=list(d.get("layers") or [_layer_of(h) for h in d["hooks"]]),
            kind=d.get("kind", "logistic"),
            auc=arr("auc"),
            auc_ci_low=arr("auc_ci_low"),
            auc_ci_high=arr("auc_ci_high"),
            auc_shuffled=arr("auc_shuffled"),
            auc_mean_diff=arr("auc_mean_diff"),
            md_ci_low=arr("md_ci_low"),
            md_ci_high=arr("md_ci_high"),
            n_train=arr("n_train", np.int64),
            n_test=arr("n_test", np.int64),
            C=arr("C"),
            cv_auc=arr("cv_auc"),
            cv_auc_per_c=arr("cv_auc_per_c", shape=(H, P, 0)),
            fitted=arr("fitted", bool),
            md_fitted=arr("md_fitted", bool),
            weight=empty,
            bias=torch.full((H, P), float("nan")),
            mean=empty,
            scale=empty,
            md_weight=empty,
            md_bias=torch.full((H, P), float("nan")),
            model=d.get("model"),
            metadata=dict(d.get("metadata") or {}),
        )

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
        if not self.has_weights:
            raise ValueError(
                "this grid was read back from JSON and holds no weights: load a saved probe "
                "with Probe.load instead"
            )
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

    @property
    def figsize(self) -> tuple[float, float]:
        return (1.5 + 0.45 * len(self.positions), 1.5 + 0.22 * len(self.hooks))

    def plot(self, ax: Any = None, kind: str = "auc", cmap: str = "viridis"):
        """Heatmap of test AUC, layers (rows) x positions (columns), with a colorbar.

        Returns the matplotlib Axes (its `.figure` is the figure). Only without `ax` is a
        (pyplot) figure created; a given `ax` is drawn on, pyplot is not touched.
        """
        values = self._values(kind)[0]
        if ax is None:
            import matplotlib.pyplot as plt

            _, ax = plt.subplots(figsize=self.figsize)
        im = ax.imshow(values, aspect="auto", origin="lower", cmap=cmap, vmin=0.5, vmax=1.0)
        ax.set_yticks(range(len(self.hooks)), self._row_labels())
        ax.set_xticks(range(len(self.positions)), self.positions, rotation=60, ha="right")
        ax.set_ylabel("layer" if None not in self.layers else "hook")
        ax.set_xlabel("position")
        ax.set_title(f"test ROC AUC ({self.kind if kind == 'auc' else kind})")
        ax.figure.colorbar(im, ax=ax, label="ROC AUC")
        return ax

    def _row_labels(self) -> list[str]:
        return [h if la is None else str(la) for la, h in zip(self.layers, self.hooks, strict=True)]

    def title(self) -> str:
        return f"Probe grid: test ROC AUC ({self.kind})"

    def markdown_frame(self):
        """Test AUC, hooks (rows) x positions (columns)."""
        import pandas as pd

        df = self.to_dataframe()
        auc = df.set_index(["hook", "position"])["auc"]
        out = pd.DataFrame({"layer" if None not in self.layers else "hook": self._row_labels()})
        for p in self.positions:
            out[p] = [auc[(h, p)] for h in self.hooks]
        return out

    def markdown_notes(self) -> str:
        by = "cv" if np.isfinite(np.asarray(self.cv_auc, dtype=float)).any() else "test"
        try:
            b = self.best(by=by)
        except ValueError:
            return "No cell has a score (too few examples everywhere).\n"
        ci = "" if b["ci"] is None else f" [{b['ci'][0]:.3f}, {b['ci'][1]:.3f}]"
        return (
            f"Best cell ({b['selected_by']}): {b['hook']} / {b['position']}, "
            f"test AUC {b['auc']:.3f}{ci}.\n"
        )


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
    chunk_cells: int = 64,
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
    `chunk_cells` bounds memory: about chunk_cells * n_train * (d + 3 * n_train) float64s.
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
