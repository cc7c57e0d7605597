"""Answer selection: among K samples, take the one the correctness probe trusts most.

Compared on the same questions with greedy decoding, a random sample (its exact expectation,
n_correct / K), a random sample among those the probe can score (`random_located`: the probe
needs a located exact answer, and that filter alone favours right answers), majority vote over
answer clusters and the oracle (any sample right, pass@K).
Confidence intervals are percentile bootstraps over questions; differences against greedy are
paired (the same resampled questions for both).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from tl_truth.results import Result, pyplot_axes
from tl_truth.studies.error_taxonomy import ERROR_TYPES, Thresholds, error_types
from tl_truth.studies.resampling import SampleSet

STRATEGIES = ("greedy", "random", "majority", "probe")
ORDER = ("greedy", "random", "random_located", "majority", "probe", "oracle")
COLORS = {
    "greedy": "#888",
    "random": "#aaa",
    "random_located": "#bbb",
    "majority": "#6a9",
    "probe": "#c54",
    "oracle": "#ddd",
}


def majority_choice(s: SampleSet) -> float:
    """Correctness of the largest answer cluster (refusals only win when nothing else exists).

    Args:
        s: the question's samples.

    Returns:
        1.0 if the majority answer is correct, else 0.0.

    >>> def rec(answer, i=0, qid="q"):
    ...     ok = answer == "Paris"
    ...     return {"task": "t", "id": qid, "split": "test", "question": "Capital of France?",
    ...             "gold": "Paris", "answer": answer, "exact_answer": answer, "correct": ok,
    ...             "category": "correct" if ok else "incorrect", "sample_index": i}
    >>> s = SampleSet(rec("Lyon"), [rec(a, i) for i, a in enumerate(["Paris", "Paris", "Lyon"])])
    >>> majority_choice(s)
    1.0
    """
    pool = s.answers or s.clusters
    if not pool:
        return 0.0
    return float(pool[0].correct)  # clusters are sorted largest first, ties by first seen


def probe_choice(s: SampleSet, scores: Sequence[float]) -> float | None:
    """Correctness of the sample with the highest probe score.

    Args:
        s: the question's samples.
        scores: the probe's score per sample (NaN: not scored).

    Returns:
        1.0 or 0.0; None if no sample was scored.

    >>> def rec(answer, i=0, qid="q"):
    ...     ok = answer == "Paris"
    ...     return {"task": "t", "id": qid, "split": "test", "question": "Capital of France?",
    ...             "gold": "Paris", "answer": answer, "exact_answer": answer, "correct": ok,
    ...             "category": "correct" if ok else "incorrect", "sample_index": i}
    >>> s = SampleSet(rec("Lyon"), [rec(a, i) for i, a in enumerate(["Paris", "Paris", "Lyon"])])
    >>> probe_choice(s, [0.2, 0.1, 0.9]), probe_choice(s, [float("nan")] * 3)
    (0.0, None)
    """
    sc = np.asarray(scores, dtype=float)
    if len(sc) != s.k:
        raise ValueError(f"{s.key}: {len(sc)} scores for {s.k} samples")
    if not np.isfinite(sc).any():
        return None
    return float(bool(s.samples[int(np.nanargmax(sc))]["correct"]))


def per_question(
    sets: Sequence[SampleSet], scores: Mapping[tuple[str, str], Sequence[float]] | None
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Each strategy's correctness per question, and which fell back to majority vote.

    Args:
        sets: the questions' samples.
        scores: (task, id) -> the probe's score per sample; None: no probe strategies.

    Returns:
        Strategy -> correctness per question (0/1; the expectation for `random`), and a
        mask of the questions where no sample had a probe score.

    >>> def rec(answer, i=0, qid="q"):
    ...     ok = answer == "Paris"
    ...     return {"task": "t", "id": qid, "split": "test", "question": "Capital of France?",
    ...             "gold": "Paris", "answer": answer, "exact_answer": answer, "correct": ok,
    ...             "category": "correct" if ok else "incorrect", "sample_index": i}
    >>> s = SampleSet(rec("Lyon"), [rec(a, i) for i, a in enumerate(["Paris", "Paris", "Lyon"])])
    >>> values, fallback = per_question([s], None)
    >>> {name: v.tolist() for name, v in values.items()}
    {'greedy': [0.0], 'random': [0.6666666666666666], 'majority': [1.0], 'oracle': [1.0]}
    """
    out = {name: np.zeros(len(sets)) for name in (*STRATEGIES, "random_located", "oracle")}
    fallback = np.zeros(len(sets), dtype=bool)
    for i, s in enumerate(sets):
        out["greedy"][i] = float(bool(s.greedy["correct"]))
        out["random"][i] = s.n_correct / s.k
        out["majority"][i] = majority_choice(s)
        out["oracle"][i] = float(s.n_correct > 0)
        pick = probe_choice(s, scores[s.key]) if scores is not None else None
        if pick is None:
            fallback[i] = True
            pick = out["majority"][i]
        out["probe"][i] = pick
        if scores is not None:
            # The probe can only pick a sample it can score (exact answer located), and wrong
            # answers are located less often: a random pick among those same samples is the
            # control that separates the probe's knowledge from that filter.
            ok = np.isfinite(np.asarray(scores[s.key], dtype=float))
            located = [bool(r["correct"]) for r, keep in zip(s.samples, ok, strict=True) if keep]
            out["random_located"][i] = np.mean(located) if located else out["majority"][i]
    if scores is None:
        del out["probe"], out["random_located"]
    return out, fallback


