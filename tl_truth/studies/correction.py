"""Probe-guided answer choice: force candidate answers, answer with the one the probe trusts.

Correction without steering (issue 12, item 3). For each question the candidates branch off
the greedy answer at its *slot*: where its exact answer starts (the greedy text before it is
kept: "The capital of Namibia is ___"), or at the answer's start when no exact answer was
located (or `slot="start"`). Then:

* closed-vocabulary tasks (the task has an answer vocabulary, `QADataset.candidates_for`):
  the k vocabulary entries most likely to continue the slot, found exactly without running
  most of them (`top_continuations`: the context runs once, then a branch and bound on the
  entries' token log-probabilities);
* free-form tasks: the top-k first tokens at the slot, each forced and greedily completed; the
  candidate is the completion's first clause (up to `.`, `,`, `;`, `:`, `!`, `?`, a newline or
  a parenthesis).

Every candidate is forced as the model's answer (the greedy prompt + slot prefix + candidate,
greedily continued as far as the probe's position reads: not at all for positions up to the
exact answer, one token for `after_exact`, to the run's answer length for positions counted
from the end; free-form candidates are always completed), its exact-answer tokens are the
candidate's own tokens, and the probe reads its cell there (`capture_batch`, the candidates
of several questions in one padded batch). A candidate is
graded on its own text (`grade(question, candidate)`). `logit_choice` answers with the most
likely candidate, `probe_choice` with the highest probe decision value (ties within 1e-6: the
more likely one; no scored candidate: the most likely one, counted as a fallback).

The building blocks live in `tl_truth.studies.candidates`, the aggregate,
`CorrectionResult`, in `tl_truth.studies.correction_result`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from tl_truth.answers.generation import (
    GenerationConfig,
    _newline_token_ids,
    generate_ids,
    stop_token_ids,
)
from tl_truth.answers.grading import find_span, grade
from tl_truth.answers.positions import exact_answer_token_span
from tl_truth.checkpoint import JsonlCheckpoint, digest
from tl_truth.data.questions import QADataset, Question
from tl_truth.models import model_info
from tl_truth.probing.probe import Probe
from tl_truth.studies.candidates import (
    answer_slot,
    clause_span,
    continuation_logprobs,
    probe_decisions,
    probe_pick,
    top_continuations,
    unique_answers,
)
from tl_truth.studies.correction_result import CorrectionResult, correction_result
from tl_truth.studies.resampling import Resampling


def tokens_read_after(position: str) -> int | None:
    """How many answer tokens after the exact answer a probe at `position` reads.

    A vocabulary candidate's forced answer is completed only that far: the model is causal,
    so later tokens cannot change the activation the probe reads.

    Args:
        position: a named position.

    Returns:
        0 (up to the exact answer), 1 (`after_exact`) or None (counted from the answer's end:
        the whole completion).

    >>> tokens_read_after("exact_last"), tokens_read_after("after_exact"), tokens_read_after("-2")
    (0, 1, None)
    """
    if position in ("last_prompt", "first_answer", "before_exact", "exact_first", "exact_last"):
        return 0
    return 1 if position == "after_exact" else None


class _Settings:
    """What every batch of questions shares (the model, probe and generation settings)."""

    def __init__(self, model, probe, k, slot, max_new_tokens, batch_size, stop_at_newline):
        self.model, self.probe, self.k, self.slot = model, probe, k, slot
        self.max_new, self.batch_size, self.stop_nl = max_new_tokens, batch_size, stop_at_newline
        self.tok = model.tokenizer
        self.after = tokens_read_after(probe.position)
        self.banned = stop_token_ids(self.tok, model) | (
            _newline_token_ids(self.tok) if stop_at_newline else set()
        )

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), clean_up_tokenization_spaces=False)


def _candidates(s: _Settings, q: Question, r: dict, vocab: Sequence[str]) -> tuple[list, dict]:
    """The top-k forced beginnings of one question: (text or None, forced ids, log-prob)."""
    prefix, gap = answer_slot(r, s.tok, s.slot)
    context = list(r["prompt_token_ids"]) + prefix
    info = {"prefix_ids": prefix, "gap": gap, "kind": "vocabulary" if vocab else "free_form"}
    span = r.get("exact_answer_token_span")
    at_exact = bool(span) and len(prefix) == span[0] - len(r["prompt_token_ids"])
    info["slot"] = "exact" if s.slot == "exact" and at_exact else "start"
    if vocab:
        texts = unique_answers(vocab, q.case_sensitive)
        ids = [s.tok(gap + t, add_special_tokens=False).input_ids for t in texts]
        keep = [i for i, x in enumerate(ids) if x]
        top = top_continuations(s.model, context, [ids[i] for i in keep], s.k, s.batch_size)
        info["n_vocabulary"] = len(texts)
        info["gold_in_vocabulary"] = any(grade(q, t).correct for t in texts)
        return [(texts[keep[j]], ids[keep[j]], lp) for j, lp in top], info
    first, _ = continuation_logprobs(s.model, context, [], s.batch_size)
    ranked = torch.argsort(first, descending=True)[: s.k + len(s.banned)].tolist()
    tokens = [t for t in ranked if t not in s.banned][: s.k]
    return [(None, [t], float(first[t])) for t in tokens], info


def _forced_answer(s: _Settings, q, r, info, begin, completion, logprobs) -> dict:
    """One candidate: its forced answer, exact-answer span, log-probability and grade."""
    text, forced, logprob = begin
    answer_ids = info["prefix_ids"] + list(forced) + list(completion)
    answer = s.decode(answer_ids)
    start = len(s.decode(info["prefix_ids"]))
    if text is not None:  # a vocabulary entry: right after the gap, else wherever it is
        at = start + len(info["gap"])
        found = find_span(answer[start:], text, case_sensitive=q.case_sensitive)
        ok = answer[at : at + len(text)] == text
        span = (at, at + len(text)) if ok else found and (start + found[0], start + found[1])
    else:  # a free-form beginning: its first clause
        span = clause_span(answer, start)
    n_prompt = len(r["prompt_token_ids"])
    tok_span = exact_answer_token_span(s.tok, n_prompt, answer_ids, span) if span else None
    if text is None:
        text = answer[span[0] : span[1]] if span else ""
        if tok_span:  # the forced token, then the completion's tokens up to the clause's end
            n_more = tok_span[1] - n_prompt - len(info["prefix_ids"]) - 1
            logprob += float(sum(logprobs[: max(0, n_more)]))
    verdict = grade(q, text)
    return {
        "text": text,
        "logprob": logprob,
        "correct": bool(verdict.correct),
        "category": verdict.category,
        "answer": answer,
        "answer_token_ids": answer_ids,
        "exact_answer_token_span": list(tok_span) if tok_span else None,
    }


def _correct_batch(s: _Settings, items: Sequence[tuple[Question, dict, tuple]]) -> list[dict]:
    """Candidates, forced answers and probe scores for a batch of questions -> their rows."""
    begins, infos = zip(*[_candidates(s, q, r, vocab) for q, r, vocab in items], strict=True)
    prompts, budgets = [], []
    for (_, r, _), info, bs in zip(items, infos, begins, strict=True):
        for b in bs:
            prompts.append(list(r["prompt_token_ids"]) + info["prefix_ids"] + list(b[1]))
            budget = max(0, s.max_new - len(info["prefix_ids"]) - len(b[1]))
            if info["kind"] == "vocabulary" and s.after is not None:
                budget = min(budget, s.after)  # the probe reads nothing later
            budgets.append(budget)
    outs = [{"answer_token_ids": [], "token_logprobs": []} for _ in prompts]
    todo = [j for j, b in enumerate(budgets) if b > 0]
    if todo:
        cfg = GenerationConfig(max_new_tokens=max(budgets), batch_size=s.batch_size)
        raw = generate_ids(
            s.model, [prompts[j] for j in todo], cfg, stop_at_newline=s.stop_nl, progress=False
        )
        for j, o in zip(todo, raw, strict=True):
            outs[j] = o[0]
    rows, cands, i = [], [], 0
    for (q, r, _), info, bs in zip(items, infos, begins, strict=True):
        mine = []
        for b in bs:
            done, budget = outs[i], budgets[i]
            ids, lps = done["answer_token_ids"][:budget], done["token_logprobs"][:budget]
            mine.append(_forced_answer(s, q, r, info, b, ids, lps))
            i += 1
        if info["kind"] == "free_form":  # two beginnings may give the same answer
            mine.sort(key=lambda c: -c["logprob"])
            keep = unique_answers([c["text"] for c in mine], q.case_sensitive)
            mine = [next(c for c in mine if c["text"] == t) for t in keep] or mine[:1]
        mine.sort(key=lambda c: -c["logprob"])  # the most likely first: logit_choice is 0
        for c in mine:
            c["prompt_token_ids"] = r["prompt_token_ids"]
        cands.extend(mine)
        rows.append(_row(q, r, info, mine, s))
    for c, d in zip(cands, probe_decisions(s.model, s.probe, cands, s.batch_size), strict=True):
        del c["prompt_token_ids"]
        c["probe_decision"] = d
        c["probe_score"] = None if d is None else 0.5 * (1.0 + math.tanh(d / 2))  # sigmoid
    for row in rows:
        _choose(row)
    return rows


def _row(q: Question, r: dict, info: dict, candidates: list, s: _Settings) -> dict:
    return {
        "task": q.task,
        "id": q.id,
        "split": q.split,
        "question": q.question,
        "gold": q.gold,
        "kind": info["kind"],
        "slot": info["slot"],
        "prefix": s.decode(info["prefix_ids"]),
        "n_vocabulary": info.get("n_vocabulary"),
        "gold_in_vocabulary": info.get("gold_in_vocabulary"),
        "greedy": {
            "answer": r.get("answer"),
            "exact_answer": r.get("exact_answer"),
            "correct": bool(r["correct"]),
        },
        "candidates": candidates,
    }


def _choose(row: dict) -> None:
    """Fill in the row's choices and the correctness of each strategy."""
    cands = row["candidates"]
    pick, tied = probe_pick([c["probe_decision"] for c in cands])
    fallback = pick is None
    greedy = row["greedy"]["correct"]
    right = [c["correct"] for c in cands]
    row["logit_choice"] = 0 if cands else None
    row["probe_choice"] = (0 if cands else None) if fallback else pick
    row["probe_tie"], row["probe_fallback"] = tied, fallback
    row["correct"] = {
        "greedy": greedy,
        "logit_choice": right[0] if cands else greedy,
        "probe_choice": right[row["probe_choice"]] if cands else greedy,
        "oracle": any(right),
    }


