"""Answers: questions -> generations -> grades -> exact-answer token spans, as one record each.

`answer_questions` is the foundation every later step reads: one `AnswerRecord` per
(question, sample) with the exact token ids the model saw and produced, the grade, and where the
exact answer sits in full-sequence token coordinates. Nothing is dropped: an example without an
exact answer keeps its record with `exact_answer_source == "none"` and a reason, and the summary
counts every source and failure.

The result, `AnswerRun`, lives in `tl_truth.answers.answer_run` and the summaries in
`tl_truth.answers.summary`; both are re-exported here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tl_truth.answers.answer_run import (
    FIGURE_FILE,
    GENERATIONS_FILE,
    SUMMARY_FILE,
    AnswerRun,
    read_records,
)
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
from tl_truth.answers.summary import LOCATED_GAP_WARNING, located_rates, summarize
from tl_truth.answers.token_acts import AnswerCapture
from tl_truth.data.questions import QADataset, Question
from tl_truth.models import model_info
from tl_truth.parallel import rank_files

__all__ = [
    "EXTRACT_CHECKPOINT",
    "FIGURE_FILE",
    "GENERATE_CHECKPOINT",
    "GENERATIONS_FILE",
    "LOCATED_GAP_WARNING",
    "SUMMARY_FILE",
    "AnswerRun",
    "answer_questions",
    "build_record",
    "clear_checkpoints",
    "located_rates",
    "model_extractions",
    "read_records",
    "relocate",
    "summarize",
]


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


GENERATE_CHECKPOINT = "generate.ckpt.jsonl"
EXTRACT_CHECKPOINT = "extract.ckpt.jsonl"


def clear_checkpoints(out_dir: str | Path, names: Sequence[str] | None = None) -> None:
    """Delete the batch checkpoints of `out_dir` (all `*.ckpt.jsonl`, or those `names` and
    the rank-tagged files of a data-parallel run next to them)."""
    out = Path(out_dir)
    if names is None:
        files = list(out.glob("*.ckpt.jsonl"))
    else:
        files = [f for n in names for f in (out / n, *rank_files(out / n))]
    for f in files:
        f.unlink(missing_ok=True)


def model_extractions(
    model: Any,
    pairs: Sequence[tuple[Question, str]],
    batch_size: int = 32,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    share_prefix: bool = True,
) -> list[str]:
    """The paper's fallback: ask a model to extract the short answer (accepted only if substring).

    `checkpoint`: a JSONL file finished batches are appended to (a killed call resumes there).
    `share_prefix`: the few-shot instruction every prompt starts with is run once and its KV
    cache reused (`generate_ids(share_prefix=True)`); False runs every prompt in full.
    """
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
        checkpoint=checkpoint,
        share_prefix=share_prefix,
        drop_finished=True,  # short answers behind a long prompt: most rows stop early
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
    checkpoint_dir: str | Path | None = None,
    capture: AnswerCapture | None = None,
) -> AnswerRun:
    """Generate, grade and locate the exact answer for every question (K samples each).

    Each generated batch is graded and located (by string matching) as soon as it is decoded;
    the model-based extraction then runs once over every answer string matching missed.

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
        checkpoint_dir: where generation and extraction append their finished batches
            (`generate.ckpt.jsonl`, `extract.ckpt.jsonl`), so a killed call resumes there with
            identical results; the caller deletes them (`clear_checkpoints`) once the answers
            are saved. None: no checkpoints.
        capture: activations captured inside generation (`tl_truth.probing.FusedCapture`):
            its recorder's hooks run in the decode loop, and after each batch it gets the
            batch's records, their activations and which records are final (those awaiting
            the model's extraction are not). None: no capture.

    Returns:
        An `AnswerRun`: one `AnswerRecord` per answer and the summary (`located_rate` per class).

    >>> from tl_truth.data import load_questions
    >>> from tl_truth.testing import tiny_model
    >>> model = tiny_model("llama")  # random weights: every answer is wrong
    >>> run = answer_questions(model, load_questions("capitals", limit=3),
    ...                        GenerationConfig(max_new_tokens=8), extract_with_model=False,
    ...                        progress=False)
    >>> len(run.records), run.summary["n"], run.summary["locate"]
    (3, 3, 'blind')
    >>> r = run.records[0]
    >>> r["category"] in ("correct", "incorrect", "refusal"), len(r["answer_token_ids"]) <= 8
    (True, True)
    """
    config = config or GenerationConfig()
    fmt = fmt or default_format(model)
    tok = model.tokenizer
    t0 = time.perf_counter()
    ck = Path(checkpoint_dir) if checkpoint_dir is not None else None
    questions, n_samples = dataset.questions, config.num_samples
    n = len(questions) * n_samples
    verdicts: list = [None] * n  # by flat index: question * n_samples + sample
    exacts: list = [None] * n
    records: list = [None] * n
    t_batch = {"grade": 0.0, "capture": 0.0}

    def on_batch(pairs: list[tuple[int, Generation]], acts) -> None:
        t = time.perf_counter()
        done = []
        for i, g in pairs:
            q, f = questions[i], i * n_samples + g.sample_index
            verdicts[f] = grade(q, g.text)
            exacts[f] = find_exact_answer(
                q, g.text, verdicts[f], dataset.candidates_for(q.task), locate=locate
            )
            records[f] = build_record(q, g, tok, exacts[f], verdicts[f])
            done.append(f)
        t_batch["grade"] += time.perf_counter() - t
        if capture is not None:
            t = time.perf_counter()
            final = [not (extract_with_model and _needs_extraction(exacts[f])) for f in done]
            capture.add(done, [records[f] for f in done], acts, final)
            t_batch["capture"] += time.perf_counter() - t

    gens = generate(
        model,
        questions,
        config,
        fmt,
        progress=progress,
        checkpoint=ck / GENERATE_CHECKPOINT if ck else None,
        record=capture.recorder if capture is not None else None,
        on_batch=on_batch,
    )
    t_gen = time.perf_counter() - t0 - t_batch["grade"] - t_batch["capture"]
    flat = [(q, g) for q, samples in zip(questions, gens, strict=True) for g in samples]

    # Model extraction only where string matching found nothing in a non-refusal.
    t2 = time.perf_counter()
    todo = [i for i, e in enumerate(exacts) if _needs_extraction(e)]
    if extract_with_model and todo:
        outs = model_extractions(
            model,
            [(flat[i][0], flat[i][1].text) for i in todo],
            config.batch_size,
            progress,
            checkpoint=ck / EXTRACT_CHECKPOINT if ck else None,
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
            records[i] = build_record(q, g, tok, exacts[i], verdicts[i])
    t_extract = time.perf_counter() - t2

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
            "grade_s": round(t_batch["grade"], 2),
            "extract_s": round(t_extract, 2),
            "generate_per_answer_s": round(t_gen / max(1, len(flat)), 4),
            **({"capture_in_generation_s": round(t_batch["capture"], 2)} if capture else {}),
        },
    )
    return AnswerRun(records, summary)


def _needs_extraction(e: ExactAnswer) -> bool:
    """String matching found nothing in an answer that is not a refusal: ask the model."""
    return e.source == "none" and e.reason == "no_match"


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
    todo = [i for i, e in enumerate(exacts) if _needs_extraction(e)]
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