def _boot(values: dict[str, np.ndarray], n_boot: int, seed: int) -> dict[str, dict]:
    """Mean with percentile CI per strategy, and paired differences against greedy."""
    names = list(values)
    n = len(values[names[0]])
    if n == 0:
        return {k: {"value": None, "ci": [None, None]} for k in names}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))  # the same resampled questions for every value

    def mean_ci(v: np.ndarray) -> dict:
        boots = v[idx].mean(1)
        return {
            "value": float(v.mean()),
            "ci": [float(np.quantile(boots, q)) for q in (0.025, 0.975)],
        }

    out = {}
    for k in names:
        out[k] = mean_ci(values[k])
        # paired differences: the probe against greedy and against its fair controls
        for ref in ("greedy", "majority", "random_located"):
            if k == ref or ref not in values or (ref != "greedy" and k != "probe"):
                continue
            out[k][f"minus_{ref}"] = mean_ci(values[k] - values[ref])
    return out


@dataclass
class SelectionResult(Result):
    """Accuracy of each selection strategy, overall, per task and per error type.

    The result protocol (`tl_truth.results.Result`): `save(dir)` writes `selection.json`, `.md`
    and `.png`; `SelectionResult.load(dir)` reads it back.

    Attributes:
        accuracy: strategy -> {"value", "ci"} (and paired differences `minus_<ref>`).
        per_task: task -> {"n", strategy -> {"value", "ci"}}.
        per_type: error type -> the same, for the questions of that type.
        pass_at_k: the oracle: any of the K samples right (overall and for greedy-wrong).
        n: questions evaluated.
        k: samples per question.
        n_probe_fallback: questions where the probe fell back to majority vote.
        meta: where the samples came from.

    >>> import tempfile
    >>> res = SelectionResult({"greedy": {"value": 0.5, "ci": [0.25, 0.75]}}, {}, {}, {}, n=4, k=2)
    >>> res.to_dataframe()[["strategy", "accuracy", "n"]].values.tolist()
    [['greedy', 0.5, 4]]
    >>> with tempfile.TemporaryDirectory() as d:
    ...     SelectionResult.load(res.save(d)) == res
    True
    """

    accuracy: dict[str, dict]
    per_task: dict[str, dict]
    per_type: dict[str, dict]
    pass_at_k: dict
    n: int
    k: int
    n_probe_fallback: int = 0
    meta: dict = field(default_factory=dict)

    result_name = "selection"
    figsize = (6.5, 3.4)

    def to_dict(self) -> dict:
        return {
            "n": self.n,
            "k": self.k,
            "accuracy": self.accuracy,
            "per_task": self.per_task,
            "per_type": self.per_type,
            "pass_at_k": self.pass_at_k,
            "n_probe_fallback": self.n_probe_fallback,
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: dict) -> SelectionResult:
        return cls(
            d["accuracy"],
            d["per_task"],
            d["per_type"],
            d["pass_at_k"],
            d["n"],
            d["k"],
            d.get("n_probe_fallback", 0),
            d.get("meta") or {},
        )

    def to_dataframe(self):
        import pandas as pd

        rows = []
        groups = {"all": self.accuracy, **{f"task:{t}": v for t, v in self.per_task.items()}}
        groups |= {f"type:{t}": v for t, v in self.per_type.items()}
        for group, block in groups.items():
            for name, v in block.items():
                if isinstance(v, dict) and "value" in v:
                    rows.append(
                        {
                            "group": group,
                            "strategy": name,
                            "accuracy": v["value"],
                            "ci_low": v["ci"][0],
                            "ci_high": v["ci"][1],
                            "n": block.get("n", self.n)
                            if isinstance(block.get("n"), int)
                            else self.n,
                        }
                    )
        return pd.DataFrame(rows)

    def plot(self, ax=None):
        """Accuracy per strategy with 95% CIs (oracle = any of the K samples right)."""
        ax = pyplot_axes(ax, self.figsize)
        names = [k for k in ORDER if k in self.accuracy]
        vals = [self.accuracy[k]["value"] for k in names]
        err = np.array(
            [
                [v - self.accuracy[k]["ci"][0], self.accuracy[k]["ci"][1] - v]
                for k, v in zip(names, vals, strict=True)
            ]
        ).T
        ax.bar(
            names,
            vals,
            yerr=err,
            capsize=4,
            color=[COLORS[k] for k in names],
        )
        ax.set_ylim(0, 1)
        ax.tick_params(axis="x", labelrotation=20)
        ax.set_ylabel("accuracy")
        ax.set_title(f"answer selection among K={self.k} samples (n={self.n})")
        return ax

    def title(self) -> str:
        return f"Answer selection (K = {self.k}, {self.n} questions)"

    def markdown_frame(self):
        """Groups (all, per task, per error type) x strategies: accuracy [95% CI]."""
        import pandas as pd

        df = self.to_dataframe()
        names = [k for k in ORDER if k in self.accuracy]
        rows = []
        for group, sub in df.groupby("group", sort=False):
            by = sub.set_index("strategy")
            row = {"group": group.replace(":", ": ", 1), "n": int(sub["n"].iloc[0])}
            for k in names:
                v = by.loc[k] if k in by.index else None
                row[k] = (
                    None
                    if v is None or pd.isna(v["accuracy"])
                    else f"{v['accuracy']:.3f} [{v['ci_low']:.3f}, {v['ci_high']:.3f}]"
                )
            rows.append(row)
        return pd.DataFrame(rows, columns=["group", "n", *names])

    def markdown_notes(self) -> str:
        lines = []
        for k in (k for k in ORDER if k in self.accuracy):
            for ref in ("greedy", "majority", "random_located"):
                d = self.accuracy[k].get(f"minus_{ref}")
                if d:
                    lines.append(
                        f"- {k} minus {ref} (paired): {d['value']:+.3f} "
                        f"[{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]"
                    )
        if self.n_probe_fallback:
            lines.append(
                f"- {self.n_probe_fallback} questions had no sample with a probe score "
                "(no exact answer located in any sample): probe fell back to majority."
            )
        return "\n".join(lines) + "\n" if lines else ""


