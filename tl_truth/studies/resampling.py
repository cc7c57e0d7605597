"""Resampling: K answers per question at temperature 1, graded, located and clustered.

The paper's "knows more than it shows" evidence starts here: a question the model answers wrong
greedily may still get the right answer in some of its K samples (pass@K). Samples are clustered
into distinct answers, which the error-type taxonomy (`error_types.py`) and majority vote
(`selection.py`) read.

Clustering: each sample gets a key, its located exact answer (or the whole answer when none was
located) after SQuAD-style normalisation; refusals share one key. Two keys join a cluster when
they are equal or one contains the other as whole words ("paris" / "paris france"), transitively.

The clustering lives in `tl_truth.studies.answer_clusters` (re-exported here).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tl_truth.answers.exact_answer import Locate
from tl_truth.answers.generation import GenerationConfig
from tl_truth.answers.prompts import PromptFormat
from tl_truth.answers.run import AnswerRun, answer_questions
from tl_truth.data.questions import QADataset
from tl_truth.results import Result, pyplot_axes
from tl_truth.studies.answer_clusters import (
    EMPTY_KEY,
    REFUSAL_KEY,
    Cluster,
    answer_key,
    cluster_keys,
    clusters_of,
)

__all__ = [
    "EMPTY_KEY",
    "REFUSAL_KEY",
    "RESAMPLE_SUMMARY_FILE",
    "SAMPLES_FILE",
    "Cluster",
    "Resampling",
    "SampleSet",
    "answer_key",
    "cluster_keys",
    "clusters_of",
    "pass_at_k",
    "resample",
]

SAMPLES_FILE = "samples.jsonl"
RESAMPLE_SUMMARY_FILE = "resample_summary.json"

# ---------------------------------------------------------------------------------------------
# One question's samples


@dataclass
class SampleSet:
    """A question's greedy answer and its K sampled answers, clustered.

    Attributes:
        greedy: the greedy answer's record (`task`, `id`, `split`, `correct`, ...).
        samples: the K sampled answers' records.
        clusters: their `Cluster`s (computed from `samples` when not given).

    >>> def rec(answer, i=0):
    ...     ok = answer == "Paris"
    ...     return {"task": "t", "id": "q", "split": "test", "question": "Capital of France?",
    ...             "gold": "Paris", "answer": answer, "exact_answer": answer, "correct": ok,
    ...             "category": "correct" if ok else "incorrect", "sample_index": i}
    >>> s = SampleSet(rec("Lyon"), [rec(a, i) for i, a in enumerate(["Paris", "Paris", "Lyon"])])
    >>> s.key, s.k, s.n_correct, [c.key for c in s.clusters]
    (('t', 'q'), 3, 2, ['paris', 'lyon'])
    """

    greedy: dict
    samples: list[dict]
    clusters: list[Cluster] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.clusters:
            self.clusters = clusters_of(self.samples)

    @property
    def key(self) -> tuple[str, str]:
        return (self.greedy["task"], self.greedy["id"])

    @property
    def k(self) -> int:
        return len(self.samples)

    @property
    def n_correct(self) -> int:
        return sum(bool(s["correct"]) for s in self.samples)

    @property
    def n_refusal(self) -> int:
        return sum(s["category"] == "refusal" for s in self.samples)

    @property
    def answers(self) -> list[Cluster]:
        """Clusters that are answers (not refusals)."""
        return [c for c in self.clusters if not c.refusal]

    def cluster_of(self, sample_index: int) -> int:
        for c in self.clusters:
            if sample_index in c.members:
                return c.id
        raise IndexError(sample_index)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021).

    Args:
        n: samples drawn.
        c: samples correct.
        k: samples allowed.

    Returns:
        The probability that at least one of k samples (drawn from the n) is correct.

    >>> round(pass_at_k(10, 1, 1), 3), pass_at_k(10, 9, 2)
    (0.1, 1.0)
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


# ---------------------------------------------------------------------------------------------
# The resampling run


@dataclass
class Resampling(Result):
    """K samples for each question, with its greedy answer (`sets` follow the questions).

    The result protocol (`tl_truth.results.Result`): `to_dict()` is the summary (what
    `resample_summary.json` holds); `save(dir)` also writes every sample (`samples.jsonl`) and
    the greedy answers (`greedy/`), which `Resampling.load(dir)` reads back.

    Attributes:
        sets: one `SampleSet` per question.
        meta: how the samples were made (model, K, temperature, generation settings, ...).

    >>> import tempfile
    >>> def rec(answer, i=0):
    ...     ok = answer == "Paris"
    ...     return {"task": "t", "id": "q", "split": "test", "question": "Capital of France?",
    ...             "gold": "Paris", "answer": answer, "exact_answer": answer, "correct": ok,
    ...             "category": "correct" if ok else "incorrect", "sample_index": i}
    >>> s = SampleSet(rec("Lyon"), [rec(a, i) for i, a in enumerate(["Paris", "Paris", "Lyon"])])
    >>> res = Resampling([s], {"k": 3})
    >>> res.summary()["pass_at_k"]
    {'1': 0.6666666666666667, '2': 1.0, '3': 1.0}
    >>> with tempfile.TemporaryDirectory() as d:
    ...     back = Resampling.load(res.save(d))
    >>> [r["answer"] for r in back.sets[0].samples], back.meta
    (['Paris', 'Paris', 'Lyon'], {'k': 3})
    """

    sets: list[SampleSet]
    meta: dict = field(default_factory=dict)

    result_name = "resample_summary"
    figsize = (4.5, 3.2)

    def __len__(self) -> int:
        return len(self.sets)

    @property
    def k(self) -> int:
        return min((s.k for s in self.sets), default=0)

    def summary(self) -> dict:
        """pass@k curves overall / for greedy-wrong questions, per task."""

        def block(sets: Sequence[SampleSet]) -> dict:
            wrong = [s for s in sets if not s.greedy["correct"]]
            ks = sorted({1, 2, 5, 10, 20, 30, self.k} & set(range(1, self.k + 1)))
            return {
                "n": len(sets),
                "greedy_accuracy": _mean([s.greedy["correct"] for s in sets]),
                "sample_accuracy": _mean([s.n_correct / s.k for s in sets]),
                "n_greedy_wrong": len(wrong),
                # "knows more than it shows": the right answer is among the K samples
                "pass_at_k_greedy_wrong": _mean([s.n_correct > 0 for s in wrong]),
                "pass_at_k": {
                    str(k): _mean([pass_at_k(s.k, s.n_correct, k) for s in sets]) for k in ks
                },
                "pass_at_k_greedy_wrong_curve": {
                    str(k): _mean([pass_at_k(s.k, s.n_correct, k) for s in wrong]) for k in ks
                },
                "mean_distinct_answers": _mean([len(s.answers) for s in sets]),
                "refusal_rate": _mean([s.n_refusal / s.k for s in sets]),
            }

        out = block(self.sets)
        out["k"] = self.k
        out["per_task"] = {
            t: block([s for s in self.sets if s.greedy["task"] == t])
            for t in sorted({s.greedy["task"] for s in self.sets})
        }
        return out

    def to_dict(self) -> dict:
        """`{"meta": ..., **summary()}`: what `resample_summary.json` holds."""
        return {"meta": self.meta, **self.summary()}

    def to_dataframe(self):
        """One row per question: greedy grade, correct samples, distinct answers."""
        import pandas as pd

        return pd.DataFrame(
            [
                {
                    "task": s.greedy["task"],
                    "id": s.greedy["id"],
                    "split": s.greedy["split"],
                    "question": s.greedy["question"],
                    "gold": s.greedy["gold"],
                    "greedy_answer": s.greedy["exact_answer"] or s.greedy["answer"],
                    "greedy_correct": bool(s.greedy["correct"]),
                    "k": s.k,
                    "n_correct": s.n_correct,
                    "n_refusal": s.n_refusal,
                    "n_answers": len(s.answers),
                    "top_answer": s.clusters[0].key if s.clusters else None,
                    "top_answer_size": s.clusters[0].size if s.clusters else 0,
                }
                for s in self.sets
            ]
        )

    def plot(self, ax=None):
        """pass@k against k, overall and for the questions greedy decoding gets wrong."""
        ax = pyplot_axes(ax, self.figsize)
        ks = list(range(1, self.k + 1))
        wrong = [s for s in self.sets if not s.greedy["correct"]]
        for sets, label in ((self.sets, "all questions"), (wrong, "greedy wrong")):
            if sets:
                ax.plot(
                    ks,
                    [_mean([pass_at_k(s.k, s.n_correct, k) for s in sets]) for k in ks],
                    marker="o",
                    label=f"{label} (n={len(sets)})",
                )
        ax.set_xlabel("k samples")
        ax.set_ylabel("pass@k")
        ax.set_ylim(0, 1)
        ax.legend()
        ax.set_title("the right answer among k samples")
        return ax

    def title(self) -> str:
        return f"Resampling: {len(self)} questions x K = {self.k} samples"

    def markdown_frame(self):
        """Overall and per task: accuracies, pass@K (all / greedy wrong), distinct answers."""
        import pandas as pd

        s = self.summary()
        k = str(self.k)
        rows = []
        for group, b in {"all": s, **s["per_task"]}.items():
            rows.append(
                {
                    "task": group,
                    "n": b["n"],
                    "greedy accuracy": b["greedy_accuracy"],
                    "sample accuracy": b["sample_accuracy"],
                    f"pass@{k}": b["pass_at_k"].get(k),
                    "greedy wrong": b["n_greedy_wrong"],
                    f"pass@{k} of greedy wrong": b["pass_at_k_greedy_wrong"],
                    "distinct answers": b["mean_distinct_answers"],
                    "refusal rate": b["refusal_rate"],
                }
            )
        return pd.DataFrame(rows)

    def markdown_notes(self) -> str:
        return (
            "pass@k is the unbiased estimate from the K samples (Chen et al. 2021); among the "
            "questions greedy decoding gets wrong, it is the share where the model "
            "'knows more than it shows'.\n"
        )

    def save(self, out_dir: str | Path) -> Path:
        """`samples.jsonl` (one line per sample, with its cluster), the greedy answers
        (`greedy/`) and the summary (`resample_summary.json`, `.md`, `.png`)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / (SAMPLES_FILE + ".tmp")
        with tmp.open("w") as f:
            for s in self.sets:
                for i, r in enumerate(s.samples):
                    f.write(json.dumps({**r, "cluster": s.cluster_of(i)}, ensure_ascii=False))
                    f.write("\n")
        tmp.replace(out / SAMPLES_FILE)
        AnswerRun([s.greedy for s in self.sets], {}).save(out / "greedy")
        return super().save(out)

    @classmethod
    def load(cls, out_dir: str | Path) -> Resampling:
        out = Path(out_dir)
        greedy = AnswerRun.load(out / "greedy").records
        by_key: dict[tuple[str, str], list[dict]] = {}
        with (out / SAMPLES_FILE).open() as f:
            for line in f:
                if line.strip():
                    r = json.loads(line)
                    r.pop("cluster", None)
                    by_key.setdefault((r["task"], r["id"]), []).append(r)
        meta_path = out / RESAMPLE_SUMMARY_FILE
        meta = json.loads(meta_path.read_text()).get("meta", {}) if meta_path.exists() else {}
        return cls([SampleSet(g, by_key[(g["task"], g["id"])]) for g in greedy], meta)


