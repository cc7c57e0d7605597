"""Answers: questions -> generations -> grades -> exact-answer token spans, as one record each.

`answer_questions` is the foundation every later step reads: one JSON-able record per
(question, sample) with the exact token ids the model saw and produced, the grade, and where the
exact answer sits in full-sequence token coordinates. Nothing is dropped: an example without an
exact answer keeps its record with `exact_answer_source == "none"` and a reason, and the summary
counts every source and failure.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tl_truth.answers.exact_answer import clean_extraction, extraction_prompt, find_exact_answer
from tl_truth.answers.generation import (
    Generation,
    GenerationConfig,
    generate,
    generate_ids,
    tokenize_prompts,
)
from tl_truth.answers.grading import grade
from tl_truth.answers.positions import exact_answer_token_span
from tl_truth.answers.prompts import PromptFormat, default_format
from tl_truth.data.questions import QADataset, Question
from tl_truth.models import model_info

GENERATIONS_FILE = "generations.jsonl"
SUMMARY_FILE = "summary.json"


def build_record(question: Question, gen: Generation, tokenizer: Any, exact, verdict) -> dict:
    span = exact_answer_token_span(
        tokenizer, len(gen.prompt_token_ids), gen.answer_token_ids, exact.char_span
    )
    full = gen.full_token_ids
    return {
        "id": question.id,
        "task": question.task,
        "skill": question.skill,
        "split": question.split,
        "question": question.question,
        "prompt": gen.prompt,
        "gold": question.gold,
        "gold_aliases": list(question.answers),
        "answer": gen.text,
        "correct": bool(verdict.correct),
        "category": verdict.category,
        "grade_reason": verdict.reason,
        "exact_answer": exact.text,
        "exact_answer_source": exact.source,
        "exact_answer_reason": exact.reason,
        "exact_answer_char_span": list(exact.char_span) if exact.char_span else None,
        "exact_answer_token_span": list(span) if span else None,
        "exact_answer_token_text": tokenizer.decode(full[span[0] : span[1]]) if span else None,
        "prompt_token_ids": gen.prompt_token_ids,
        "answer_token_ids": gen.answer_token_ids,
        "token_logprobs": gen.token_logprobs,
        "stop_reason": gen.stop_reason,
        "sample_index": gen.sample_index,
    }


@dataclass
class AnswerRun:
    """Graded generations with exact-answer spans; `records` follow generations.jsonl."""

    records: list[dict]
    summary: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.records)

    def to_dataframe(self):
        import pandas as pd

        return pd.DataFrame(self.records)

    def plot(self, ax=None):
        """Accuracy and exact-answer rate per task."""
        import matplotlib.pyplot as plt

        df = self.to_dataframe()
        df["has_exact"] = df["exact_answer_token_span"].notna()
        per_task = df.groupby("task")[["correct", "has_exact"]].mean()
        ax = ax or plt.subplots(figsize=(1.2 + 1.1 * len(per_task), 3))[1]
        per_task.rename(columns={"correct": "accuracy", "has_exact": "exact-answer rate"}).plot.bar(
            ax=ax, ylim=(0, 1), rot=0
        )
        ax.set_title(f"{self.summary.get('model', {}).get('name', '')}: greedy answers")
        return ax

    def save(self, out_dir: str | Path) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / (GENERATIONS_FILE + ".tmp")
        with tmp.open("w") as f:
            for r in self.records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        tmp.replace(out / GENERATIONS_FILE)
        (out / SUMMARY_FILE).write_text(json.dumps(self.summary, indent=2, ensure_ascii=False))
        return out

    @classmethod
    def load(cls, out_dir: str | Path) -> AnswerRun:
        out = Path(out_dir)
        with (out / GENERATIONS_FILE).open() as f:
            records = [json.loads(line) for line in f if line.strip()]
        summary_path = out / SUMMARY_FILE
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        return cls(records, summary)


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
) -> AnswerRun:
    """Generate, grade and locate the exact answer for every question (K samples each)."""
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
        find_exact_answer(q, g.text, v, dataset.candidates_for(q.task))
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
            )
    t_extract = time.perf_counter() - t2

    records = [
        build_record(q, g, tok, e, v) for (q, g), v, e in zip(flat, verdicts, exacts, strict=False)
    ]
    summary = summarize(records, dataset)
    summary.update(
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


def summarize(records: Sequence[dict], dataset: QADataset | None = None) -> dict:
    """Counts, accuracy, refusals and exact-answer rates, overall and per task."""

    def block(rs: Sequence[dict]) -> dict:
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
