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
"""The two read-outs of a `PatchResult` and their panel titles."""


@dataclass
class PatchResult(Result):
    """Probe score and answer logit of the corrupted run, patched at each (layer, position).

    `positions` are the patched positions (0..min_len-1 for a single example; negative offsets
    from the end after `average`). Baselines are the unpatched clean and corrupted runs.

    The result protocol (`tl_truth.results.Result`): `save(dir)` writes `patch_result.json`,
    `.md` and `.png`; `PatchResult.load(dir)` reads it back.

    Args:
        probe_score: [layers, positions] the probe's decision function on each patched run.
        answer_logit: [layers, positions] the answer token's logit on each patched run.
        clean_probe_score, corrupted_probe_score: the probe on the unpatched runs.
        clean_answer_logit, corrupted_answer_logit: the answer logit on the unpatched runs.
        hook_kind: what was patched ("resid_pre", "attn_out", ...).
        positions: the patched positions (default 0..n-1).
        labels: the token strings of the patched positions, if known.
        n_examples: how many questions were averaged into this result.
        layers: the patched layers (default 0..n-1).

    >>> import tempfile
    >>> res = PatchResult(torch.tensor([[-1.0, 0.5], [1.5, 2.0]]), torch.zeros(2, 2),
    ...                   clean_probe_score=2.0, corrupted_probe_score=-1.0,
    ...                   clean_answer_logit=3.0, corrupted_answer_logit=0.0, labels=["A", "B"])
    >>> res.shape, res.layers, res.positions
    ((2, 2), [0, 1], [0, 1])
    >>> res.to_dataframe()[["layer", "token", "probe_score"]].values.tolist()[-1]
    [1, 'B', 2.0]
    >>> with tempfile.TemporaryDirectory() as d:
    ...     back = PatchResult.load(res.save(d))
    >>> torch.equal(back.probe_score, res.probe_score), back.labels
    (True, ['A', 'B'])
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
        """`(n_layers, n_positions)`."""
        return tuple(self.probe_score.shape)  # type: ignore[return-value]

    def to_dataframe(self) -> pd.DataFrame:
        """One row per (layer, position): probe_score, answer_logit and both baselines.

        Returns:
            A DataFrame with hook_kind, layer, position, token, probe_score, answer_logit and the
            four baselines.

        >>> res = PatchResult(torch.ones(2, 3), torch.zeros(2, 3), 1.0, 0.0, 1.0, 0.0)
        >>> res.to_dataframe()[["layer", "position"]].values.tolist()[-2:]
        [[1, 1], [1, 2]]
        """
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
        """Every field as JSON-ready lists (full precision).

        Returns:
            The document `from_dict` reads.

        >>> res = PatchResult(torch.ones(1, 2), torch.zeros(1, 2), 1.0, 0.0, 1.0, 0.0)
        >>> res.to_dict()["probe_score"], res.to_dict()["positions"]
        ([[1.0, 1.0]], [0, 1])
        """
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
        """The result in a `to_dict()` / `patch_result.json` document (null cells become nan).

        Args:
            d: the document.

        Returns:
            A `PatchResult`.

        >>> res = PatchResult.from_dict({"probe_score": [[1.0, None]], "answer_logit": [[0.0, 0.0]],
        ...                              "clean_probe_score": 1.0, "corrupted_probe_score": 0.0,
        ...                              "clean_answer_logit": 1.0, "corrupted_answer_logit": 0.0})
        >>> res.probe_score.isnan().tolist(), res.hook_kind
        ([[False, True]], 'resid_pre')
        """

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
        """A figure size (inches) for both heatmaps side by side."""
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

        Args:
            ax: an Axes, a pair of Axes, or None for a new figure.
            title: a title.
            metric: "probe_score" or "answer_logit" to draw only that one.

        Returns:
            `ax` as given, or the first Axes of the new figure.

        >>> from matplotlib.figure import Figure
        >>> res = PatchResult(torch.ones(2, 3), torch.zeros(2, 3), 1.0, 0.0, 1.0, 0.0)
        >>> res.plot(ax=Figure().add_subplot(), metric="answer_logit").get_title()
        'answer logit'
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
        """Both heatmaps side by side on a new Figure (built without pyplot).

        Args:
            title: a title above both panels.

        Returns:
            A `matplotlib.figure.Figure` (what `save` writes as the PNG).

        >>> res = PatchResult(torch.ones(2, 3), torch.zeros(2, 3), 1.0, 0.0, 1.0, 0.0)
        >>> len(res.figure().axes)  # two heatmaps and their colorbars
        4
        """
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
        """The heading of the markdown report.

        Returns:
            "Activation patching (hook kind[, mean of n examples])".

        >>> PatchResult(torch.ones(1, 1), torch.ones(1, 1), 1.0, 0.0, 1.0, 0.0, n_examples=3).title()
        'Activation patching (resid_pre, mean of 3 examples)'
        """
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
        """The probe score as layers (rows) x positions (columns), for the markdown table.

        Returns:
            A DataFrame: a "layer" column, then one column per position (named by its token when
            the tokens are known and distinct).

        >>> res = PatchResult(torch.ones(1, 2), torch.zeros(1, 2), 1.0, 0.0, 1.0, 0.0,
        ...                   labels=["Par", "is"])
        >>> res.markdown_frame().columns.tolist()
        ['layer', 'Par', 'is']
        """
        return self._matrix("probe_score")

    def markdown_notes(self) -> str:
        """The text under the table: the baselines and the answer-logit table.

        Returns:
            Markdown text.

        >>> res = PatchResult(torch.ones(1, 2), torch.zeros(1, 2), 1.0, 0.0, 1.0, 0.0)
        >>> res.markdown_notes().splitlines()[0]
        'Probe score of the patched corrupted run (rows: layers, columns: positions); unpatched: corrupted 0.000, clean 1.000.'
        """
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

        Args:
            results: per-question results (same layers and hook kind).

        Returns:
            The mean `PatchResult` (float64), `n_examples` summed.

        Raises:
            ValueError: no results, results that differ in layers or hook kind, or one without
                positions.

        >>> a = PatchResult(torch.tensor([[1.0, 2.0, 3.0]]), torch.zeros(1, 3), 1.0, 0.0, 1.0, 0.0)
        >>> b = PatchResult(torch.tensor([[5.0, 7.0]]), torch.zeros(1, 2), 3.0, 0.0, 1.0, 0.0)
        >>> mean = PatchResult.average([a, b])
        >>> mean.probe_score.tolist(), mean.positions, mean.clean_probe_score, mean.n_examples
        ([[3.5, 5.0]], [-2, -1], 2.0, 2)
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
