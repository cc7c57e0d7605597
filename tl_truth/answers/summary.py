"""Summaries of a run's records: accuracy, refusals and exact-answer rates, overall and per task.

`summarize` writes the summary.json document; `located_rates` checks the one bias that matters
for probing at the exact answer: whether right and wrong answers are located equally often and
by the same procedure.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

from tl_truth.data.questions import QADataset

LOCATED_GAP_WARNING = 0.10  # warn when right and wrong answers are located this differently


def located_rates(records: Sequence[Mapping]) -> dict:
    """How often the exact answer was located, for right and for wrong answers, and by what.

    A probe at the exact answer only sees located answers: if right ones are located far more
    often (or by a different procedure, e.g. the gold alias) than wrong ones, the probe can
    learn the locator instead of correctness. `warning` says so when the rates differ by more
    than 10 points.

    >>> rs = [{"correct": True, "category": "correct", "exact_answer_token_span": [3, 4],
    ...        "exact_answer_source": "candidate"},
    ...       {"correct": False, "category": "incorrect", "exact_answer_token_span": None,
    ...        "exact_answer_source": "none"}]
    >>> located_rates(rs)["correct"], located_rates(rs)["incorrect"]
    (1.0, 0.0)
    """

    def rate(rs: list) -> float | None:
        return sum(r["exact_answer_token_span"] is not None for r in rs) / len(rs) if rs else None

    right = [r for r in records if r["correct"]]
    wrong = [r for r in records if r["category"] == "incorrect"]
    by_source: dict[str, dict[str, int]] = {}
    for r in records:
        if r["exact_answer_token_span"] is None or r["category"] == "refusal":
            continue
        b = by_source.setdefault(r["exact_answer_source"], {"correct": 0, "incorrect": 0})
        b["correct" if r["correct"] else "incorrect"] += 1
    rc, ri = rate(right), rate(wrong)
    gap = None if rc is None or ri is None else rc - ri
    warning = (
        f"right answers located {rc:.0%} of the time, wrong ones {ri:.0%}: the exact-answer "
        "probe sees a different mix of right and wrong answers than the other methods; read it "
        "on the same examples and against the controls"
        if gap is not None and abs(gap) > LOCATED_GAP_WARNING
        else None
    )
    return {
        "correct": rc,
        "incorrect": ri,
        "n_correct": len(right),
        "n_incorrect": len(wrong),
        "by_source": by_source,
        "warning": warning,
    }


def summarize(records: Sequence[Mapping], dataset: QADataset | None = None) -> dict:
    """Counts, accuracy, refusals and exact-answer rates, overall and per task (the summary.json
    document: rates are rounded to 4 places as written).

    Args:
        records: `AnswerRecord`s or generations.jsonl dicts (need correct, category, split,
            task, stop_reason and the exact_answer_* keys).
        dataset: the questions, to report their name, count and skipped records.

    Returns:
        A dict: n, accuracy, categories, exact-answer rates (overall, correct, incorrect),
        sources and failures, stop reasons, splits, ``per_task`` (the same per task) and,
        with a dataset, ``dataset``.

    >>> recs = [{"task": "t", "split": "train", "correct": True, "category": "correct",
    ...          "exact_answer_token_span": [3, 4], "exact_answer_source": "candidate",
    ...          "exact_answer_reason": "first_candidate", "stop_reason": "eos"},
    ...         {"task": "t", "split": "test", "correct": False, "category": "refusal",
    ...          "exact_answer_token_span": None, "exact_answer_source": "none",
    ...          "exact_answer_reason": "refusal", "stop_reason": "eos"}]
    >>> s = summarize(recs)
    >>> s["n"], s["accuracy"], s["categories"], s["exact_answer_failures"]
    (2, 0.5, {'correct': 1, 'refusal': 1}, {'refusal': 1})
    >>> list(s["per_task"])
    ['t']
    """

    def block(rs: Sequence[Mapping]) -> dict:
        n = len(rs)
        found = [r for r in rs if r["exact_answer_token_span"] is not None]
        correct = [r for r in rs if r["correct"]]
        wrong = [r for r in rs if r["category"] == "incorrect"]
        return {
            "n": n,
            "accuracy": round(len(correct) / n, 4) if n else None,
            "categories": dict(Counter(r["category"] for r in rs)),
            "exact_answer_rate": round(len(found) / n, 4) if n else None,
            "exact_answer_rate_correct": round(
                sum(r["exact_answer_token_span"] is not None for r in correct) / len(correct), 4
            )
            if correct
            else None,
            "exact_answer_rate_incorrect": round(
                sum(r["exact_answer_token_span"] is not None for r in wrong) / len(wrong), 4
            )
            if wrong
            else None,
            "exact_answer_sources": dict(Counter(r["exact_answer_source"] for r in rs)),
            "exact_answer_failures": dict(
                Counter(
                    r["exact_answer_reason"] for r in rs if r["exact_answer_token_span"] is None
                )
            ),
            "stop_reasons": dict(Counter(r["stop_reason"] for r in rs)),
            "splits": dict(Counter(r["split"] for r in rs)),
        }

    out = block(records)
    out["per_task"] = {
        t: block([r for r in records if r["task"] == t])
        for t in sorted({r["task"] for r in records})
    }
    if dataset is not None:
        out["dataset"] = {"name": dataset.name, "n": len(dataset), "skipped": dataset.skipped}
    return out
