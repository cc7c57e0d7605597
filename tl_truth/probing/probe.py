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
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from safetensors.torch import load_file, save_file
from torch import Tensor

from tl_truth.models import ModelInfo
from tl_truth.probing.metrics import stratified_folds
from tl_truth.probing.solver import (
    DEFAULT_CS,
    DTYPE,
    LABEL_MEANING,
    PROBE_VERSION,
    ProbeKind,
    _fit_cells,
)


class ProbeMismatchError(ValueError):
    """A probe is applied to activations it was not trained on (other model, hook, position...)."""


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
