"""Probes: linear read-outs of "is this answer correct?" from residual-stream activations.

Every probe (geometry-of-truth style) has `from_data`, `predict` and `direction`. Two kinds:

* `logistic`: L2 logistic regression on standardised features, C chosen by stratified k-fold
  CV ROC AUC on the training data only, then refitted on all of it. The objective is
  scikit-learn's, `C * sum(logloss) + ||w||^2 / 2` with an unpenalised intercept, so results
  agree with `LogisticRegression(C=C)` on the same standardised data.
* `mean_diff`: direction `mean(X[y=1]) - mean(X[y=0])` in raw space, score = projection,
  threshold halfway between the class means.

Label convention: 1 = the model's answer is correct, so a higher score means "more likely correct".

Both are fitted by the batched solver of `tl_truth.probing.solver`, which `fit_probe_grid`
uses for every (hook, position) cell at once. Probes are saved as `.safetensors` + `.json`
(`save` / `load`, in `tl_truth.probing.probe_files`); nothing is ever pickled.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from tl_truth.models import ModelInfo
from tl_truth.probing.metrics import stratified_folds
from tl_truth.probing.probe_files import ProbeFiles
from tl_truth.probing.solver import (
    DEFAULT_CS,
    DTYPE,
    LABEL_MEANING,
    ProbeKind,
    _fit_cells,
)


class ProbeMismatchError(ValueError):
    """A probe is applied to activations it was not trained on (other model, hook, position...).

    A `ValueError`; the message lists every field that differs.

    >>> probe = Probe("mean_diff", torch.ones(4), 0.0, torch.zeros(4), torch.ones(4))
    >>> probe.decision_function(torch.zeros(3, 5))
    Traceback (most recent call last):
    ...
    tl_truth.probing.probe.ProbeMismatchError: d_model: probe has 4, input has 5
    """


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
class Probe(ProbeFiles):
    """A linear probe: `decision = ((x - mean) / scale) @ weight + bias`; > 0 means "correct".

    Fit one with `Probe.from_data(X, y)`, or take a cell of a grid with
    `ProbeGrid.probe(hook, position)`. Saved as `.safetensors` + `.json` (never pickled).

    Args:
        kind: "logistic" or "mean_diff".
        weight: [d] weights in standardised space (mean-diff: diff * scale, same formula).
        bias: the intercept.
        mean: [d] standardisation mean, fitted on the training data.
        scale: [d] standardisation scale.
        hook: the hook point the activations came from (checked by `check_compatible`).
        layer: its layer.
        position: the position name the activations came from.
        C: the chosen L2 strength (scikit-learn's C); None for mean_diff.
        model: `ModelInfo.to_dict()` of the model that produced the activations.
        metadata: n_train, the CV AUC of each C, the label convention, ...

    >>> g = torch.Generator().manual_seed(0)
    >>> y = torch.arange(60) % 2
    >>> X = torch.randn(60, 8, generator=g)
    >>> X[:, 0] += 3 * y  # feature 0 says "correct"
    >>> probe = Probe.from_data(X, y, hook="blocks.1.hook_resid_post", position="exact_last")
    >>> probe.kind, probe.d_model, probe.layer, probe.C in probe.metadata["Cs"]
    ('logistic', 8, 1, True)
    >>> probe.predict(X[:4]).tolist(), float(probe.direction[0]) > 0.8
    ([0, 1, 0, 1], True)
    """

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
        """Fit on (X, y) only: standardise, choose C by stratified CV AUC, refit on everything.

        Args:
            X: [n, d] activations.
            y: [n] labels, 1 = the answer is correct.
            kind: "logistic" (L2 logistic regression, scikit-learn's objective) or "mean_diff"
                (direction between the class means, threshold halfway).
            Cs: the L2 strengths to choose from (logistic only).
            cv: CV folds (logistic needs at least `cv` examples of each class).
            seed: seeds the folds.
            hook, layer, position, model: where the activations came from (recorded, checked
                when the probe is loaded); `layer` defaults to the one in `hook`.
            tol, max_iter: the L-BFGS stopping rule (a warning if it does not converge).

        Returns:
            The fitted `Probe`.

        Raises:
            ValueError: bad shapes, labels other than 0/1, too few examples of a class, or
                `X`'s width differs from the model's d_model.

        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(40) % 2
        >>> X = torch.randn(40, 4, generator=g) + y[:, None]
        >>> Probe.from_data(X, y, kind="mean_diff").predict(X).eq(y).float().mean().item() > 0.7
        True
        """
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
        """Width of the activations the probe reads."""
        return int(self.weight.shape[0])

    def decision_function(self, X: Float[Tensor, "*batch d"]) -> Float[Tensor, " *batch"]:
        """Signed score; > 0 predicts "correct". Mean-diff scores are raw projections.

        Args:
            X: [..., d] activations, on any device.

        Returns:
            [...] scores (float64 on X's device).

        Raises:
            ProbeMismatchError: `X` is not `d_model` wide.

        >>> probe = Probe("mean_diff", torch.tensor([1.0, 0.0]), -0.5, torch.zeros(2), torch.ones(2))
        >>> probe.decision_function(torch.tensor([[2.0, 9.0], [0.0, 9.0]])).tolist()
        [1.5, -0.5]
        """
        X = _tensor(X)
        if X.shape[-1] != self.d_model:
            raise ProbeMismatchError(f"d_model: probe has {self.d_model}, input has {X.shape[-1]}")
        X = X.to(self.weight.dtype)  # on X's device: activations may live on the GPU
        w, mean, scale = (t.to(X.device) for t in (self.weight, self.mean, self.scale))
        return ((X - mean) / scale) @ w + self.bias

    def predict_proba(self, X: Float[Tensor, "*batch d"]) -> Float[Tensor, " *batch"]:
        """P(answer correct). Calibrated for logistic; for mean_diff only a monotone squashing.

        Args:
            X: [..., d] activations.

        Returns:
            [...] probabilities, `sigmoid(decision_function(X))`.

        >>> probe = Probe("logistic", torch.tensor([1.0, 0.0]), 0.0, torch.zeros(2), torch.ones(2))
        >>> probe.predict_proba(torch.tensor([0.0, 3.0])).item()
        0.5
        """
        return torch.sigmoid(self.decision_function(X))

    def predict(self, X: Float[Tensor, "*batch d"]) -> Int[Tensor, " *batch"]:
        """Hard predictions: 1 (correct) where the decision function is > 0.

        Args:
            X: [..., d] activations.

        Returns:
            [...] 0/1 labels (int64).

        >>> probe = Probe("logistic", torch.tensor([1.0, 0.0]), 0.0, torch.zeros(2), torch.ones(2))
        >>> probe.predict(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])).tolist()
        [1, 0]
        """
        return (self.decision_function(X) > 0).long()

    @property
    def direction(self) -> Float[Tensor, " d"]:
        """Unit vector in raw activation space; a larger projection means more likely correct.

        >>> w = torch.tensor([3.0, 4.0], dtype=torch.float64)
        >>> Probe("logistic", w, 0.0, torch.zeros(2), torch.ones(2)).direction.tolist()
        [0.6, 0.8]
        """
        raw = self.weight / self.scale
        return raw / raw.norm().clamp_min(1e-300)

    def check_compatible(
        self,
        model: ModelInfo | dict | None = None,
        hook: str | None = None,
        position: str | None = None,
    ) -> None:
        """Raise ProbeMismatchError listing everything that differs from the probe's training.

        Args:
            model: the `ModelInfo` (or its dict) of the activations' model; checks fingerprint,
                backend, processing, n_layers and d_model (only d_model if the probe has no model).
            hook: the activations' hook point.
            position: the activations' position name.

        Returns:
            None; arguments left as None are not checked.

        Raises:
            ProbeMismatchError: something differs.

        >>> probe = Probe("mean_diff", torch.ones(2), 0.0, torch.zeros(2), torch.ones(2),
        ...               hook="blocks.0.hook_resid_post")
        >>> probe.check_compatible(hook="blocks.0.hook_resid_post")
        >>> probe.check_compatible(hook="blocks.1.hook_resid_post")
        Traceback (most recent call last):
        ...
        tl_truth.probing.probe.ProbeMismatchError: probe does not match these activations: hook: 'blocks.0.hook_resid_post' != 'blocks.1.hook_resid_post' (probe != given)
        """
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