def _mean(xs: Sequence[Any]) -> float | None:
    xs = [float(x) for x in xs]
    return sum(xs) / len(xs) if xs else None


def resample(
    model: Any,
    dataset: QADataset,
    k: int = 10,
    temperature: float = 1.0,
    config: GenerationConfig | None = None,
    fmt: PromptFormat | None = None,
    greedy: Sequence[dict] | None = None,
    extract_with_model: bool = False,
    progress: bool = True,
    locate: Locate = "blind",
    checkpoint_dir: str | Path | None = None,
) -> Resampling:
    """K sampled answers per question (graded, located, clustered) next to the greedy one.

    Args:
        model: a HookedTransformer or TransformerBridge.
        dataset: the questions.
        k: samples per question.
        temperature: the sampling temperature (> 0).
        config: generation settings (length, batch size, seed); default `GenerationConfig()`.
        fmt: the prompt format (default: chosen for the model).
        greedy: greedy records to reuse (e.g. a `tl-truth run` directory's generations);
            those of the dataset's questions are taken, and any question without one is
            answered greedily here.
        extract_with_model: the model-based exact-answer extraction fallback.
        progress: show progress bars.
        locate: "blind" or "paper": how exact answers are located (as for the greedy ones).
        checkpoint_dir: where sampling appends its finished batches (`samples.ckpt/`,
            `greedy.ckpt/`), so a killed call resumes with identical samples (None: off).

    Returns:
        The `Resampling`: one `SampleSet` per question, in the dataset's order.

    >>> import tl_truth as tt
    >>> from tl_truth.testing import tiny_model
    >>> qs = [tt.make_question(str(i), f"What is {i} + 1?", str(i + 1), "sums", "math")
    ...       for i in range(2)]
    >>> res = resample(tiny_model("llama"), tt.QADataset("sums", qs), k=2,
    ...                config=tt.GenerationConfig(max_new_tokens=3), progress=False)
    >>> len(res), res.k, [s.key for s in res.sets]
    (2, 2, [('sums', '0'), ('sums', '1')])
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if temperature <= 0:
        raise ValueError("resampling needs temperature > 0 (temperature 0 is greedy)")
    base = config or GenerationConfig()
    by_key = {(r["task"], r["id"]): r for r in (greedy or []) if r.get("sample_index", 0) == 0}
    missing = dataset.subset([q for q in dataset.questions if (q.task, q.id) not in by_key])
    if len(missing):
        greedy_cfg = GenerationConfig(**{**vars(base), "temperature": 0.0, "num_samples": 1})
        fresh = answer_questions(
            model,
            missing,
            greedy_cfg,
            fmt,
            extract_with_model,
            progress,
            locate=locate,
            checkpoint_dir=Path(checkpoint_dir) / "greedy.ckpt" if checkpoint_dir else None,
        )
        by_key.update({(r["task"], r["id"]): r for r in fresh.records})
    sample_cfg = GenerationConfig(**{**vars(base), "temperature": temperature, "num_samples": k})
    # samples are located like the greedy answers they are compared with
    run = answer_questions(
        model,
        dataset,
        sample_cfg,
        fmt,
        extract_with_model,
        progress,
        locate=locate,
        checkpoint_dir=Path(checkpoint_dir) / "samples.ckpt" if checkpoint_dir else None,
    )
    samples: dict[tuple[str, str], list[dict]] = {}
    for r in run.records:
        samples.setdefault((r["task"], r["id"]), []).append(r)
    sets = [SampleSet(by_key[(q.task, q.id)], samples[(q.task, q.id)]) for q in dataset.questions]
    meta = {
        "model": run.summary.get("model"),
        "dataset": dataset.name,
        "k": k,
        "temperature": temperature,
        "generation": run.summary.get("generation"),
        "greedy_reused": len(dataset) - len(missing),
        "timings": run.summary.get("timings"),
        "exact_answer_sources": run.summary.get("exact_answer_sources"),
    }
    return Resampling(sets, meta)
