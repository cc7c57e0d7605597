"""Answers: questions -> generations -> grades -> exact-answer token spans, as one record each.

`answer_questions` is the foundation every later step reads: one `AnswerRecord` per
(question, sample) with the exact token ids the model saw and produced, the grade, and where the
exact answer sits in full-sequence token coordinates. Nothing is dropped: an example without an
exact answer keeps its record with `exact_answer_source == "none"` and a reason, and the summary
counts every source and failure.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tl_truth.answers.exact_answer import (
    ExactAnswer,
    Locate,
    clean_extraction,
    extraction_prompt,
    find_exact_answer,
)
from tl_truth.answers.generation import (
    Generation,
    GenerationConfig,
    generate,
    generate_ids,
    tokenize_prompts,
)
from tl_truth.answers.grading import Grade, grade
from tl_truth.answers.positions import exact_answer_token_span
from tl_truth.answers.prompts import PromptFormat, default_format
from tl_truth.answers.record import AnswerRecord
from tl_truth.data.questions import QADataset, Question
from tl_truth.models import model_info
from tl_truth.results import Result, pyplot_axes

GENERATIONS_FILE = "generations.jsonl"
SUMMARY_FILE = "summary.json"
FIGURE_FILE = "summary.png"  # written only by `AnswerRun.save(..., figure=True)`


def build_record(
    question: Question, gen: Generation, tokenizer: Any, exact: ExactAnswer, verdict: Grade
) -> AnswerRecord:
    span = exact_answer_token_span(
        tokenizer, len(gen.prompt_token_ids), gen.answer_token_ids, exact.char_span
    )
    full = gen.full_token_ids
    return AnswerRecord(
        id=question.id,
        task=question.task,
        skill=question.skill,
        split=question.split,
        question=question.question,
        prompt=gen.prompt,
        gold=question.gold,
        gold_aliases=list(question.answers),
        answer=gen.text,
        correct=bool(verdict.correct),
        category=verdict.category,
        grade_reason=verdict.reason,
        exact_answer=exact.text,
        exact_answer_source=exact.source,
        exact_answer_reason=exact.reason,
        exact_answer_char_span=list(exact.char_span) if exact.char_span else None,
        exact_answer_token_span=list(span) if span else None,
        exact_answer_token_text=tokenizer.decode(full[span[0] : span[1]]) if span else None,
        prompt_token_ids=gen.prompt_token_ids,
        answer_token_ids=gen.answer_token_ids,
        token_logprobs=gen.token_logprobs,
        stop_reason=gen.stop_reason,
        sample_index=gen.sample_index,
    )


@dataclass
class AnswerRun(Result):
    """Graded generations with exact-answer spans: one `AnswerRecord` per generations.jsonl line.

    `records` are kept at full precision (token log-probabilities as computed); `summary` is
    the run's summary.json document (`summarize` plus model, prompt format, generation settings
    and timings; its rates are rounded as written). Plain dicts passed in `records` are read
    into `AnswerRecord`s.

    The result protocol (`tl_truth.results.Result`), except for the files: `save(dir)` writes
    generations.jsonl and summary.json (the figure only on request) and `load(dir)` reads them.
    """

    records: list[AnswerRecord]
    summary: dict = field(default_factory=dict)

    result_name = "summary"

    def __post_init__(self) -> None:
        if not (
            isinstance(self.records, list)
            and all(isinstance(r, AnswerRecord) for r in self.records)
        ):
            self.records = [
                r if isinstance(r, AnswerRecord) else AnswerRecord.from_dict(r)
                for r in self.records
            ]

    def __len__(self) -> int:
        return len(self.records)

    def to_dict(self) -> dict:
        """`{"summary": ..., "records": [...]}`, every record a plain dict (`to_dict()`)."""
        return {"summary": self.summary, "records": [r.to_dict() for r in self.records]}

    @classmethod
    def from_dict(cls, d: Mapping) -> AnswerRun:
        return cls(list(d["records"]), dict(d.get("summary", {})))

    def to_dataframe(self):
        """One row per record, one column per generations.jsonl key."""
        import pandas as pd

        return pd.DataFrame([r.to_dict() for r in self.records])

    def _per_task(self) -> dict[str, dict]:
        tasks = sorted({r["task"] for r in self.records})
        return {t: _rates([r for r in self.records if r["task"] == t]) for t in tasks}

    def title(self) -> str:
        name = self.summary.get("model", {}).get("name", "")
        return f"Answers{f' of {name}' if name else ''}: {len(self)} records"

    def markdown_frame(self):
        """Overall and per task: n, accuracy, exact-answer rate, refusal rate."""
        import pandas as pd

        rows = {"all": _rates(self.records), **self._per_task()}
        return pd.DataFrame(
            [
                {
                    "task": task,
                    "n": r["n"],
                    "accuracy": r["accuracy"],
                    "exact answer located": r["exact_answer_rate"],
                    "refusals": r["refusal_rate"],
                }
                for task, r in rows.items()
            ]
        )

    @property
    def figsize(self) -> tuple[float, float]:  # type: ignore[override]
        return (1.2 + 1.1 * max(1, len({r["task"] for r in self.records})), 3.0)

    def plot(self, ax=None):
        """Accuracy and exact-answer rate per task (a new pyplot figure only when `ax` is None)."""
        per_task = self._per_task()
        ax = pyplot_axes(ax, self.figsize)
        x = np.arange(len(per_task))
        for i, (key, label) in enumerate(
            (("accuracy", "accuracy"), ("exact_answer_rate", "exact-answer rate"))
        ):
            ax.bar(x + (i - 0.5) * 0.4, [v[key] for v in per_task.values()], 0.4, label=label)
        ax.set_xticks(x, list(per_task))
        ax.set_ylim(0, 1)
        ax.legend()
        ax.set_title(f"{self.summary.get('model', {}).get('name', '')}: greedy answers")
        return ax

    def save(self, out_dir: str | Path, figure: bool = False) -> Path:
        """Write generations.jsonl (one record a line) and summary.json; returns `out_dir`.

        `figure=True` also writes summary.png (`plot`), drawn on a standalone Figure
        (`Result.figure()`): no pyplot state, the matplotlib backend untouched.
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / (GENERATIONS_FILE + ".tmp")
        with tmp.open("w") as f:
            for r in self.records:
                d = r.to_dict() if isinstance(r, AnswerRecord) else dict(r)
                f.write(json.dumps(d, ensure_ascii=False) + "\n")
        tmp.replace(out / GENERATIONS_FILE)
        (out / SUMMARY_FILE).write_text(json.dumps(self.summary, indent=2, ensure_ascii=False))
        if figure:
            self.figure().savefig(out / FIGURE_FILE, dpi=self.dpi, bbox_inches="tight")
        return out

    @classmethod
    def load(cls, out_dir: str | Path) -> AnswerRun:
        """Read a directory written by `save` (or by any earlier version: the lines are the
        same); a line that is not a record raises ValueError naming the file and line."""
        out = Path(out_dir)
        records = read_records(out / GENERATIONS_FILE)
        summary_path = out / SUMMARY_FILE
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        return cls(records, summary)


