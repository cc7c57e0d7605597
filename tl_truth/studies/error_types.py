"""Error types from K samples (Orgad et al. 2024, section 5), and probes that predict them.

The taxonomy reads only how a question's K samples distribute over distinct answers (clusters,
see `resampling.py`). Types are not mutually exclusive. The paper's thresholds were set for
K = 30; ours are fractions of K (`Thresholds.for_k`), so K = 10 and K = 30 mean the same:

- `refuses`:             refusals in at least half of the samples
- `correct_all`:         every sample correct
- `correct_most`:        at least half correct, not all
- `incorrect_all`:       every sample is the same wrong answer
- `incorrect_most`:      one wrong answer in at least half of the samples, not all
- `two_competing`:       the correct answer and one wrong answer each in at least a quarter
- `many_no_correct`:     at least K/3 distinct answers (and at least 3), none correct
- `many_with_correct`:   at least K/3 distinct answers (and at least 3), some sample correct

A probe per type asks the paper's question: does the greedy answer's activation (at the best
(hook, position) of the correctness probe) already tell which kind of question this is?

The taxonomy itself (`ERROR_TYPES`, `Thresholds`, `error_types`) lives in
`tl_truth.studies.error_taxonomy` (re-exported here).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from tl_truth.probing.metrics import bootstrap_auc_ci, roc_auc
from tl_truth.probing.probe import Probe
from tl_truth.results import Result, pyplot_axes
from tl_truth.studies.error_taxonomy import _DEFINITIONS, ERROR_TYPES, Thresholds, error_types
from tl_truth.studies.resampling import SampleSet

__all__ = [
    "ERROR_TYPES",
    "ErrorTypeReport",
    "Thresholds",
    "error_type_report",
    "error_types",
    "type_probes",
]


@dataclass
class ErrorTypeReport(Result):
    """Types per question, their distribution per task, and a probe per type.

    The result protocol (`tl_truth.results.Result`): `save(dir)` writes `error_types.json`,
    `.md` and `.png`; `ErrorTypeReport.load(dir)` reads it back.

    Attributes:
        thresholds: the `Thresholds` the types were read with.
        types: per question, type name -> bool (follows `keys`).
        keys: the questions' (task, id).
        tasks: the questions' tasks.
        probes: type -> its probe's `auc`, `ci`, train/test counts (or why it was skipped).
        cell: the (hook, position) the probes read, or None.

    >>> import tempfile
    >>> def rec(answer, i=0, qid="q"):
    ...     ok = answer == "Paris"
    ...     return {"task": "t", "id": qid, "split": "test", "question": "Capital of France?",
    ...             "gold": "Paris", "answer": answer, "exact_answer": answer, "correct": ok,
    ...             "category": "correct" if ok else "incorrect", "sample_index": i}
    >>> s = SampleSet(rec("Lyon"), [rec(a, i) for i, a in enumerate(["Paris", "Paris", "Lyon"])])
    >>> report = ErrorTypeReport(Thresholds.for_k(3), [error_types(s)], [s.key], ["t"])
    >>> report.distribution()["all"]["correct_most"], report.untyped()
    (1.0, 0)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     ErrorTypeReport.load(report.save(d)).types == report.types
    True
    """

    thresholds: Thresholds
    types: list[dict[str, bool]]  # follows `keys`
    keys: list[tuple[str, str]]  # (task, id)
    tasks: list[str]
    probes: dict[str, dict] = field(default_factory=dict)  # type -> {auc, ci, n_train, ...}
    cell: dict | None = None  # the (hook, position) the probes read

    result_name = "error_types"
    figsize = (9.0, 3.5)

    def distribution(self) -> dict[str, dict[str, Any]]:
        """Fraction of questions of each type, overall and per task."""
        out = {}
        for task in ["all", *sorted(set(self.tasks))]:
            rows = [t for t, tk in zip(self.types, self.tasks, strict=True) if task in ("all", tk)]
            out[task] = {"n": len(rows)} | {
                name: sum(r[name] for r in rows) / len(rows) if rows else None
                for name in ERROR_TYPES
            }
        return out

    def untyped(self) -> int:
        """Questions that fit no type (counted, not dropped)."""
        return sum(not any(t.values()) for t in self.types)

    def to_dict(self) -> dict:
        return {
            "thresholds": asdict(self.thresholds),
            "definitions": _DEFINITIONS,
            "distribution": self.distribution(),
            "n_untyped": self.untyped(),
            "probe_cell": self.cell,
            "probes": self.probes,
            "questions": [
                {"task": k[0], "id": k[1], "types": [n for n in ERROR_TYPES if t[n]]}
                for k, t in zip(self.keys, self.types, strict=True)
            ],
        }

    @classmethod
    def from_dict(cls, d: dict) -> ErrorTypeReport:
        qs = d["questions"]
        return cls(
            Thresholds(**d["thresholds"]),
            [{name: name in q["types"] for name in ERROR_TYPES} for q in qs],
            [(q["task"], q["id"]) for q in qs],
            [q["task"] for q in qs],
            probes=d.get("probes") or {},
            cell=d.get("probe_cell"),
        )

    def to_dataframe(self):
        """One row per (task, type): the fraction of questions; the probe columns on "all"."""
        import pandas as pd

        rows = []
        for task, d in self.distribution().items():
            for name in ERROR_TYPES:
                p = self.probes.get(name, {}) if task == "all" else {}
                ci = p.get("ci") or [None, None]
                rows.append(
                    {
                        "task": task,
                        "type": name,
                        "fraction": d[name],
                        "n": d["n"],
                        "probe_auc": p.get("auc"),
                        "probe_ci_low": ci[0],
                        "probe_ci_high": ci[1],
                        "n_test_pos": p.get("n_test_pos"),
                        "reference_auc": p.get("reference_auc"),
                    }
                )
        df = pd.DataFrame(rows)
        df["n_test_pos"] = df["n_test_pos"].astype("Int64")
        return df

    def plot(self, ax=None):
        """Share of questions per type (per task), with the per-type probe AUC written on top."""
        dist = self.distribution()
        tasks = [t for t in dist if t != "all"] or ["all"]
        ax = pyplot_axes(ax, self.figsize)
        width = 0.8 / len(tasks)
        x = np.arange(len(ERROR_TYPES))
        for i, task in enumerate(tasks):
            ax.bar(x + i * width, [dist[task][n] or 0 for n in ERROR_TYPES], width, label=task)
        for j, name in enumerate(ERROR_TYPES):
            auc = self.probes.get(name, {}).get("auc")
            if auc is not None:
                ax.text(j + 0.4 - width / 2, 1.0, f"AUC\n{auc:.2f}", ha="center", fontsize=7)
        ax.set_xticks(x + 0.4 - width / 2)
        ax.set_xticklabels(ERROR_TYPES, rotation=30, ha="right")
        ax.set_ylim(0, 1.12)
        ax.set_ylabel("fraction of questions")
        ax.legend(fontsize=7)
        return ax

    def title(self) -> str:
        t = self.thresholds
        return (
            f"Error types (K = {t.k}; most >= {t.half}, competing >= {t.quarter} each, "
            f"many >= {t.many} answers)"
        )

    def markdown_frame(self):
        """Types (rows) x tasks (fraction of questions), the type probe and its reference."""
        import pandas as pd

        df = self.to_dataframe()
        n = dict(zip(df["task"], df["n"], strict=False))
        out = pd.DataFrame({"type": list(ERROR_TYPES)})
        for task in dict.fromkeys(df["task"]):
            frac = df[df["task"] == task].set_index("type")["fraction"]
            out[f"{task} (n={n[task]})"] = [frac[name] for name in ERROR_TYPES]

        def probe(name: str) -> str:
            p = self.probes.get(name, {})
            if p.get("auc") is None:
                return p.get("skipped", "-")
            return f"{p['auc']:.3f} [{p['ci'][0]:.3f}, {p['ci'][1]:.3f}] ({p['n_test_pos']})"

        out["probe AUC [95% CI] (n test +)"] = [probe(name) for name in ERROR_TYPES]
        ref = [self.probes.get(name, {}).get("reference_auc") for name in ERROR_TYPES]
        out["correctness probe as reference"] = pd.array(ref, dtype="Float64")
        return out

    def markdown_notes(self) -> str:
        lines = [
            f"Questions of no type: {self.untyped()}.",
            "The reference column scores each type with the correctness probe's P(correct) of "
            "the greedy answer (max(AUC, 1 - AUC)): a type probe shows type information beyond "
            "correctness only where it beats it.",
        ]
        if self.cell:
            lines.append(
                f"Probes read the greedy answer at {self.cell['hook']} / {self.cell['position']}."
            )
        return "\n\n".join(lines) + "\n"


def type_probes(
    types: Sequence[dict[str, bool]],
    X: Float[Tensor, "n d"],
    available: Sequence[bool],
    train: Sequence[bool],
    min_per_class: int = 5,
    n_boot: int = 1000,
    seed: int = 0,
    reference_scores: Sequence[float | None] | None = None,
    **probe_kwargs,
) -> dict[str, dict]:
    """One logistic probe per type: type vs not, on rows with an activation (`available`).

    A type with fewer than `min_per_class` positives or negatives in train or test gets
    `{"skipped": reason}` instead of an AUC. `reference_scores` (e.g. the correctness probe's
    P(correct) of the greedy answer) are scored as a type predictor on the same test rows:
    the types correlate with correctness, and a per-type probe only shows type information
    beyond correctness where it beats that reference (`reference_auc` is max(AUC, 1 - AUC),
    as the sign differs between types).

    Args:
        types: per question, type name -> bool (`error_types`).
        X: one activation row per question.
        available: which rows hold an activation.
        train: which rows are training rows (the others are test rows).
        min_per_class: the fewest positives and negatives a probe is fit and scored on.
        n_boot: bootstrap replicates for the CIs.
        seed: the bootstrap seed.
        reference_scores: a score per question to compare with (None: no reference).
        **probe_kwargs: passed on to `Probe.from_data`.

    Returns:
        Type name -> counts and `auc`, `ci` (and `reference_auc`), or `skipped`.

    >>> types = [{name: i % 2 == 0 for name in ERROR_TYPES} for i in range(8)]
    >>> out = type_probes(types, torch.randn(8, 4), [True] * 8, [i < 4 for i in range(8)])
    >>> out["refuses"]["skipped"]
    'fewer than 5 per class'
    """
    avail = np.asarray(available, dtype=bool)
    tr = np.asarray(train, dtype=bool) & avail
    te = ~np.asarray(train, dtype=bool) & avail
    if reference_scores is not None:
        ref = np.array([np.nan if v is None else v for v in reference_scores], dtype=float)
    out = {}
    for name in ERROR_TYPES:
        y = np.array([t[name] for t in types], dtype=int)
        counts = {
            "n_train_pos": int(y[tr].sum()),
            "n_train_neg": int((1 - y[tr]).sum()),
            "n_test_pos": int(y[te].sum()),
            "n_test_neg": int((1 - y[te]).sum()),
        }
        if min(counts.values()) < min_per_class:
            out[name] = counts | {"skipped": f"fewer than {min_per_class} per class"}
            continue
        probe = Probe.from_data(X[tr], torch.as_tensor(y[tr]), **probe_kwargs)
        scores = probe.decision_function(X[te]).double().numpy()
        lo, hi = bootstrap_auc_ci(scores, y[te], n_boot=n_boot, seed=seed)
        out[name] = counts | {"auc": roc_auc(scores, y[te]), "ci": [float(lo), float(hi)]}
        if reference_scores is not None:
            keep = te & np.isfinite(ref)
            auc = roc_auc(ref[keep], y[keep])
            out[name]["reference_auc"] = max(auc, 1 - auc)
    return out


def error_type_report(
    sets: Sequence[SampleSet],
    X: Float[Tensor, "n d"] | None = None,
    available: Sequence[bool] | None = None,
    cell: dict | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    min_per_class: int = 5,
    reference_scores: Sequence[float | None] | None = None,
) -> ErrorTypeReport:
    """Types of every question; with `X` (greedy activations, one row per set) a probe per type.

    Train/test follow the questions' own split.

    Args:
        sets: every question's samples (the same K for all).
        X: the greedy answers' activations, one row per set (None: no probes).
        available: which rows of `X` hold an activation (default: all).
        cell: the (hook, position) `X` was read at, for the report.
        n_boot: bootstrap replicates for the probes' CIs.
        seed: the bootstrap seed.
        min_per_class: the fewest positives and negatives a type probe needs.
        reference_scores: the correctness probe's score per question, as the reference.

    Returns:
        The `ErrorTypeReport`.

    >>> def rec(answer, i=0, qid="q"):
    ...     ok = answer == "Paris"
    ...     return {"task": "t", "id": qid, "split": "test", "question": "Capital of France?",
    ...             "gold": "Paris", "answer": answer, "exact_answer": answer, "correct": ok,
    ...             "category": "correct" if ok else "incorrect", "sample_index": i}
    >>> s = SampleSet(rec("Lyon"), [rec(a, i) for i, a in enumerate(["Paris", "Paris", "Lyon"])])
    >>> report = error_type_report([s])
    >>> [name for name, yes in report.types[0].items() if yes], report.probes
    (['correct_most', 'two_competing'], {})
    """
    ks = {s.k for s in sets}
    if len(ks) != 1:
        raise ValueError(f"every question needs the same number of samples, got K in {ks}")
    t = Thresholds.for_k(ks.pop())
    types = [error_types(s, t) for s in sets]
    report = ErrorTypeReport(
        t, types, [s.key for s in sets], [s.greedy["task"] for s in sets], cell=cell
    )
    if X is not None:
        if available is None:
            available = [True] * len(sets)
        train = [s.greedy["split"] == "train" for s in sets]
        report.probes = type_probes(
            types,
            X,
            available,
            train,
            min_per_class=min_per_class,
            n_boot=n_boot,
            seed=seed,
            reference_scores=reference_scores,
        )
    return report
