"""Baselines: what the model's output alone says about whether its answer is right.

The paper compares its probes against two families of output-only error detectors:

* **logit-based** scores (`logit_scores`): the mean, min and max probability the model gave the
  tokens it generated, over the whole answer or over the exact-answer tokens only;
* **p(True)** (`p_true_scores`, Kadavath et al. 2022): the model is shown the question and its own
  answer and asked whether the answer is (A) True or (B) False; the score is the probability it
  puts on the "True" letter, averaged over both option orders to cancel its letter bias.

`evaluate_baselines` turns any such scores into test-set ROC AUCs with bootstrap intervals.
Every score is "higher = more confident the answer is correct".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from tl_truth.answers.generation import tokenize_prompts
from tl_truth.answers.prefix_cache import branched_last_logits, plain_last_logits
from tl_truth.answers.prompts import PromptFormat, default_format
from tl_truth.checkpoint import JsonlCheckpoint, batches, digest
from tl_truth.models import model_info
from tl_truth.probing.metrics import bootstrap_auc_ci, roc_auc

LOGIT_SCORES = (
    "logits_mean",
    "logits_min",
    "logits_max",
    "logits_mean_exact",
    "logits_min_exact",
    "logits_max_exact",
)

# ---------------------------------------------------------------------------------------------
# Logit-based scores


def _aggregate(probs: np.ndarray) -> tuple[float, float, float]:
    if probs.size == 0:
        return (np.nan, np.nan, np.nan)
    return (float(probs.mean()), float(probs.min()), float(probs.max()))


def logit_scores(records: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Mean / min / max probability of the generated tokens, per record.

    `logits_*` aggregate over the whole answer, `logits_*_exact` over the exact-answer tokens
    (`exact_answer_token_span`, in full-sequence coordinates). NaN where the answer is empty or
    there is no exact answer.

    Args:
        records: generation records with `token_logprobs` (one per answer token),
            `answer_token_ids`, `prompt_token_ids` and optionally `exact_answer_token_span`.

    Returns:
        One array of n scores per name in `LOGIT_SCORES` (higher = more confident).

    Raises:
        ValueError: the log-probs do not match the answer, or the span lies outside it.

    >>> rec = {"prompt_token_ids": [1, 2], "answer_token_ids": [3, 4, 5],
    ...        "token_logprobs": [np.log(0.5), np.log(0.9), np.log(0.1)],
    ...        "exact_answer_token_span": [3, 4]}
    >>> s = logit_scores([rec])
    >>> round(float(s["logits_min"][0]), 3), round(float(s["logits_mean_exact"][0]), 3)
    (0.1, 0.9)
    """
    out = {k: np.full(len(records), np.nan) for k in LOGIT_SCORES}
    for i, r in enumerate(records):
        probs = np.exp(np.asarray(r["token_logprobs"], dtype=np.float64))
        if len(probs) != len(r["answer_token_ids"]):
            raise ValueError(
                f"record {i}: {len(probs)} token_logprobs for "
                f"{len(r['answer_token_ids'])} answer tokens"
            )
        out["logits_mean"][i], out["logits_min"][i], out["logits_max"][i] = _aggregate(probs)
        span = r.get("exact_answer_token_span")
        if span is None:
            continue
        offset = len(r["prompt_token_ids"])
        start, end = span[0] - offset, span[1] - offset
        if not (0 <= start <= end <= len(probs)):
            raise ValueError(
                f"record {i}: exact_answer_token_span {list(span)} lies outside the answer "
                f"(full-sequence positions {offset}..{offset + len(probs)})"
            )
        exact = _aggregate(probs[start:end])
        out["logits_mean_exact"][i], out["logits_min_exact"][i], out["logits_max_exact"][i] = exact
    return out


# ---------------------------------------------------------------------------------------------
# p(True)

P_TRUE_PREFIX = "The proposed answer is: ("


def p_true_prompts(question: str, answer: str, true_first: bool) -> tuple[str, str]:
    """The judge prompt as (body, assistant prefix); with `true_first`, (A) is True.

    A base model reads `body + "\\n" + prefix`; an instruct model gets `body` as the user message
    and `prefix` as the start of its own turn.

    Args:
        question: the question.
        answer: the model's answer to judge.
        true_first: whether option (A) is "True".

    Returns:
        `(body, prefix)`; the prefix ends in "(" so the next token is the chosen letter.

    >>> body, prefix = p_true_prompts("Capital of France?", "Paris", true_first=False)
    >>> body.splitlines()[-2:], prefix
    ([' (A) False', ' (B) True'], 'The proposed answer is: (')
    """
    first, second = ("True", "False") if true_first else ("False", "True")
    body = (
        f"Question: {question}\nProposed answer: {answer}\n"
        f"Is the proposed answer:\n (A) {first}\n (B) {second}"
    )
    return body, P_TRUE_PREFIX