def read_records(path: str | Path) -> list[AnswerRecord]:
    """The records of a generations.jsonl file (blank lines skipped).

    Raises ValueError "<path>:<line>: ..." for a line that is not JSON or not a record.
    """
    path = Path(path)
    records = []
    with path.open() as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(AnswerRecord.from_dict(json.loads(line)))
            except ValueError as e:  # json.JSONDecodeError is a ValueError
                raise ValueError(f"{path}:{lineno}: not a valid answer record: {e}") from e
    return records


def _rates(rs: Sequence[Mapping]) -> dict:
    n = len(rs)

    def rate(k: int) -> float:
        return k / n if n else float("nan")

    return {
        "n": n,
        "accuracy": rate(sum(bool(r.get("correct")) for r in rs)),
        "exact_answer_rate": rate(sum(r.get("exact_answer_token_span") is not None for r in rs)),
        "refusal_rate": rate(sum(r.get("category") == "refusal" for r in rs)),
    }


def model_extractions(
    model: Any, pairs: Sequence[tuple[Question, str]], batch_size: int = 32, progress: bool = True
) -> list[str]:
    """The paper's fallback: ask a model to extract the short answer (accepted only if substring)."""
    if not pairs:
        return []
    tok = model.tokenizer
    fmt = default_format(model)
    prompts = [fmt.render(tok, extraction_prompt(q, a)) for q, a in pairs]
    ids = tokenize_prompts(tok, prompts, fmt)
    raw = generate_ids(
        model,
        ids,
        GenerationConfig(max_new_tokens=16, batch_size=batch_size),
        stop_at_newline=True,
        progress=progress,
        desc="extract",
    )
    return [clean_extraction(tok.decode(r[0]["answer_token_ids"])) for r in raw]


