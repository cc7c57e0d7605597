"""`PatchResult`: probe score and answer logit of a patched run, per (layer, position).

What `patch_probe_and_logit` returns for one question, and what `PatchResult.average` makes of
many: the two [layers, positions] grids with their unpatched baselines, as a table, heatmaps
and markdown (the `tl_truth.results.Result` protocol). Kept apart from the patching loop in
`tl_truth.intervention.patching` so the result can be loaded, averaged and plotted without it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from tl_truth.results import Result, markdown_table

METRICS = {
    "probe_score": "probe score (logit P(correct))",
    "answer_logit": "answer logit",
}


@dataclass
class PatchResult(Result):
    """Probe score and answer logit of the corrupted run, patched at each (layer, position).

    `positions` are the patched positions (0..min_len-1 for a single example; negative offsets
    from the end after `average`). Baselines are the unpatched clean and corrupted runs.

    The result protocol (`tl_truth.results.Result`): `save(dir)` writes `patch_result.json`,
    `.md` and `.png`; `PatchResult.load(dir)` reads it back.
    """

    probe_score: Float[Tensor, "layers positions"]
    answer_logit: Float[Tensor, "layers positions"]
    clean_probe_score: float
    corrupted_probe_score: float
    clean_answer_logit: float
    corrupted_answer_logit: float
    hook_kind: str = "resid_pre"
    positions: list[int] = field(default_factory=list)
    labels: list[str] | None = None  # token strings of the patched positions, if known
    n_examples: int = 1
    layers: list[int] | None = None  # the patched layers (default 0..n-1)

    def __post_init__(self) -> None:
        if self.probe_score.shape != self.answer_logit.shape:
            raise ValueError("probe_score and answer_logit must have the same shape")
        if not self.positions:
            self.positions = list(range(self.probe_score.shape[1]))
        if self.layers is None:
            self.layers = list(range(self.probe_score.shape[0]))

    result_name = "patch_result"

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.probe_score.shape)  # type: ignore[return-value]

    def to_dataframe(self) -> pd.DataFrame:
        """One row per (layer, position): probe_score, answer_logit and both baselines."""
        n_layers, n_pos = self.shape
        rows = []
        for i, layer in enumerate(self.layers):
            for j in range(n_pos):
                rows.append(
                    {
                        "hook_kind": self.hook_kind,
                        "layer": layer,
                        "position": self.positions[j],
                        "token": self.labels[j] if self.labels else None,
                        "probe_score": float(self.probe_score[i, j]),
                        "answer_logit": float(self.answer_logit[i, j]),
                        "clean_probe_score": self.clean_probe_score,
                        "corrupted_probe_score": self.corrupted_probe_score,
                        "clean_answer_logit": self.clean_answer_logit,
                        "corrupted_answer_logit": self.corrupted_answer_logit,
                    }
                )
        return pd.DataFrame(rows)

    def to_dict(self) -> dict:
        return {
            "probe_score": self.probe_score.tolist(),
            "answer_logit": self.answer_logit.tolist(),
            "clean_probe_score": self.clean_probe_score,
            "corrupted_probe_score": self.corrupted_probe_score,
            "clean_answer_logit": self.clean_answer_logit,
            "corrupted_answer_logit": self.corrupted_answer_logit,
            "hook_kind": self.hook_kind,
            "positions": list(self.positions),
            "labels": self.labels,
            "n_examples": self.n_examples,
            "layers": self.layers,
        }

    @classmethod
    def from_dict(cls, d: dict) -> PatchResult:
        def grid(key: str) -> Tensor:  # null (a missing position) -> nan
            return torch.tensor([[np.nan if x is None else x for x in row] for row in d[key]])

        return cls(
            probe_score=grid("probe_score"),
            answer_logit=grid("answer_logit"),
            clean_probe_score=d["clean_probe_score"],
            corrupted_probe_score=d["corrupted_probe_score"],
            clean_answer_logit=d["clean_answer_logit"],
            corrupted_answer_logit=d["corrupted_answer_logit"],
            hook_kind=d.get("hook_kind", "resid_pre"),
            positions=list(d.get("positions") or []),
            labels=d.get("labels"),
            n_examples=d.get("n_examples", 1),
            layers=d.get("layers"),
        )

    # -- figure

    @property
    def figsize(self) -> tuple[float, float]:
        n_layers, n_pos = self.shape
        return (max(8.0, 0.35 * n_pos * 2 + 3), 0.4 * n_layers + 2.5)

    def _draw(self, ax: Any, metric: str) -> None:
        """One heatmap, colours centred on the corrupted baseline (red: towards clean)."""
        from matplotlib.colors import TwoSlopeNorm

        n_layers, n_pos = self.shape
        values, centre = getattr(self, metric), getattr(self, f"corrupted_{metric}")
        ticks = self.labels if self.labels else [str(p) for p in self.positions]
        v = values.detach().float().cpu().numpy()
        finite = v[np.isfinite(v)]  # a missing position (NaN) stays blank
        lo = min(float(finite.min()), centre) if finite.size else centre
        hi = max(float(finite.max()), centre) if finite.size else centre
        eps = 1e-6
        norm = TwoSlopeNorm(vcenter=centre, vmin=min(lo, centre - eps), vmax=max(hi, centre + eps))
        im = ax.imshow(v, aspect="auto", cmap="RdBu_r", norm=norm, origin="lower")
        ax.set_title(METRICS[metric])
        ax.set_xlabel("position")
        ax.set_ylabel(f"layer ({self.hook_kind})")
        ax.set_xticks(range(n_pos))
        ax.set_xticklabels(ticks, rotation=90, fontsize=7)
        ax.set_yticks(range(n_layers))
        ax.set_yticklabels([str(x) for x in self.layers], fontsize=7)
        ax.figure.colorbar(im, ax=ax)

    def plot(self, ax: Any = None, title: str | None = None, metric: str | None = None) -> Any:
        """Heatmaps of the probe score and the answer logit per (layer, position).

        Colours are centred on the corrupted baseline: red = towards the clean run's value.
        With no `ax`, a new (pyplot) figure holds both panels (or only `metric`) and its first
        Axes is returned; a given `ax` gets one panel (`metric`, default the probe score), a
        pair of Axes gets both. `title` goes above a figure made here, else above the panel.
        """
        if metric is not None and metric not in METRICS:
            raise ValueError(f"metric must be one of {list(METRICS)}, got {metric!r}")
        if ax is None:
            import matplotlib.pyplot as plt

            metrics = [metric] if metric else list(METRICS)
            w, h = self.figsize
            fig, axes = plt.subplots(
                1, len(metrics), figsize=(w * len(metrics) / 2, h), squeeze=False
            )
            for a, m in zip(axes[0], metrics, strict=True):
                self._draw(a, m)
            if title:
                fig.suptitle(title)
            fig.tight_layout()
            return axes[0][0]
        axes = list(ax) if isinstance(ax, (list, tuple, np.ndarray)) else [ax]
        for a, m in zip(axes, [metric] if metric else list(METRICS), strict=False):
            self._draw(a, m)
        if title:
            axes[0].set_title(f"{title}\n{axes[0].get_title()}")
        return ax

    def figure(self, title: str | None = None) -> Any:
        """Both heatmaps side by side on a new Figure (built without pyplot)."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=self.figsize)
        for a, m in zip(fig.subplots(1, 2), METRICS, strict=True):
            self._draw(a, m)
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        return fig

    # -- markdown

    def title(self) -> str:
        n = f", mean of {self.n_examples} examples" if self.n_examples > 1 else ""
        return f"Activation patching ({self.hook_kind}{n})"

    def _matrix(self, metric: str) -> pd.DataFrame:
        """`to_dataframe()[metric]` as layers (rows) x positions (columns)."""
        df = self.to_dataframe()
        labels = [str(p) for p in self.positions]
        if self.labels and len(set(self.labels)) == len(self.labels) and "layer" not in self.labels:
            labels = [str(t) for t in self.labels]
        elif self.labels:
            labels = [f"{p} {t!r}" for p, t in zip(self.positions, self.labels, strict=True)]
        out = pd.DataFrame({"layer": list(self.layers)})
        for p, label in zip(self.positions, labels, strict=True):
            out[label] = df.loc[df["position"] == p, metric].to_numpy()
        return out

    def markdown_frame(self) -> pd.DataFrame:
        return self._matrix("probe_score")

    def markdown_notes(self) -> str:
        return (
            f"Probe score of the patched corrupted run (rows: layers, columns: positions); "
            f"unpatched: corrupted {self.corrupted_probe_score:.3f}, clean "
            f"{self.clean_probe_score:.3f}.\n\n"
            f"Answer logit (unpatched: corrupted {self.corrupted_answer_logit:.3f}, clean "
            f"{self.clean_answer_logit:.3f}):\n\n" + markdown_table(self._matrix("answer_logit"))
        )

    @staticmethod
    def average(results: Sequence[PatchResult]) -> PatchResult:
        """Mean over examples, positions aligned from the end.

        Every result keeps its last `min(n_positions)` columns (so with prompts patched over
        their common prefix, -1 is each example's last patched token); positions become the
        offsets -k..-1 and token labels are dropped. Layers and hook kinds must agree.
        """
        if not results:
            raise ValueError("no results to average")
        layers = {r.shape[0] for r in results}
        kinds = {r.hook_kind for r in results}
        if len(layers) != 1 or len(kinds) != 1:
            raise ValueError(f"results differ in layers {layers} or hook kinds {kinds}")
        k = min(r.shape[1] for r in results)
        if k == 0:
            raise ValueError("a result has no positions")

        def mean(get: Callable[[PatchResult], Any]) -> Any:
            return torch.stack(
                [torch.as_tensor(get(r), dtype=torch.float64) for r in results]
            ).mean(0)

        return PatchResult(
            probe_score=mean(lambda r: r.probe_score[:, -k:]),
            answer_logit=mean(lambda r: r.answer_logit[:, -k:]),
            clean_probe_score=float(mean(lambda r: r.clean_probe_score)),
            corrupted_probe_score=float(mean(lambda r: r.corrupted_probe_score)),
            clean_answer_logit=float(mean(lambda r: r.clean_answer_logit)),
            corrupted_answer_logit=float(mean(lambda r: r.corrupted_answer_logit)),
            hook_kind=results[0].hook_kind,
            positions=list(range(-k, 0)),
            n_examples=sum(r.n_examples for r in results),
        )
