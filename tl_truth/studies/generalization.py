"""Generalisation across tasks: train the probe on task A, test it on task B.

For each task A the (hook, position) is A's own best by cross-validation on A's training split
(among the exact-answer positions by default, as in the paper); the probe fit there on A's train
split is scored on every task B's test split. The paper's reading subtracts the logit baseline
(the logit aggregation that is best on B's train split, scored on the same B test rows): a probe
that only carries "this answer looks confident" shows up as ~0 off the diagonal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from tl_truth.answers.positions import EXACT_POSITIONS
from tl_truth.probing.activations import ActivationStore
from tl_truth.probing.baselines import LOGIT_SCORES, logit_scores
from tl_truth.probing.grid import fit_probe_grid
from tl_truth.probing.metrics import bootstrap_auc_ci, roc_auc
from tl_truth.results import Result, markdown_table
from tl_truth.studies.main_job import select_cell

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


def _value(x: float) -> float | None:
    """A metric as stored: NaN (e.g. one class only) -> None."""
    x = float(x)
    return None if np.isnan(x) else x


def _train_best_logit(logits: dict[str, np.ndarray], y: np.ndarray, rows: np.ndarray) -> str | None:
    best, best_auc = None, -1.0
    for name in LOGIT_SCORES:
        keep = rows & ~np.isnan(logits[name])
        if keep.sum() == 0 or y[keep].min() == y[keep].max():
            continue
        auc = roc_auc(logits[name][keep], y[keep])
        if auc > best_auc:
            best, best_auc = name, auc
    return best


def generalization_matrix(
    store: ActivationStore,
    records: Sequence[dict],
    positions: Sequence[str] | None = EXACT_POSITIONS,
    min_per_class: int = 5,
    n_boot: int = 1000,
    seed: int = 0,
    progress: bool = True,
) -> GeneralizationResult:
    """The train-task x test-task AUC matrix from one captured run holding several tasks.

    `records` are the run's generations (same order as the store's examples). `positions`: the
    candidate positions for each task's best cell (None: every captured position). A task with
    fewer than `min_per_class` correct or wrong training answers gets no probe (its row is
    empty, with the reason in `cells`); a cell whose test rows hold fewer than `min_per_class`
    of either class gets no AUC (the counts are in `n_test`).
    """
    ex = store.examples
    if len(records) != len(ex) or any(
        (r["task"], r["id"]) != (e["task"], e["id"]) for r, e in zip(records, ex, strict=True)
    ):
        raise ValueError("records do not follow the activation store's examples")
    tasks = list(dict.fromkeys(e["task"] for e in ex))
    skills = {
        t: next(r.get("skill") or "unknown" for r in records if r["task"] == t) for t in tasks
    }
    cand = [p for p in (positions or store.positions) if p in store.positions]
    if not cand:
        raise ValueError(f"none of the positions {positions} was captured ({store.positions})")
    acts, valid = store.load(positions=cand)
    y = store.labels
    task_of = np.array([e["task"] for e in ex])
    train, test = store.split_mask("train"), store.split_mask("test")
    logits = logit_scores(records)
    # Each test task's logit baseline is the aggregation (mean / min / max, whole answer or
    # exact tokens) with the best AUC on that task's *train* answers, so the baseline is not
    # tuned on the test rows it is compared on.
    baseline = {
        t: _train_best_logit(logits, y.numpy(), (task_of == t) & train.numpy()) for t in tasks
    }

    cells: dict[str, dict] = {}
    probes = {}
    for t in tasks:
        m = torch.as_tensor(task_of == t)
        tr = m & train
        n_pos, n_neg = int(y[tr].sum()), int((1 - y[tr]).sum())
        if min(n_pos, n_neg) < min_per_class:
            cells[t] = {
                "skipped": f"{n_pos} correct / {n_neg} wrong training answers",
                "n_train_correct": n_pos,
                "n_train_wrong": n_neg,
            }
            continue
        grid = fit_probe_grid(
            acts[m],
            y[m],
            train[m],
            test[m],
            store.hooks,
            cand,
            valid=valid[m],
            n_boot=0,
            seed=seed,
            model=store.model,
            shuffled_control=False,
            progress=progress,
        )
        best = select_cell(grid, tuple(cand))
        if best is None:  # e.g. too few examples at every position for CV
            cells[t] = {
                "skipped": "no cell has a score (too few examples everywhere)",
                "n_train_correct": n_pos,
                "n_train_wrong": n_neg,
            }
            continue
        cells[t] = {
            "hook": best["hook"],
            "position": best["position"],
            "cv_auc": best["cv_auc"],
            "n_train_correct": n_pos,
            "n_train_wrong": n_neg,
        }
        probes[t] = grid.probe(best["hook"], best["position"])

    n = len(tasks)
    auc = [[None] * n for _ in range(n)]
    ci = [[[None, None] for _ in range(n)] for _ in range(n)]
    logit_auc = [[None] * n for _ in range(n)]
    # n_test[a][b] = [correct, wrong] test answers of b that have a's probe position
    n_test: dict[str, dict[str, list[int]]] = {a: {} for a in tasks}
    for i, a in enumerate(tasks):
        if a not in probes:
            continue
        probe = probes[a]
        h, p = store.hooks.index(probe.hook), cand.index(probe.position)
        for j, b in enumerate(tasks):
            rows = torch.as_tensor(task_of == b) & test & valid[:, p]
            yb = y[rows].numpy()
            n_test[a][b] = [int(yb.sum()), int((1 - yb).sum())]
            if min(n_test[a][b]) < min_per_class:
                continue  # an AUC on a handful of examples of one class means little
            scores = probe.decision_function(acts[rows, h, p]).double().numpy()
            auc[i][j] = _value(roc_auc(scores, yb))
            lo, hi = bootstrap_auc_ci(scores, yb, n_boot=n_boot, seed=seed)
            ci[i][j] = [_value(lo), _value(hi)]
            r = rows.numpy()
            name = baseline[b]
            if name is not None and not np.isnan(logits[name][r]).any():
                logit_auc[i][j] = _value(roc_auc(logits[name][r], yb))
    return GeneralizationResult(
        tasks,
        skills,
        auc,
        ci,
        logit_auc,
        cells,
        n_test,
        meta={
            "model": store.meta["model"],
            "positions": cand,
            "logit_baseline": baseline,
            "logit_baseline_rule": "per test task, the best of "
            + ", ".join(LOGIT_SCORES)
            + " on that task's train answers",
        },
    )
