"""The error-type taxonomy (Orgad et al. 2024, section 5): what kind of question is this?

The taxonomy reads only how a question's K samples distribute over distinct answers (clusters,
see `answer_clusters.py`). Types are not mutually exclusive. The paper's thresholds were set
for K = 30; ours are fractions of K (`Thresholds.for_k`), so K = 10 and K = 30 mean the same;
the types are listed in `tl_truth.studies.error_types`. The definitions need no model and no
probe, so they live here, read by the error-type report and by answer selection alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tl_truth.studies.resampling import SampleSet

ERROR_TYPES = (
    "refuses",
    "correct_all",
    "correct_most",
    "incorrect_all",
    "incorrect_most",
    "two_competing",
    "many_no_correct",
    "many_with_correct",
)


_DEFINITIONS = {
    "refuses": "refusals in >= half of the samples",
    "correct_all": "every sample correct",
    "correct_most": ">= half of the samples correct, not all",
    "incorrect_all": "every sample is the same wrong answer",
    "incorrect_most": "one wrong answer in >= half of the samples, not all",
    "two_competing": "the correct answer and one wrong answer each in >= a quarter",
    "many_no_correct": ">= max(3, K/3) distinct answers, none correct",
    "many_with_correct": ">= max(3, K/3) distinct answers, some sample correct",
}


@dataclass(frozen=True)
class Thresholds:
    """Sample counts that define the types for K samples.

    Attributes:
        k: samples per question.
        half: "most": at least this many samples.
        quarter: "competing": each answer at least this many samples.
        many: "many answers": at least this many distinct answers.

    >>> Thresholds.for_k(30)
    Thresholds(k=30, half=15, quarter=8, many=10)
    """

    k: int
    half: int  # "most": at least this many samples
    quarter: int  # "competing": each answer at least this many samples
    many: int  # "many answers": at least this many distinct answers

    @classmethod
    def for_k(cls, k: int) -> Thresholds:
        if k < 2:
            raise ValueError(f"error types need at least 2 samples per question, got K={k}")
        return cls(
            k=k,
            half=math.ceil(k / 2),
            quarter=max(1, math.ceil(k / 4)),
            many=max(3, math.ceil(k / 3)),
        )


def error_types(s: SampleSet, t: Thresholds | None = None) -> dict[str, bool]:
    """The taxonomy's types (not exclusive) of one question's samples.

    Args:
        s: the question's samples.
        t: the thresholds (default: `Thresholds.for_k(s.k)`).

    Returns:
        Type name (`ERROR_TYPES`) -> whether the question is of that type.

    >>> def rec(answer, i=0, qid="q"):
    ...     ok = answer == "Paris"
    ...     return {"task": "t", "id": qid, "split": "test", "question": "Capital of France?",
    ...             "gold": "Paris", "answer": answer, "exact_answer": answer, "correct": ok,
    ...             "category": "correct" if ok else "incorrect", "sample_index": i}
    >>> s = SampleSet(rec("Lyon"), [rec(a, i) for i, a in enumerate(["Paris", "Paris", "Lyon"])])
    >>> [name for name, yes in error_types(s).items() if yes]
    ['correct_most', 'two_competing']
    """
    t = t or Thresholds.for_k(s.k)
    k, correct = s.k, s.n_correct
    wrong = [c for c in s.answers if not c.correct]
    top_wrong = max((c.size - c.n_correct for c in wrong), default=0)
    n_answers = len(s.answers)
    many = n_answers >= t.many
    return {
        "refuses": s.n_refusal >= t.half,
        "correct_all": correct == k,
        "correct_most": t.half <= correct < k,
        "incorrect_all": len(s.clusters) == 1 and correct == 0 and s.n_refusal == 0,
        "incorrect_most": t.half <= top_wrong < k,
        "two_competing": correct >= t.quarter and top_wrong >= t.quarter,
        "many_no_correct": many and correct == 0,
        "many_with_correct": many and correct > 0,
    }
