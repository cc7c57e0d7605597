"""`ProbeGrid`: the result of `fit_probe_grid`, one probe and its test metrics per cell.

Fitting the grid (`tl_truth.probing.grid`) is batched numerics; reading it is what a notebook
does most: pick the best cell, pull out one cell's `Probe`, plot the AUC heatmap, save or load
the metrics. That reading side lives here, apart from the solver plumbing, so the class can be
read (and its docstrings tried) on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from tl_truth.probing.probe import Probe, _layer_of
from tl_truth.probing.solver import LABEL_MEANING, ProbeKind
from tl_truth.results import Result, json_safe

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