def render_p_true_prompt(
    tokenizer: Any, fmt: PromptFormat, question: str, answer: str, true_first: bool
) -> str:
    """The exact text the model reads: chat template + assistant prefix, or the plain text.

    Args:
        tokenizer: the model's tokenizer (for the chat template).
        fmt: the prompt format (`tl_truth.answers.prompts.default_format(model)`).
        question: the question.
        answer: the answer to judge.
        true_first: whether option (A) is "True".

    Returns:
        The prompt text, ending in the assistant prefix.

    >>> from tl_truth.answers.prompts import default_format
    >>> from tl_truth.testing import tiny_model
    >>> model = tiny_model("llama")
    >>> text = render_p_true_prompt(model.tokenizer, default_format(model), "2 + 2?", "4", True)
    >>> text.startswith("Question: 2 + 2?"), text.endswith("The proposed answer is: (")
    (True, True)
    """
    body, prefix = p_true_prompts(question, answer, true_first)
    if fmt.kind == "chat":
        return fmt.render(tokenizer, body) + prefix
    return body + "\n" + prefix


def letter_token_ids(tokenizer: Any) -> tuple[int, int]:
    """Token ids of "A" and "B" as they follow "("; each must be a single token.

    Args:
        tokenizer: a Hugging Face tokenizer.

    Returns:
        `(id_of_A, id_of_B)`.

    Raises:
        ValueError: a letter is several tokens, or both map to the same id.

    >>> from tl_truth.testing import tiny_model
    >>> a, b = letter_token_ids(tiny_model("llama").tokenizer)
    >>> a != b
    True
    """
    ids = []
    for letter in ("A", "B"):
        enc = tokenizer.encode(letter, add_special_tokens=False)
        if len(enc) != 1:
            raise ValueError(
                f"p(True) needs {letter!r} to be a single token, but this tokenizer splits it "
                f"into {enc}"
            )
        ids.append(int(enc[-1]))
    if ids[0] == ids[1]:
        raise ValueError(f"'A' and 'B' map to the same token id {ids[0]}")
    return ids[0], ids[1]


def last_token_logits(model: Any, prompts: Sequence[Sequence[int]], pad_id: int) -> torch.Tensor:
    """Next-token logits [batch, vocab] after each prompt, from one left-padded masked forward.

    Args:
        model: a TransformerLens model.
        prompts: token ids of each prompt (any lengths).
        pad_id: the padding token id.

    Returns:
        [batch, d_vocab] float32 logits on the CPU.

    >>> from tl_truth.testing import tiny_model
    >>> model = tiny_model("llama")
    >>> last_token_logits(model, [[1, 5, 9], [1, 7]], pad_id=0).shape[0]
    2
    """
    return plain_last_logits(model, prompts, pad_id)


def _p_true_of_pairs(
    model: Any, pairs: Sequence[tuple[list[int], list[int]]], letters: tuple[int, int], pad_id: int
) -> np.ndarray:
    """Mean p(True) of each answer's two prompts ((A) True, then (A) False).

    The two prompts agree up to the first option, and every prompt shares the chat header:
    `branched_last_logits` runs each shared part once.
    """
    logits = torch.stack(branched_last_logits(model, [list(p) for p in pairs], pad_id))
    p_a = torch.softmax(logits[..., list(letters)], dim=-1)[..., 0].double().numpy()
    return (p_a[:, 0] + (1.0 - p_a[:, 1])) / 2.0


