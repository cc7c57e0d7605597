"""How a `ProbeGrid` looks: its table, its AUC heatmap and its markdown report.

`ProbeGridViews` is a mixin of `ProbeGrid` (in `tl_truth.probing.grid_result`) holding the
presentation methods of the result protocol (`to_dataframe`, `plot`, `title`,
`markdown_frame`, `markdown_notes`). They only read the grid's hooks, positions, layers and
metric arrays, so they live apart from the grid's data, serialisation and cell access.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class ProbeGridViews:
    """Tables, heatmap and markdown of a `ProbeGrid` (a mixin; see `ProbeGrid` for the fields).

    >>> from tl_truth.probing import ProbeGrid
    >>> isinstance(ProbeGrid.from_dict({"hooks": ["h"], "positions": ["a"]}), ProbeGridViews)
    True
    """

    def to_dataframe(self):
        """Long format, one row per cell.

        Returns:
            A DataFrame with hook, layer, position, auc, ci_low, ci_high, auc_shuffled,
            auc_mean_diff, n_train, n_test and C.

        >>> from tl_truth.probing import ProbeGrid
        >>> grid = ProbeGrid.from_dict({"hooks": ["blocks.0.hook_resid_post"], "positions": ["a", "b"],
        ...                             "auc": [[0.5, 0.8]]})
        >>> grid.to_dataframe()[["layer", "position", "auc"]].values.tolist()
        [[0, 'a', 0.5], [0, 'b', 0.8]]
        """
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

    @property
    def figsize(self) -> tuple[float, float]:
        """A figure size (inches) that fits the grid's rows and columns."""
        return (1.5 + 0.45 * len(self.positions), 1.5 + 0.22 * len(self.hooks))

    def plot(self, ax: Any = None, kind: str = "auc", cmap: str = "viridis"):
        """Heatmap of test AUC, layers (rows) x positions (columns), with a colorbar.

        Only without `ax` is a (pyplot) figure created; a given `ax` is drawn on, pyplot is not
        touched.

        Args:
            ax: a matplotlib Axes to draw on (default: a new pyplot figure).
            kind: which AUC: "auc" (the grid's kind), "mean_diff" or "shuffled".
            cmap: the colormap (scaled from 0.5 to 1).

        Returns:
            The matplotlib Axes (its `.figure` is the figure).

        >>> from matplotlib.figure import Figure
        >>> from tl_truth.probing import ProbeGrid
        >>> grid = ProbeGrid.from_dict({"hooks": ["blocks.0.hook_resid_post"], "positions": ["a", "b"],
        ...                             "auc": [[0.5, 0.8]]})
        >>> ax = grid.plot(ax=Figure().add_subplot())
        >>> ax.get_ylabel(), [t.get_text() for t in ax.get_xticklabels()]
        ('layer', ['a', 'b'])
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
        """The heading of the markdown report.

        Returns:
            A one-line title.

        >>> from tl_truth.probing import ProbeGrid
        >>> ProbeGrid.from_dict({"hooks": ["h"], "positions": ["a"]}).title()
        'Probe grid: test ROC AUC (logistic)'
        """
        return f"Probe grid: test ROC AUC ({self.kind})"

    def markdown_frame(self):
        """Test AUC, hooks (rows) x positions (columns).

        Returns:
            A DataFrame: a "layer" (or "hook") column, then one column per position.

        >>> from tl_truth.probing import ProbeGrid
        >>> grid = ProbeGrid.from_dict({"hooks": ["blocks.0.hook_resid_post"], "positions": ["a", "b"],
        ...                             "auc": [[0.5, 0.8]]})
        >>> grid.markdown_frame().values.tolist()
        [['0', 0.5, 0.8]]
        """
        import pandas as pd

        df = self.to_dataframe()
        auc = df.set_index(["hook", "position"])["auc"]
        out = pd.DataFrame({"layer" if None not in self.layers else "hook": self._row_labels()})
        for p in self.positions:
            out[p] = [auc[(h, p)] for h in self.hooks]
        return out

    def markdown_notes(self) -> str:
        """The line under the markdown table: the best cell and its test AUC.

        Returns:
            Markdown text (chosen by CV AUC when the grid has it, else by test AUC).

        >>> from tl_truth.probing import ProbeGrid
        >>> grid = ProbeGrid.from_dict({"hooks": ["blocks.0.hook_resid_post"], "positions": ["a", "b"],
        ...                             "auc": [[0.5, 0.8]], "auc_ci_low": [[0.4, 0.7]],
        ...                             "auc_ci_high": [[0.6, 0.9]]})
        >>> print(grid.markdown_notes(), end="")
        Best cell (test_auc): blocks.0.hook_resid_post / b, test AUC 0.800 [0.700, 0.900].
        """
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
