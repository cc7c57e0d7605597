"""`CorrectionResult`: greedy vs the most likely candidate vs the probe's choice, with CIs.

What `probe_guided_choice` (`tl_truth.studies.correction`) measured, as correction.json /
.md / .png plus one line per question (`correction_questions.jsonl`). Accuracies are means
over questions with percentile-bootstrap 95% CIs; every comparison is paired (the same
resampled questions for both sides: the same seed and the same number of questions give the
same resamples).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tl_truth.results import Result, pyplot_axes

STRATEGIES = ("greedy", "logit_choice", "probe_choice", "sample_selection", "oracle")
DIFFERENCES = (
    ("probe_choice", "greedy"),
    ("probe_choice", "logit_choice"),
    ("logit_choice", "greedy"),
    ("probe_choice", "sample_selection"),
)
ROWS_FILE = "correction_questions.jsonl"
COLORS = {
    "greedy": "#888",
    "logit_choice": "#6a9",
    "probe_choice": "#c54",
    "sample_selection": "#d96",
    "oracle": "#ddd",
}


def mean_ci(v: np.ndarray, n_boot: int = 1000, seed: int = 0) -> dict | None:
    """Mean with a percentile-bootstrap 95% CI; the resamples depend only on (seed, len(v)).

    Args:
        v: per-question values.
        n_boot: bootstrap replicates.
        seed: the bootstrap seed.

    Returns:
        `{"value", "ci", "n"}`, or None for no values.

    >>> mean_ci(np.array([1.0, 0.0, 1.0, 1.0]), n_boot=200)["value"]
    0.75
    """
    v = np.asarray(v, dtype=float)
    if len(v) == 0:
        return None
    idx = np.random.default_rng(seed).integers(0, len(v), size=(n_boot, len(v)))
    boots = v[idx].mean(1)
    lo, hi = (float(np.quantile(boots, q)) for q in (0.025, 0.975))
    return {"value": float(v.mean()), "ci": [lo, hi], "n": len(v)}


def _summaries(values: dict[str, np.ndarray], n_boot: int, seed: int) -> tuple[dict, dict]:
    """Accuracy per strategy and the paired differences (NaN: a question without that value)."""
    acc: dict[str, Any] = {}
    for name, v in values.items():
        ok = np.isfinite(v)
        acc[name] = mean_ci(v[ok], n_boot, seed) if ok.any() else None
    diffs = {}
    for a, b in DIFFERENCES:
        if a in values and b in values:
            both = np.isfinite(values[a]) & np.isfinite(values[b])
            if both.any():
                diffs[f"{a}_minus_{b}"] = mean_ci(values[a][both] - values[b][both], n_boot, seed)
    return acc, diffs


def correction_result(
    rows: Sequence[dict],
    k: int,
    sample_values: np.ndarray | None = None,
    sample_reason: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    probe: Any = None,
) -> CorrectionResult:
    """Aggregate per-question rows (`probe_guided_choice`) into a `CorrectionResult`.

    Args:
        rows: one row per question, with `correct` {greedy, logit_choice, probe_choice,
            oracle}, `candidates`, `probe_tie`, `probe_fallback`, `kind`, `task`.
        k: candidates per question asked for.
        sample_values: per question, the probe's pick among its samples (NaN: no samples);
            None: no `sample_selection`.
        sample_reason: why there is no `sample_selection`.
        n_boot: bootstrap replicates.
        seed: the bootstrap seed.
        probe: the probe (its hook, layer and position are recorded).

    Returns:
        The `CorrectionResult`.

    >>> rows = [{"task": "t", "kind": "vocabulary", "gold_in_vocabulary": True,
    ...          "candidates": [{"correct": False}, {"correct": True}],
    ...          "probe_tie": False, "probe_fallback": False,
    ...          "correct": {"greedy": False, "logit_choice": False, "probe_choice": True,
    ...                      "oracle": True}}] * 4
    >>> res = correction_result(rows, k=2, n_boot=50)
    >>> res.accuracy["probe_choice"]["value"], res.accuracy["sample_selection"]
    (1.0, None)
    >>> res.differences["probe_choice_minus_logit_choice"]["value"], res.transitions
    (1.0, {'logit_choice': {'recovered': 0, 'broken': 0}, 'probe_choice': {'recovered': 4, 'broken': 0}})
    """
    if not rows:
        raise ValueError("no questions to correct")
    values = {
        name: np.array([float(r["correct"][name]) for r in rows])
        for name in ("greedy", "logit_choice", "probe_choice", "oracle")
    }
    if sample_values is not None:
        values["sample_selection"] = np.asarray(sample_values, dtype=float)
    accuracy, differences = _summaries(values, n_boot, seed)
    accuracy = {name: accuracy.get(name) for name in STRATEGIES}
    tasks = np.array([r["task"] for r in rows])
    per_task = {}
    for t in sorted(set(tasks.tolist())):
        acc, _ = _summaries({n: v[tasks == t] for n, v in values.items()}, n_boot, seed)
        per_task[t] = {"n": int((tasks == t).sum()), **acc}
    greedy = values["greedy"]
    transitions = {
        name: {
            "recovered": int(((greedy == 0) & (values[name] == 1)).sum()),
            "broken": int(((greedy == 1) & (values[name] == 0)).sum()),
        }
        for name in ("logit_choice", "probe_choice")
    }
    vocab = [r for r in rows if r["kind"] == "vocabulary"]
    wrong = greedy == 0
    coverage = {
        "oracle": float(values["oracle"].mean()),
        "greedy_wrong": int(wrong.sum()),
        "right_candidate_when_greedy_wrong": (
            float(values["oracle"][wrong].mean()) if wrong.any() else None
        ),
        "mean_candidates": float(np.mean([len(r["candidates"]) for r in rows])),
        # branching at the greedy exact answer keeps the answer's form; at the start, the
        # candidate is the whole answer (no exact answer was located in the greedy one)
        "slot_at_exact_answer": float(np.mean([r.get("slot") == "exact" for r in rows])),
        "vocabulary_questions": len(vocab),
        "free_form_questions": len(rows) - len(vocab),
        "gold_in_vocabulary": (
            float(np.mean([bool(r.get("gold_in_vocabulary")) for r in vocab])) if vocab else None
        ),
    }
    cell = {}
    if probe is not None:
        cell = {"hook": probe.hook, "layer": probe.layer, "position": probe.position}
    return CorrectionResult(
        accuracy=accuracy,
        differences=differences,
        n=len(rows),
        k=k,
        coverage=coverage,
        transitions=transitions,
        per_task=per_task,
        probe=cell,
        n_probe_fallback=sum(bool(r["probe_fallback"]) for r in rows),
        n_probe_ties=sum(bool(r["probe_tie"]) for r in rows),
        sample_selection_reason=None if sample_values is not None else sample_reason,
        rows=list(rows),
    )


@dataclass
class CorrectionResult(Result):
    """Probe-guided answer choice against greedy decoding and the most likely candidate.

    The result protocol (`tl_truth.results.Result`): `save(dir)` writes `correction.json`,
    `.md`, `.png` and the per-question rows (`correction_questions.jsonl`);
    `CorrectionResult.load(dir)` reads them back.

    Attributes:
        accuracy: strategy (`greedy`, `logit_choice`, `probe_choice`, `sample_selection`,
            `oracle`) -> {"value", "ci", "n"}, or None (`sample_selection` without samples).
        differences: `"<a>_minus_<b>"` -> {"value", "ci", "n"}, paired over the questions
            both have.
        n: questions evaluated.
        k: candidates per question asked for.
        coverage: how often a right answer was among the candidates (`oracle`), among them
            for the questions greedy got wrong, the mean number of candidates, and for
            closed-vocabulary questions how often the vocabulary held a right answer.
        transitions: per choice, questions turned right (`recovered`) or wrong (`broken`)
            relative to greedy.
        per_task: task -> {"n", strategy -> {"value", "ci", "n"}}.
        probe: the probe's hook, layer and position.
        n_probe_fallback: questions where no candidate had a probe score (the most likely
            candidate was taken).
        n_probe_ties: questions where several candidates shared the best probe score.
        sample_selection_reason: why `sample_selection` is None.
        meta: where it came from (run, samples, model, settings).
        rows: one dict per question with every candidate (not in correction.json).

    >>> import tempfile
    >>> res = CorrectionResult({"greedy": {"value": 0.5, "ci": [0.25, 0.75], "n": 4},
    ...                         "sample_selection": None}, {}, n=4, k=2)
    >>> res.to_dataframe()[["strategy", "accuracy", "n"]].values.tolist()
    [['greedy', 0.5, 4]]
    >>> with tempfile.TemporaryDirectory() as d:
    ...     CorrectionResult.load(res.save(d)) == res
    True
    """

    accuracy: dict[str, dict | None]
    differences: dict[str, dict]
    n: int
    k: int
    coverage: dict = field(default_factory=dict)
    transitions: dict = field(default_factory=dict)
    per_task: dict = field(default_factory=dict)
    probe: dict = field(default_factory=dict)
    n_probe_fallback: int = 0
    n_probe_ties: int = 0
    sample_selection_reason: str | None = None
    meta: dict = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list, repr=False)

    result_name = "correction"
    figsize = (6.5, 3.4)

    def to_dict(self) -> dict:
        return {
            "n": self.n,
            "k": self.k,
            "accuracy": self.accuracy,
            "differences": self.differences,
            "coverage": self.coverage,
            "transitions": self.transitions,
            "per_task": self.per_task,
            "probe": self.probe,
            "n_probe_fallback": self.n_probe_fallback,
            "n_probe_ties": self.n_probe_ties,
            "sample_selection_reason": self.sample_selection_reason,
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: dict) -> CorrectionResult:
        return cls(
            d["accuracy"],
            d["differences"],
            d["n"],
            d["k"],
            d.get("coverage") or {},
            d.get("transitions") or {},
            d.get("per_task") or {},
            d.get("probe") or {},
            d.get("n_probe_fallback", 0),
            d.get("n_probe_ties", 0),
            d.get("sample_selection_reason"),
            d.get("meta") or {},
        )

    def save(self, out_dir: str | Path) -> Path:
        """correction.json / .md / .png, and one line per question (`ROWS_FILE`)."""
        out = super().save(out_dir)
        tmp = out / (ROWS_FILE + ".tmp")
        with tmp.open("w") as f:
            for row in self.rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        tmp.replace(out / ROWS_FILE)
        return out

    @classmethod
    def load(cls, out_dir: str | Path) -> CorrectionResult:
        """The result `save` wrote, with its rows when the rows file is there."""
        res = super().load(out_dir)
        rows = Path(out_dir) / ROWS_FILE
        if rows.exists():
            with rows.open() as f:
                res.rows = [json.loads(line) for line in f if line.strip()]
        return res

    def to_dataframe(self):
        import pandas as pd

        groups = {"all": {"n": self.n, **self.accuracy}}
        groups |= {f"task:{t}": v for t, v in self.per_task.items()}
        rows = [
            {
                "group": group,
                "strategy": name,
                "accuracy": v["value"],
                "ci_low": v["ci"][0],
                "ci_high": v["ci"][1],
                "n": v.get("n", block.get("n")),
            }
            for group, block in groups.items()
            for name in STRATEGIES
            for v in [block.get(name)]
            if isinstance(v, dict) and "value" in v
        ]
        return pd.DataFrame(
            rows, columns=["group", "strategy", "accuracy", "ci_low", "ci_high", "n"]
        )

    def plot(self, ax=None):
        """Accuracy per strategy with 95% CIs (oracle = any candidate right)."""
        ax = pyplot_axes(ax, self.figsize)
        names = [k for k in STRATEGIES if self.accuracy.get(k)]
        vals = [self.accuracy[k]["value"] for k in names]
        err = np.array(
            [
                [v - self.accuracy[k]["ci"][0], self.accuracy[k]["ci"][1] - v]
                for k, v in zip(names, vals, strict=True)
            ]
        ).T.reshape(2, len(names))
        ax.bar(names, vals, yerr=err, capsize=4, color=[COLORS[k] for k in names])
        ax.set_ylim(0, 1)
        ax.tick_params(axis="x", labelrotation=20)
        ax.set_ylabel("accuracy")
        ax.set_title(f"probe-guided choice among k={self.k} candidates (n={self.n})")
        return ax

    def title(self) -> str:
        return f"Probe-guided answer choice (k = {self.k}, {self.n} questions)"

    def markdown_frame(self):
        """Groups (all, per task) x strategies: accuracy [95% CI]."""
        import pandas as pd

        df = self.to_dataframe()
        names = [k for k in STRATEGIES if self.accuracy.get(k)]
        out = []
        for group, sub in df.groupby("group", sort=False):
            by = sub.set_index("strategy")
            row = {"group": group.replace(":", ": ", 1), "n": int(sub["n"].max())}
            for k in names:
                v = by.loc[k] if k in by.index else None
                row[k] = (
                    None
                    if v is None
                    else (f"{v['accuracy']:.3f} [{v['ci_low']:.3f}, {v['ci_high']:.3f}]")
                )
            out.append(row)
        return pd.DataFrame(out, columns=["group", "n", *names])

    def markdown_notes(self) -> str:
        lines = [
            f"- {name.replace('_minus_', ' minus ')} (paired, {d['n']} questions): "
            f"{d['value']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]"
            for name, d in self.differences.items()
            if d
        ]
        c = self.coverage
        if c:
            lines.append(
                f"- a right answer among the candidates (oracle): {c['oracle']:.3f}; for the "
                f"{c['greedy_wrong']} questions greedy got wrong: "
                + ("n/a" if c["right_candidate_when_greedy_wrong"] is None
                   else f"{c['right_candidate_when_greedy_wrong']:.3f}")
                + f"; {c['mean_candidates']:.2f} candidates per question, branching at the "
                f"greedy exact answer for {c.get('slot_at_exact_answer', 0):.0%} of questions "
                "(else at the answer's start)"
            )  # fmt: skip
        for name, t in self.transitions.items():
            lines.append(f"- {name}: {t['recovered']} recovered, {t['broken']} broken vs greedy")
        if self.probe:
            lines.append(f"- probe: {self.probe.get('hook')} at {self.probe.get('position')}")
        if self.n_probe_ties:
            lines.append(
                f"- {self.n_probe_ties} questions had several candidates with the best probe "
                "score (the probe's position precedes them, or they share that token, e.g. "
                "the first token at `exact_first`): the more likely one won."
            )
        if self.n_probe_fallback:
            lines.append(
                f"- {self.n_probe_fallback} questions had no candidate the probe could score: "
                "the most likely candidate was taken."
            )
        if self.sample_selection_reason:
            lines.append(f"- sample_selection: none ({self.sample_selection_reason})")
        return "\n".join(lines) + "\n" if lines else ""