def answer_questions(
    model: Any,
    dataset: QADataset,
    config: GenerationConfig | None = None,
    fmt: PromptFormat | None = None,
    extract_with_model: bool = True,
    progress: bool = True,
    locate: Locate = "blind",
) -> AnswerRun:
    """Generate, grade and locate the exact answer for every question (K samples each).

    Args:
        model: a HookedTransformer or TransformerBridge (`tl_truth.load_model`).
        dataset: the questions (`tl_truth.load_questions`).
        config: generation settings (greedy, 48 new tokens by default).
        fmt: the prompt format (default: the model's chat template if it has one).
        extract_with_model: ask the model for the short answer where string matching fails.
        progress: show progress bars.
        locate: "blind" (default) locates the exact answer without reading the gold or the
            grade, the same way for right and wrong answers; "paper" uses the gold alias of
            correct answers first, as Orgad et al. (see `tl_truth.answers.exact_answer`).

    Returns:
        An `AnswerRun`: one `AnswerRecord` per answer and the summary (`located_rate` per class).
    """
    config = config or GenerationConfig()
    fmt = fmt or default_format(model)
    tok = model.tokenizer
    t0 = time.perf_counter()
    gens = generate(model, dataset.questions, config, fmt, progress=progress)
    t_gen = time.perf_counter() - t0

    t1 = time.perf_counter()
    flat = [(q, g) for q, samples in zip(dataset.questions, gens, strict=False) for g in samples]
    verdicts = [grade(q, g.text) for q, g in flat]
    exacts = [
        find_exact_answer(q, g.text, v, dataset.candidates_for(q.task), locate=locate)
        for (q, g), v in zip(flat, verdicts, strict=False)
    ]
    t_grade = time.perf_counter() - t1

    # Model extraction only where string matching found nothing in a non-refusal.
    t2 = time.perf_counter()
    todo = [i for i, e in enumerate(exacts) if e.source == "none" and e.reason == "no_match"]
    if extract_with_model and todo:
        outs = model_extractions(
            model, [(flat[i][0], flat[i][1].text) for i in todo], config.batch_size, progress
        )
        for i, out in zip(todo, outs, strict=False):
            q, g = flat[i]
            exacts[i] = find_exact_answer(
                q,
                g.text,
                verdicts[i],
                dataset.candidates_for(q.task),
                extractor=lambda _q, _a, o=out: o,
                locate=locate,
            )
    t_extract = time.perf_counter() - t2

    records = [
        build_record(q, g, tok, e, v) for (q, g), v, e in zip(flat, verdicts, exacts, strict=False)
    ]
    summary = summarize(records, dataset)
    summary.update(
        locate=locate,
        located_rate=located_rates(records),
        model=model_info(model).to_dict(),
        prompt_format={"kind": fmt.kind, "template": fmt.template, "system": fmt.system},
        generation={k: v for k, v in vars(config).items()},
        model_extraction={
            "enabled": extract_with_model,
            "attempted": len(todo) if extract_with_model else 0,
        },
        timings={
            "generate_s": round(t_gen, 2),
            "grade_s": round(t_grade, 2),
            "extract_s": round(t_extract, 2),
            "generate_per_answer_s": round(t_gen / max(1, len(flat)), 4),
        },
    )
    return AnswerRun(records, summary)


