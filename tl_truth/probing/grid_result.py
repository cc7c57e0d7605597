"""`ProbeGrid`: the result of `fit_probe_grid`, one probe and its test metrics per cell.

Fitting the grid (`tl_truth.probing.grid`) is batched numerics; reading it is what a notebook
does most: pick the best cell, pull out one cell's `Probe`, plot the AUC heatmap, save or load
the metrics. That reading side lives here, apart from the solver plumbing, so the class can be
read (and its docstrings tried) on its own; its table, heatmap and markdown methods are in
`tl_truth.probing.grid_views`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from tl_truth.probing.grid_views import ProbeGridViews
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
class ProbeGrid(ProbeGridViews, Result):
    """Test metrics and fitted probes for every (hook, position) cell; arrays are [H, P].

    `auc`, `auc_ci_*`, `auc_shuffled`, `C` and `weight` are for the grid's `kind` of probe;
    `auc_mean_diff` and `md_*` are always the mean-diff probe's. Unfittable cells are nan.
    Made by `fit_probe_grid`; read it with `best()`, `probe(hook, position)`, `plot()`,
    `to_dataframe()`.

    The result protocol (`tl_truth.results.Result`): `save(dir)` writes the metrics
    (`probe_grid.json`, `.md`, `.png`), not the probes' weights (save a probe with
    `grid.probe(hook, position).save(path)`); a grid from `ProbeGrid.load(dir)` has
    `has_weights == False`.

    Args:
        hooks: the H hook names (rows).
        positions: the P position names (columns).
        layers: the layer of each hook (from "blocks.{layer}."; None for other hooks).
        kind: "logistic" or "mean_diff", the grid's probe.
        auc, auc_ci_low, auc_ci_high: test ROC AUC and its bootstrap 95% CI.
        auc_shuffled: test AUC of the shuffled-label control (about 0.5 when the AUC is real).
        auc_mean_diff, md_ci_low, md_ci_high: the same for the mean-diff probe.
        n_train, n_test: examples valid at the cell's position in each split.
        C: the chosen C (nan for mean_diff grids and unfitted cells).
        cv_auc: train CV AUC at the chosen C: select cells with this, not with test AUC.
        cv_auc_per_c: [H, P, n_Cs] mean fold AUC of each C.
        fitted: bool, the grid's kind of probe exists for this cell.
        md_fitted: bool, the mean-diff probe exists.
        weight, bias, mean, scale: [H, P, d] / [H, P] tensors of the grid's probes.
        md_weight, md_bias: the mean-diff probes.
        model: `ModelInfo.to_dict()` of the activations' model, if known.
        metadata: the fitting options (Cs, cv, seed, n_boot, ...).

    >>> import tempfile
    >>> from matplotlib.figure import Figure
    >>> from tl_truth.probing import fit_probe_grid
    >>> g = torch.Generator().manual_seed(0)
    >>> y = torch.arange(80) % 2
    >>> X = torch.randn(80, 2, 3, 8, generator=g)  # [n, hooks, positions, d]
    >>> X[:, 1, 2, 0] += 2.5 * y  # only blocks.1 at position "c" knows the label
    >>> train = torch.arange(80) < 56
    >>> grid = fit_probe_grid(X, y, train, ~train, ["blocks.0.hook_resid_post",
    ...                       "blocks.1.hook_resid_post"], ["a", "b", "c"], n_boot=50,
    ...                       progress=False)
    >>> grid.auc.shape, grid.best()["layer"], grid.best()["position"]
    ((2, 3), 1, 'c')
    >>> probe = grid.probe("blocks.1.hook_resid_post", "c")
    >>> probe.kind, probe.d_model
    ('logistic', 8)
    >>> grid.plot(ax=Figure().add_subplot()).get_title()
    'test ROC AUC (logistic)'
    >>> with tempfile.TemporaryDirectory() as d:
    ...     back = ProbeGrid.load(grid.save(d))
    >>> back.has_weights, back.best()["position"]
    (False, 'c')
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
        """Hooks, positions and every metric array as nested lists (no weights).

        Returns:
            A JSON-ready dict (nan stays nan here; `to_json` writes it as null).

        >>> grid = ProbeGrid.from_dict({"hooks": ["blocks.0.hook_resid_post"], "positions": ["a"],
        ...                             "auc": [[0.75]]})
        >>> grid.to_dict()["auc"], grid.to_dict()["layers"]
        ([[0.75]], [0])
        """
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
        """`to_dict()` rounded for `probe_grid.json`; the chosen C values keep full precision.

        Returns:
            The JSON document (nan -> null).

        >>> grid = ProbeGrid.from_dict({"hooks": ["h"], "positions": ["a"], "C": [[1e-5]]})
        >>> grid.to_json()["C"], grid.to_json()["auc"]
        ([[1e-05]], [[None]])
        """
        d = super().to_json()
        d["C"] = json_safe(np.asarray(self.C).tolist(), None)  # a C of 1e-5 must survive
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ProbeGrid:
        """A grid with the metrics in `d` (missing ones nan / False) and no weights.

        Args:
            d: a `to_dict()` / `probe_grid.json` document; only "hooks" and "positions" are
                required.

        Returns:
            A `ProbeGrid` with `has_weights == False`.

        >>> grid = ProbeGrid.from_dict({"hooks": ["blocks.0.hook_resid_post"], "positions": ["a", "b"],
        ...                             "auc": [[0.5, 0.8]]})
        >>> grid.layers, grid.has_weights, bool(np.isnan(grid.auc_shuffled).all())
        ([0], False, True)
        """
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
        """The fitted probe of one cell, ready to apply or save.

        Args:
            hook: one of `self.hooks`.
            position: one of `self.positions`.
            kind: "logistic" or "mean_diff" (default the grid's kind; a mean-diff probe exists in
                every grid).

        Returns:
            A `Probe` with the cell's hook, layer, position, model and test AUC (in `metadata`).

        Raises:
            KeyError: an unknown hook or position.
            ValueError: a grid without weights (read from JSON), a logistic probe from a mean_diff
                grid, or a cell with too few examples.

        See the class example; a grid read back from JSON has no probes:

        >>> grid = ProbeGrid.from_dict({"hooks": ["h"], "positions": ["a"]})
        >>> grid.probe("h", "a")
        Traceback (most recent call last):
        ...
        ValueError: this grid was read back from JSON and holds no weights: load a saved probe with Probe.load instead
        """
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

        Args:
            kind: "auc" / the grid's kind (default), "mean_diff" or "shuffled".
            by: "cv" or "test".
            positions: restrict the choice to these positions.

        Returns:
            `{"hook", "layer", "position", "auc", "ci": (low, high) or None, "selected_by"}`.

        Raises:
            ValueError: no cell has a score, or a bad `kind` / `by`.

        >>> grid = ProbeGrid.from_dict({"hooks": ["blocks.0.hook_resid_post",
        ...                                       "blocks.1.hook_resid_post"], "positions": ["a", "b"],
        ...                             "auc": [[0.5, 0.9], [0.8, 0.7]], "cv_auc": [[0.5, 0.6],
        ...                                                                      [0.8, 0.7]]})
        >>> grid.best()["layer"], grid.best()["auc"], grid.best(by="test")["auc"]
        (1, 0.8, 0.9)
        >>> grid.best(by="test", positions=["a"])["selected_by"]
        'test_auc'
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