def select_answers(
    sets: Sequence[SampleSet],
    scores: Mapping[tuple[str, str], Sequence[float]] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    split: str | None = "test",
) -> SelectionResult:
    """Greedy vs random vs majority vs probe (highest score among the K samples).

    Args:
        sets: the questions' samples.
        scores: (task, id) -> the probe's score per sample (NaN where it has no position);
            None: no probe strategies.
        n_boot: bootstrap replicates (over questions) for the CIs.
        seed: the bootstrap seed.
        split: only the questions of this split (the probe was trained on "train"); None:
            every question.

    Returns:
        The `SelectionResult`.

    >>> def rec(answer, i=0, qid="q"):
    ...     ok = answer == "Paris"
    ...     return {"task": "t", "id": qid, "split": "test", "question": "Capital of France?",
    ...             "gold": "Paris", "answer": answer, "exact_answer": answer, "correct": ok,
    ...             "category": "correct" if ok else "incorrect", "sample_index": i}
    >>> sets = [SampleSet(rec("Lyon", qid="a"), [rec("Paris", 0, "a"), rec("Lyon", 1, "a")]),
    ...         SampleSet(rec("Paris", qid="b"), [rec("Paris", 0, "b"), rec("Paris", 1, "b")])]
    >>> scores = {s.key: [0.9 if r["correct"] else 0.1 for r in s.samples] for s in sets}
    >>> res = select_answers(sets, scores, n_boot=100)
    >>> res.accuracy["greedy"]["value"], res.accuracy["probe"]["value"], res.n
    (0.5, 1.0, 2)
    """
    if split is not None:
        sets = [s for s in sets if s.greedy["split"] == split]
    if not sets:
        raise ValueError(f"no questions to select among (split={split!r})")
    k = min(s.k for s in sets)
    values, fallback = per_question(sets, scores)
    overall = _boot(values, n_boot, seed)

    def group(m: np.ndarray) -> dict:
        return {"n": int(m.sum()), **_boot({k_: v[m] for k_, v in values.items()}, n_boot, seed)}

    tasks = np.array([s.greedy["task"] for s in sets])
    per_task = {t: group(tasks == t) for t in sorted(set(tasks.tolist()))}
    per_type = {}
    if len({s.k for s in sets}) == 1 and k >= 2:
        th = Thresholds.for_k(k)
        types = [error_types(s, th) for s in sets]
        for name in ERROR_TYPES:
            m = np.array([t[name] for t in types])
            if m.any():
                per_type[name] = group(m)
    wrong = values["greedy"] == 0
    pak = {
        "k": k,
        "all": float(values["oracle"].mean()),
        "greedy_wrong": float(values["oracle"][wrong].mean()) if wrong.any() else None,
        "n_greedy_wrong": int(wrong.sum()),
    }
    return SelectionResult(
        overall, per_task, per_type, pak, len(sets), k, int(fallback.sum()) if scores else 0
    )
