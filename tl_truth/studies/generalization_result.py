"""`GeneralizationResult`: the train-task x test-task AUC matrix and how to read it.

The matrix of probe AUCs (rows: the task the probe was trained on, columns: the task it is
tested on), the logit baseline on the same test rows, and what each task's probe cell was.
It renders the two heatmaps (AUC, AUC minus the logit baseline), the markdown tables and the
mean difference in-task / same skill / across skills. Kept apart from the computation
(`tl_truth.studies.generalization.generalization_matrix`), which needs an activation store.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tl_truth.results import Result, markdown_table

PANELS = {
    "auc": ("probe AUC", "viridis", (0.3, 1.0)),
    "minus_logit": ("AUC minus logit baseline", "RdBu_r", (-0.3, 0.3)),
}


def _r4(x: float) -> float:
    return round(x, 4)


@dataclass
class GeneralizationResult(Result):
    """AUC of the probe trained on `tasks[i]` (row) tested on `tasks[j]` (column).

    The result protocol (`tl_truth.results.Result`): `save(dir)` writes `generalization.json`,
    `.md` and `.png`; `GeneralizationResult.load(dir)` reads it back.

    Attributes:
        tasks: the tasks, in the matrices' order (rows: train, columns: test).
        skills: task -> its skill (e.g. "factual", "math").
        auc: `auc[i][j]`, the AUC of task i's probe on task j's test rows (None: no probe,
            or too few test answers of a class).
        ci: `ci[i][j]`, its 95% bootstrap CI.
        logit_auc: the logit baseline's AUC on the same test rows.
        cells: task -> its probe's hook, position and train CV AUC, or why it has none.
        n_test: train task -> test task -> [correct, wrong] test answers scored.
        meta: the model, the candidate positions, the logit baseline per test task.

    >>> import tempfile
    >>> cell = {"hook": "blocks.1.hook_resid_post", "position": "exact_last", "cv_auc": 0.9}
    >>> res = GeneralizationResult(
    ...     tasks=["capitals", "elements"], skills={"capitals": "factual", "elements": "factual"},
    ...     auc=[[0.9, 0.7], [0.6, 0.8]], ci=[[[0.8, 1.0], [0.6, 0.8]], [[0.5, 0.7], [0.7, 0.9]]],
    ...     logit_auc=[[0.7, 0.6], [0.6, 0.7]], cells={"capitals": cell, "elements": cell},
    ...     n_test={a: {b: [10, 10] for b in ["capitals", "elements"]}
    ...             for a in ["capitals", "elements"]})
    >>> res.auc_minus_logit
    [[0.2, 0.1], [0.0, 0.1]]
    >>> with tempfile.TemporaryDirectory() as d:
    ...     GeneralizationResult.load(res.save(d)) == res
    True
    """

    tasks: list[str]
    skills: dict[str, str]
    auc: list[list[float | None]]
    ci: list[list[list[float | None]]]
    logit_auc: list[list[float | None]]
    cells: dict[str, dict]  # task -> chosen hook/position and why, or why none
    n_test: dict[str, dict[str, list[int]]]  # train task -> test task -> [correct, wrong]
    meta: dict = field(default_factory=dict)

    result_name = "generalization"

    @property
    def auc_minus_logit(self) -> list[list[float | None]]:
        """AUC minus the logit baseline's AUC, both as reported (4 places): the difference of
        the two numbers in the tables, not of their unrounded values."""
        return [
            [
                None if a is None or b is None else _r4(_r4(a) - _r4(b))
                for a, b in zip(ra, rb, strict=True)
            ]
            for ra, rb in zip(self.auc, self.logit_auc, strict=True)
        ]

    def skill_summary(self) -> dict:
        """Mean AUC minus logit: diagonal, same skill off-diagonal, across skills."""
        groups: dict[str, list[float]] = {"in_task": [], "same_skill": [], "cross_skill": []}
        aml = self.auc_minus_logit
        for i, a in enumerate(self.tasks):
            for j, b in enumerate(self.tasks):
                v = aml[i][j]
                if v is None:
                    continue
                if i == j:
                    groups["in_task"].append(v)
                elif self.skills[a] == self.skills[b]:
                    groups["same_skill"].append(v)
                else:
                    groups["cross_skill"].append(v)
        return {
            k: {"mean": float(np.mean(v)) if v else None, "n_pairs": len(v)}
            for k, v in groups.items()
        }

    def to_dict(self) -> dict:
        return {
            "tasks": self.tasks,
            "skills": self.skills,
            "auc": self.auc,
            "auc_ci": self.ci,
            "logit_auc": self.logit_auc,
            "auc_minus_logit": self.auc_minus_logit,
            "cells": self.cells,
            "n_test": self.n_test,
            "skill_summary": self.skill_summary(),
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: dict) -> GeneralizationResult:
        return cls(
            d["tasks"],
            d["skills"],
            d["auc"],
            d["auc_ci"],
            d["logit_auc"],
            d["cells"],
            d["n_test"],
            d.get("meta") or {},
        )

    def to_dataframe(self):
        import pandas as pd

        rows = []
        aml = self.auc_minus_logit
        for i, a in enumerate(self.tasks):
            for j, b in enumerate(self.tasks):
                rows.append(
                    {
                        "train": a,
                        "test": b,
                        "auc": self.auc[i][j],
                        "ci_low": self.ci[i][j][0],
                        "ci_high": self.ci[i][j][1],
                        "logit_auc": self.logit_auc[i][j],
                        "auc_minus_logit": aml[i][j],
                        "same_skill": self.skills[a] == self.skills[b],
                    }
                )
        return pd.DataFrame(rows)

    # -- figure

    @property
    def figsize(self) -> tuple[float, float]:
        return (4.2 * 2 + 1, 0.55 * len(self.tasks) + 2.2)

    def _draw(self, ax, kind: str) -> None:
        title, cmap, lim = PANELS[kind]
        n = len(self.tasks)
        m = self.auc if kind == "auc" else self.auc_minus_logit
        labels = [f"{t}\n({self.skills[t]})" for t in self.tasks]
        v = np.array([[np.nan if x is None else x for x in r] for r in m], dtype=float)
        im = ax.imshow(v, cmap=cmap, vmin=lim[0], vmax=lim[1])
        for i in range(n):
            for j in range(n):
                if not np.isnan(v[i, j]):
                    ax.text(
                        j,
                        i,
                        f"{v[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="w" if cmap == "viridis" and v[i, j] < 0.7 else "k",
                    )
        ax.set_xticks(range(n))
        ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(n))
        ax.set_yticklabels(labels, fontsize=7)
        ax.set_xlabel("test task")
        ax.set_ylabel("train task")
        ax.set_title(title)
        ax.figure.colorbar(im, ax=ax)

    def plot(self, ax=None, kind: str | None = None):
        """Heatmaps (rows: train, columns: test) of the AUC (`kind="auc"`) and of the AUC minus
        the logit baseline (`"minus_logit"`).

        With no `ax`, a new (pyplot) figure holds both panels, or only `kind`; the first Axes is
        returned. A given `ax` gets one panel (`kind`, default "auc"); a pair of Axes gets both.
        """
        if kind is not None and kind not in PANELS:
            raise ValueError(f"kind must be one of {list(PANELS)}, got {kind!r}")
        if ax is None:
            import matplotlib.pyplot as plt

            kinds = [kind] if kind else list(PANELS)
            w, h = self.figsize
            fig, axes = plt.subplots(1, len(kinds), figsize=(w * len(kinds) / 2, h), squeeze=False)
            for a, k in zip(axes[0], kinds, strict=True):
                self._draw(a, k)
            fig.tight_layout()
            return axes[0][0]
        if isinstance(ax, (list, tuple, np.ndarray)):
            for a, k in zip(ax, PANELS, strict=False):
                self._draw(a, k)
            return ax
        self._draw(ax, kind or "auc")
        return ax

    def figure(self):
        """Both heatmaps side by side (built without pyplot)."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=self.figsize)
        for a, k in zip(fig.subplots(1, 2), PANELS, strict=True):
            self._draw(a, k)
        fig.tight_layout()
        return fig

    # -- markdown

    def title(self) -> str:
        return "Generalisation: probe AUC (rows train, columns test)"

    def _order(self) -> list[str]:
        return sorted(self.tasks, key=lambda t: (self.skills[t], self.tasks.index(t)))

    def _matrix(self, column: str):
        """`to_dataframe()[column]` as train (rows) x test (columns), tasks grouped by skill."""
        import pandas as pd

        df = self.to_dataframe().set_index(["train", "test"])[column]
        order = self._order()
        out = pd.DataFrame({"train \\ test": order})
        for t in order:
            out[f"{t} ({self.skills[t]})"] = [df[(a, t)] for a in order]
        return out

    def markdown_frame(self):
        return self._matrix("auc")

    def markdown_notes(self) -> str:
        import pandas as pd

        def f(x):
            return "-" if x is None else f"{x:.3f}"

        order = self._order()
        baseline = self.meta.get("logit_baseline", {})
        lines = [
            "## AUC minus the logit baseline on the same test rows",
            "",
            "Baseline per test task (best logit aggregation on its train split): "
            + ", ".join(f"{t} {baseline.get(t)}" for t in order),
            "",
            markdown_table(self._matrix("auc_minus_logit")),
        ]
        rows = []
        for t in order:
            c, i = self.cells[t], self.tasks.index(t)
            n = self.n_test.get(t, {}).get(t)
            lo, hi = self.ci[i][i]
            rows.append(
                {
                    "task": t,
                    "skill": self.skills[t],
                    "its probe's cell (train CV AUC)": f"{c['hook']} / {c['position']} "
                    f"({c['cv_auc']:.3f})"
                    if "hook" in c
                    else f"no probe: {c.get('skipped', '-')}",
                    "own test AUC [95% CI]": "-"
                    if self.auc[i][i] is None
                    else f"{self.auc[i][i]:.3f} [{lo:.3f}, {hi:.3f}]",
                    "own test correct / wrong": f"{n[0]} / {n[1]}" if n else "-",
                }
            )
        lines.append(markdown_table(pd.DataFrame(rows)))
        lines.append(
            "Empty cells: no probe for the row's task, or fewer than 5 correct or wrong "
            "test answers with that probe's position in the column's task."
        )
        s = self.skill_summary()
        lines += [
            "",
            "Mean AUC minus logit: "
            + ", ".join(f"{k} {f(v['mean'])} ({v['n_pairs']} pairs)" for k, v in s.items()),
        ]
        return "\n".join(lines) + "\n"