def probe_guided_choice(
    model: Any,
    dataset: QADataset,
    greedy: Sequence[dict],
    probe: Probe,
    k: int = 5,
    slot: str = "exact",
    max_new_tokens: int = 24,
    batch_size: int = 32,
    stop_at_newline: bool = False,
    samples: Resampling | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    progress: bool = True,
    checkpoint: str | Path | None = None,
) -> CorrectionResult:
    """Greedy vs the most likely candidate vs the probe's choice among the candidates.

    Args:
        model: the model that answered (and that the probe was trained on: checked).
        dataset: the questions (gold answers, grading rule, each task's vocabulary).
        greedy: one greedy answer record per question to correct (`generations.jsonl`).
        probe: the correctness probe, at its hook and position.
        k: candidates per question.
        slot: "exact" (branch at the greedy exact answer) or "start" (at the answer start).
        max_new_tokens: the answer length limit (forced answers are completed up to it).
        batch_size: rows per forward pass and decode batch; `batch_size // k` questions are
            handled (and checkpointed) together.
        stop_at_newline: answers end at a newline (plain Q/A prompts).
        samples: K samples per question (`tl-truth resample`) for `sample_selection`.
        n_boot: bootstrap replicates for the CIs.
        seed: the bootstrap seed.
        progress: show a progress bar.
        checkpoint: a JSONL file finished batches of questions are appended to (a killed call
            resumes there); None: no checkpoint.

    Returns:
        The `CorrectionResult` (its `rows`: one per question, with every candidate).

    >>> import tl_truth as tt
    >>> from tl_truth.testing import tiny_model
    >>> model = tiny_model("llama")  # random weights: its answers are gibberish
    >>> qs = [tt.make_question(c, f"What is the capital of {c}?", g, "capitals", "factual")
    ...       for c, g in [("France", "Paris"), ("Italy", "Rome")]]
    >>> ds = tt.QADataset("demo", qs, candidates=("Paris", "Lyon", "Rome", "Milan"))
    >>> run = tt.answer_questions(model, ds, tt.GenerationConfig(max_new_tokens=3),
    ...                           extract_with_model=False, progress=False)
    >>> probe = Probe("mean_diff", torch.ones(32), 0.0, torch.zeros(32), torch.ones(32),
    ...               hook="blocks.1.hook_resid_post", position="exact_last",
    ...               model=tt.model_info(model).to_dict())
    >>> res = probe_guided_choice(model, ds, run.records, probe, k=3, max_new_tokens=3,
    ...                           n_boot=10, progress=False)
    >>> res.n, res.k, [len(row["candidates"]) for row in res.rows]
    (2, 3, [3, 3])
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    by_key = {(q.task, q.id): q for q in dataset.questions}
    missing = [f"{r['task']}/{r['id']}" for r in greedy if (r["task"], r["id"]) not in by_key]
    if missing:
        raise ValueError(
            f"{len(missing)} answers are not questions of {dataset.name}: {missing[:3]}"
        )
    items = [
        (q, r, dataset.candidates_for(q.task))
        for r in greedy
        for q in [by_key[(r["task"], r["id"])]]
    ]
    s = _Settings(model, probe, k, slot, max_new_tokens, batch_size, stop_at_newline)
    per_batch = max(1, batch_size // k)
    key = digest(
        "probe_guided_choice", model_info(model).fingerprint, probe.hook, probe.position,
        probe.weight.tolist(), probe.bias, k, slot, max_new_tokens, batch_size, stop_at_newline,
        [(q.task, q.id) for q, _, _ in items],
    )  # fmt: skip
    ckpt = JsonlCheckpoint(checkpoint, key=key, stage="correct")
    rows: list[dict] = []
    bar = tqdm(total=len(items), desc="correct", unit="q", disable=not progress)
    for b, start in enumerate(range(0, len(items), per_batch)):
        chunk = items[start : start + per_batch]
        rows.extend(ckpt.get_or_compute(b, lambda chunk=chunk: _correct_batch(s, chunk)))
        bar.update(len(chunk))
    bar.close()
    selected, reason = sample_selection(model, probe, samples, rows, batch_size)
    return correction_result(rows, k, selected, reason, n_boot=n_boot, seed=seed, probe=probe)


def sample_selection(
    model: Any, probe: Probe, samples: Resampling | None, rows: Sequence[dict], batch_size: int
) -> tuple[np.ndarray | None, str | None]:
    """Per question, whether the probe's pick among its K samples is right (`select_answers`'
    `probe` strategy: no scored sample -> majority vote); NaN for questions without samples.

    The samples' own probe scores are used when they come from the same cell (hook and
    position), else every sample is scored with `probe` here.

    Returns:
        `(values, None)`, or `(None, reason)` when there is nothing to select among.
    """
    from tl_truth.probing.scoring import score_records
    from tl_truth.studies.selection import per_question

    if samples is None:
        return None, "no samples given (`tl-truth resample`, then --samples DIR)"
    sets = {s.key: s for s in samples.sets}
    mine = [sets.get((r["task"], r["id"])) for r in rows]
    have = [s for s in mine if s is not None]
    if not have:
        return None, "the samples hold none of these questions"
    cell = (samples.meta.get("probe") or {}) if isinstance(samples.meta, dict) else {}
    same = cell.get("hook") == probe.hook and cell.get("position") == probe.position
    if same and all("probe_score" in x for s in have for x in s.samples):
        scores = {
            s.key: [np.nan if x["probe_score"] is None else x["probe_score"] for x in s.samples]
            for s in have
        }
    else:  # scored by another cell (or not at all): score them with this probe
        flat = score_records(model, probe, [x for s in have for x in s.samples], batch_size)
        ends = np.cumsum([0] + [s.k for s in have])
        scores = {s.key: flat[a:b].tolist() for s, a, b in zip(have, ends, ends[1:], strict=False)}
    picked = iter(per_question(have, scores)[0]["probe"].tolist())
    return np.array([next(picked) if s is not None else np.nan for s in mine]), None