def p_true_scores(
    model: Any,
    records: Sequence[Mapping[str, Any]],
    batch_size: int = 16,
    progress: bool = True,
    fmt: PromptFormat | None = None,
    checkpoint: str | Path | None = None,
) -> np.ndarray:
    """p(True) per record: the model's own probability that its answer is true.

    Each record is judged in both option orders ((A) True / (B) False and the swap); the score is
    the mean of the two p(True), each a softmax over the "A" and "B" tokens only.

    Args:
        model: a TransformerLens model; "A" and "B" must be single tokens.
        records: dicts with `question` and `answer` (the model's answer to judge).
        batch_size: prompts per forward pass.
        progress: show a progress bar.
        fmt: the prompt format (default `default_format(model)`: chat template if it has one).
        checkpoint: a JSONL file each finished batch's scores are appended to; a killed call
            resumes there without judging those answers again (None: off). Inside
            `tl_truth.parallel.sharded`, each rank judges its share of the batches and every
            rank returns every score.

    Returns:
        [n] scores in (0, 1), higher = the model thinks its answer is more likely true.

    >>> from tl_truth.testing import tiny_model
    >>> records = [{"question": "2 + 2?", "answer": "4"}, {"question": "Capital of Peru?",
    ...                                                    "answer": "Lima"}]
    >>> s = p_true_scores(tiny_model("llama"), records, progress=False)
    >>> s.shape, bool(((s > 0) & (s < 1)).all())
    ((2,), True)
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    tok = model.tokenizer
    fmt = fmt or default_format(model)
    letters = letter_token_ids(tok)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    ckpt = JsonlCheckpoint(
        checkpoint,
        key=digest(
            "p_true/shared-stems",  # batches by length since; older checkpoints are not reused
            batch_size,
            model_info(model).fingerprint,
            [(r["question"], r["answer"]) for r in records],
        ),
        stage="p_true",
    )

    def judge(rows: Sequence[int]) -> list[float]:
        pairs = []
        for i in rows:
            q, a = records[i]["question"], records[i]["answer"]
            texts = [render_p_true_prompt(tok, fmt, q, a, first) for first in (True, False)]
            pairs.append(tokenize_prompts(tok, texts, fmt))
        return _p_true_of_pairs(model, pairs, letters, pad_id).tolist()

    # Batches of similar length pad little; the scores are put back in the records' order.
    order = sorted(
        range(len(records)), key=lambda i: len(records[i]["question"]) + len(records[i]["answer"])
    )
    parts = list(batches(len(records), batch_size))
    mine = set(ckpt.pending(len(parts)))  # data parallel: this rank's share of them
    for b, start, end in tqdm(parts, desc="p(True)", disable=not progress, unit="batch"):
        if b in mine:
            ckpt.get_or_compute(b, lambda s=start, e=end: judge(order[s:e]))
    scores = np.zeros(len(records))
    scores[order] = [x for item in ckpt.gather(len(parts)) for x in item]
    return scores


# ---------------------------------------------------------------------------------------------
# Evaluation


def evaluate_baselines(
    scores: Mapping[str, np.ndarray],
    labels: Sequence[bool] | np.ndarray,
    test_mask: Sequence[bool] | np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, dict]:
    """ROC AUC (answer correct vs. not) of each score on the test rows, with a bootstrap 95% CI.

    NaN scores are left out of that baseline only; `n` is how many rows it was scored on. AUC and
    CI are NaN when those rows hold a single class.

    Args:
        scores: name -> [n] scores (e.g. `logit_scores(records)` plus "p_true"), higher =
            more confident the answer is correct.
        labels: [n] correctness (True / 1 = correct).
        test_mask: [n] rows to evaluate on (default all).
        n_boot: bootstrap resamples for the CI.
        seed: seeds the bootstrap.

    Returns:
        name -> `{"auc": float, "ci": [low, high], "n": rows used}`.

    >>> out = evaluate_baselines({"conf": np.array([0.9, 0.2, 0.8, np.nan, 0.3])},
    ...                          [1, 0, 1, 1, 0], n_boot=100)
    >>> out["conf"]["auc"], out["conf"]["n"]
    (1.0, 4)
    """
    labels = np.asarray(labels).astype(bool)
    mask = np.ones(len(labels), bool) if test_mask is None else np.asarray(test_mask, bool)
    if mask.shape != labels.shape:
        raise ValueError(f"test_mask has shape {mask.shape}, labels {labels.shape}")
    out = {}
    for name, s in scores.items():
        s = np.asarray(s, dtype=np.float64)
        if s.shape != labels.shape:
            raise ValueError(f"scores {name!r} have shape {s.shape}, labels {labels.shape}")
        keep = mask & ~np.isnan(s)
        auc = roc_auc(s[keep], labels[keep]) if keep.any() else float("nan")
        if np.isnan(auc):
            ci = (float("nan"), float("nan"))
        else:
            ci = bootstrap_auc_ci(s[keep], labels[keep], n_boot, seed)
        out[name] = {"auc": auc, "ci": [ci[0], ci[1]], "n": int(keep.sum())}
    return out