def relocate(
    model: Any,
    dataset: QADataset,
    run: AnswerRun,
    locate: Locate,
    extract_with_model: bool = False,
    batch_size: int = 32,
    progress: bool = True,
) -> AnswerRun:
    """The same answers with their exact answers located again under `locate` (no generation).

    Generation is the slow part of a run; comparing the "blind" and "paper" locators on the
    same answers only needs the locating step again. Grades are recomputed (and must not
    change); token spans are recomputed from the stored token ids.

    Args:
        model: the model that generated `run` (its tokenizer, and the extractor if enabled).
        dataset: the questions of `run` (for the gold, used only by `locate="paper"`, and the
            task candidates).
        run: the answers to relocate (left unchanged).
        locate: "blind" or "paper".
        extract_with_model: ask the model for the short answer where string matching fails.

    Returns:
        A new `AnswerRun` whose summary says `locate` and the new located rates.
    """
    by_key = {(q.task, q.id): q for q in dataset.questions}
    missing = [r["id"] for r in run.records if (r["task"], r["id"]) not in by_key]
    if missing:
        raise ValueError(
            f"{len(missing)} answers are not questions of {dataset.name}: {missing[:5]}"
        )
    records = [AnswerRecord.from_dict(r.to_dict()) for r in run.records]
    qs = [by_key[(r["task"], r["id"])] for r in records]
    verdicts = [grade(q, r["answer"]) for q, r in zip(qs, records, strict=True)]
    for r, v in zip(records, verdicts, strict=True):
        if bool(v.correct) != bool(r["correct"]):
            raise ValueError(f"answer {r['task']}/{r['id']} grades differently now: not relocating")
    exacts = [
        find_exact_answer(q, r["answer"], v, dataset.candidates_for(q.task), locate=locate)
        for q, r, v in zip(qs, records, verdicts, strict=True)
    ]
    todo = [i for i, e in enumerate(exacts) if e.source == "none" and e.reason == "no_match"]
    if extract_with_model and todo:
        outs = model_extractions(
            model, [(qs[i], records[i]["answer"]) for i in todo], batch_size, progress
        )
        for i, out in zip(todo, outs, strict=True):
            exacts[i] = find_exact_answer(
                qs[i],
                records[i]["answer"],
                verdicts[i],
                dataset.candidates_for(qs[i].task),
                extractor=lambda _q, _a, o=out: o,
                locate=locate,
            )
    tok = model.tokenizer
    for r, e in zip(records, exacts, strict=True):
        n_prompt = len(r["prompt_token_ids"])
        span = exact_answer_token_span(tok, n_prompt, r["answer_token_ids"], e.char_span)
        full = list(r["prompt_token_ids"]) + list(r["answer_token_ids"])
        r["exact_answer"] = e.text
        r["exact_answer_source"] = e.source
        r["exact_answer_reason"] = e.reason
        r["exact_answer_char_span"] = list(e.char_span) if e.char_span else None
        r["exact_answer_token_span"] = list(span) if span else None
        r["exact_answer_token_text"] = tok.decode(full[span[0] : span[1]]) if span else None
    summary = {
        **run.summary,
        **summarize(records, dataset),
        "locate": locate,
        "located_rate": located_rates(records),
        "relocated_from": run.summary.get("locate", "paper"),
    }
    summary["model_extraction"] = {
        "enabled": extract_with_model,
        "attempted": len(todo) if extract_with_model else 0,
    }
    return AnswerRun(records, summary)


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
    document: rates are rounded to 4 places as written)."""

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
