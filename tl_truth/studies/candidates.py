"""The pieces of probe-guided answer choice: slots, candidate likelihoods, clauses, scores.

`tl_truth.studies.correction` forces candidate answers and lets the correctness probe choose;
these are its building blocks, each usable on its own: where candidates branch off a greedy
answer (`answer_slot`), the log-likelihood of many continuations of one context with the
context run once (`continuation_logprobs`), a free-form candidate's first clause
(`clause_span`), the probe's decision values on forced answers (`probe_decisions`) and its
pick among them (`probe_pick`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from tl_truth.answers.decode_step import _stepper
from tl_truth.answers.matching import fold_key
from tl_truth.answers.positions import resolve_positions
from tl_truth.answers.prefix_cache import expanded_copy
from tl_truth.config import SLOTS
from tl_truth.models import model_device, model_info
from tl_truth.probing.activations import capture_batch
from tl_truth.probing.probe import Probe

TIE_TOLERANCE = 1e-6  # probe decision values this close count as a tie
_CLAUSE_END = re.compile(r"[.,;:!?](?=\s|$)|\n|\s\(")


def answer_slot(record: dict, tokenizer: Any, slot: str = "exact") -> tuple[list[int], str]:
    """Where the candidates of a question branch off its greedy answer.

    Args:
        record: the greedy answer (`generations.jsonl` record).
        tokenizer: the model's tokenizer.
        slot: "exact" (at the greedy exact answer's first token, when one was located) or
            "start" (at the answer's start).

    Returns:
        `(prefix_ids, gap)`: the greedy answer tokens kept before the candidate, and the
        characters between their text and the exact answer (e.g. the space that the exact
        answer's first token carries), which a vocabulary candidate is preceded by.

    >>> from tl_truth.testing import tiny_tokenizer
    >>> tok = tiny_tokenizer()
    >>> ids = tok("The capital of France is Paris.", add_special_tokens=False).input_ids
    >>> rec = {"prompt_token_ids": [1, 2], "answer_token_ids": ids,
    ...        "answer": tok.decode(ids), "exact_answer_char_span": [25, 30],
    ...        "exact_answer_token_span": [2 + len(ids) - 2, 2 + len(ids) - 1]}
    >>> prefix, gap = answer_slot(rec, tok)
    >>> tok.decode(prefix), gap
    ('The capital of France is', ' ')
    >>> answer_slot(rec, tok, "start")
    ([], '')
    """
    if slot not in SLOTS:
        raise ValueError(f"slot must be one of {SLOTS}, got {slot!r}")
    span, chars = record.get("exact_answer_token_span"), record.get("exact_answer_char_span")
    if slot == "start" or not span or not chars:
        return [], ""
    prefix = list(record["answer_token_ids"][: span[0] - len(record["prompt_token_ids"])])
    text = tokenizer.decode(prefix, clean_up_tokenization_spaces=False)
    answer = record.get("answer", "")
    if not answer.startswith(text) or len(text) > chars[0]:
        return [], ""  # a token straddles the boundary: branch at the start instead
    return prefix, answer[len(text) : chars[0]]


class _CachedContext:
    """A context run once; batches of continuations then reuse copies of its KV cache."""

    def __init__(self, model: Any, context: Sequence[int]):
        if not context:
            raise ValueError("the context needs at least one token")
        self.model, self.device = model, model_device(model)
        self.stepper = _stepper(model, 1, True)
        ctx = torch.tensor([list(context)], device=self.device)
        logits = self.stepper(ctx, torch.ones_like(ctx), last_only=True)[0, -1].float()
        self.first = torch.log_softmax(logits, -1).cpu()  # the next token's log-probs
        self.pad = model.tokenizer.pad_token_id or 0

    def next_logprobs(self, prefixes: Sequence[Sequence[int]]) -> Float[Tensor, "m vocab"]:
        """Log-probabilities of the token after each prefix (all of one length)."""
        tokens = torch.tensor([list(p) for p in prefixes], device=self.device)
        twin = expanded_copy(self.stepper, len(prefixes), self.device)
        logits = twin(tokens, torch.ones_like(tokens), last_only=True)[:, -1]
        return torch.log_softmax(logits.float(), -1).cpu()

    def sums(self, conts: Sequence[Sequence[int]]) -> list[float]:
        """Summed log-probabilities of one batch of continuations (one forward pass)."""
        if any(len(c) == 0 for c in conts):
            raise ValueError("every continuation needs at least one token")
        total = [float(self.first[c[0]]) for c in conts]
        longer = [i for i, c in enumerate(conts) if len(c) > 1]
        if not longer:
            return total
        feed = [list(conts[i][:-1]) for i in longer]  # predicts tokens 1.. of each
        width = max(len(f) for f in feed)
        tokens = torch.full((len(feed), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(feed), width), dtype=torch.long)
        for r, f in enumerate(feed):
            tokens[r, : len(f)] = torch.tensor(f)
            mask[r, : len(f)] = 1
        twin = expanded_copy(self.stepper, len(feed), self.device)
        logits = twin(tokens.to(self.device), mask.to(self.device)).float()
        logp = torch.log_softmax(logits, -1).cpu()
        for r, i in enumerate(longer):
            rest = torch.tensor(list(conts[i][1:]))
            total[i] += float(logp[r, torch.arange(len(rest)), rest].double().sum())
        return total


@torch.no_grad()
def continuation_logprobs(
    model: Any,
    context: Sequence[int],
    continuations: Sequence[Sequence[int]],
    batch_size: int = 32,
) -> tuple[Float[Tensor, " vocab"], list[float]]:
    """Log-probability of each continuation after `context`; the context runs once.

    The context's KV cache is copied to each batch of continuations (right-padded), so
    many continuations cost one short forward pass per batch.

    Args:
        model: a HookedTransformer or TransformerBridge.
        context: token ids (prompt + answer prefix), non-empty.
        continuations: token ids of each continuation (each non-empty).
        batch_size: continuations per forward pass.

    Returns:
        `(next_logprobs, sums)`: [vocab] log-probabilities of the token after the context, and
        per continuation the sum of its tokens' log-probabilities.

    >>> from tl_truth.testing import tiny_model
    >>> model = tiny_model("llama")
    >>> first, sums = continuation_logprobs(model, [1, 20, 30], [[40], [40, 50]])
    >>> logits = model(torch.tensor([[1, 20, 30, 40, 50]]))[0].detach().log_softmax(-1)
    >>> round(sums[1], 4) == round(float(logits[2, 40] + logits[3, 50]), 4)
    True
    >>> sums[0] == float(first[40])
    True
    """
    cached = _CachedContext(model, context)
    sums: list[float] = []
    for start in range(0, len(continuations), batch_size):
        sums.extend(cached.sums(continuations[start : start + batch_size]))
    return cached.first, sums


@torch.no_grad()
def top_continuations(
    model: Any,
    context: Sequence[int],
    continuations: Sequence[Sequence[int]],
    k: int,
    batch_size: int = 32,
) -> list[tuple[int, float]]:
    """The k most likely continuations after `context`, exactly, running few of them.

    Branch and bound, token by token: the log-probability of a continuation's first d tokens
    bounds the whole (later tokens only lower it). Depth 1 comes free with the context's pass;
    at each depth the continuations still alive get their next token's log-probability (the
    most promising first, with no padding: all are fed their first d tokens), those that end
    there are complete, and one whose bound is at most the k-th best complete one is dropped.

    Args:
        model: a HookedTransformer or TransformerBridge.
        context: token ids (prompt + answer prefix), non-empty.
        continuations: token ids of each continuation (each non-empty).
        k: how many to return.
        batch_size: continuations per forward pass.

    Returns:
        `(index, log-probability)` of the top k continuations, most likely first.

    >>> from tl_truth.testing import tiny_model
    >>> model = tiny_model("llama")
    >>> conts = [[40, 50], [41], [42, 43, 44], [45, 46], [40, 51, 52]]
    >>> _, sums = continuation_logprobs(model, [1, 20, 30], conts)
    >>> top = top_continuations(model, [1, 20, 30], conts, k=2, batch_size=1)
    >>> [i for i, _ in top] == sorted(range(5), key=lambda i: -sums[i])[:2]
    True
    """
    if any(len(c) == 0 for c in continuations):
        raise ValueError("every continuation needs at least one token")
    cached = _CachedContext(model, context)
    conts = [list(c) for c in continuations]
    bound = [float(cached.first[c[0]]) for c in conts]
    done = [(bound[i], i) for i, c in enumerate(conts) if len(c) == 1]
    alive = [i for i, c in enumerate(conts) if len(c) > 1]

    def kth() -> float:
        return sorted(done, reverse=True)[k - 1][0] if len(done) >= k else -math.inf

    depth = 1
    while alive:
        alive.sort(key=lambda i: -bound[i])
        deeper = []
        for start in range(0, len(alive), batch_size):
            chunk = [i for i in alive[start : start + batch_size] if bound[i] > kth()]
            if not chunk:  # sorted by bound: nothing later in this depth survives either
                break
            logp = cached.next_logprobs([conts[i][:depth] for i in chunk])
            for row, i in enumerate(chunk):
                bound[i] += float(logp[row, conts[i][depth]])
                if len(conts[i]) == depth + 1:
                    done.append((bound[i], i))  # complete: its bound is its log-probability
                else:
                    deeper.append(i)
        alive, depth = deeper, depth + 1
    done.sort(key=lambda t: (-t[0], t[1]))
    return [(i, v) for v, i in done[:k]]


def clause_span(answer: str, start: int) -> tuple[int, int] | None:
    """The first clause of `answer[start:]` (a free-form candidate), as a character span.

    Args:
        answer: the forced answer's text.
        start: where the candidate starts (the slot).

    Returns:
        `[s, e)` without surrounding whitespace, up to the first `.`, `,`, `;`, `:`, `!`, `?`
        followed by a space or the end, a newline or an opening parenthesis; None if empty.

    >>> text = "It is Cape Town, Namibia."
    >>> s, e = clause_span(text, 5)
    >>> text[s:e], clause_span("3.5 m. Yes", 0)
    ('Cape Town', (0, 5))
    """
    rest = answer[start:]
    m = _CLAUSE_END.search(rest)
    piece = rest[: m.start()] if m else rest
    s = start + len(piece) - len(piece.lstrip())
    e = start + len(piece.rstrip())
    return (s, e) if e > s else None


def unique_answers(texts: Sequence[str], case_sensitive: bool = False) -> list[str]:
    """The texts without repeats (accents, case and punctuation folded unless
    `case_sensitive`), first spelling kept, in order; empty ones dropped.

    >>> unique_answers(["Bogotá", "Bogota", "Lima", ""]), unique_answers(["In", "in"], True)
    (['Bogotá', 'Lima'], ['In', 'in'])
    """
    seen: dict[str, str] = {}
    for t in texts:
        key = t if case_sensitive else fold_key(t)
        if key and key not in seen:
            seen[key] = t
    return list(seen.values())


def probe_pick(decisions: Sequence[float | None]) -> tuple[int | None, bool]:
    """The candidate the probe picks (highest decision value; candidates most likely first).

    Args:
        decisions: the probe's decision value per candidate (None / NaN: not scored).

    Returns:
        `(index, tied)`: the first candidate within `TIE_TOLERANCE` of the best score (so a
        tie goes to the more likely candidate) and whether several were; `(None, False)` when
        no candidate was scored.

    >>> probe_pick([0.2, 1.5, None]), probe_pick([0.7, 0.7]), probe_pick([None])
    ((1, False), (0, True), (None, False))
    """
    scored = [(i, d) for i, d in enumerate(decisions) if d is not None and math.isfinite(d)]
    if not scored:
        return None, False
    best = max(d for _, d in scored)
    tied = [i for i, d in scored if d >= best - TIE_TOLERANCE]
    return tied[0], len(tied) > 1


@torch.no_grad()
def probe_decisions(
    model: Any, probe: Probe, records: Sequence[dict], batch_size: int = 32
) -> list[float | None]:
    """The probe's decision value (> 0: "correct") for each forced answer; None without its
    position. Decision values, not probabilities: sigmoids saturate and would tie.

    Args:
        model: the model the probe was trained on (checked).
        probe: the probe (its `hook` and `position` are read).
        records: dicts with `prompt_token_ids`, `answer_token_ids`, `exact_answer_token_span`.
        batch_size: records per padded forward pass.

    Returns:
        One float (or None) per record.

    >>> from tl_truth.testing import tiny_model
    >>> model = tiny_model("llama")
    >>> probe = Probe("mean_diff", torch.ones(32), 0.0, torch.zeros(32), torch.ones(32),
    ...               hook="blocks.1.hook_resid_post", position="exact_last")
    >>> recs = [{"prompt_token_ids": [1, 5], "answer_token_ids": [7, 8],
    ...          "exact_answer_token_span": [2, 3]},
    ...         {"prompt_token_ids": [1, 5], "answer_token_ids": [7],
    ...          "exact_answer_token_span": None}]
    >>> d = probe_decisions(model, probe, recs)
    >>> isinstance(d[0], float), d[1]
    (True, None)
    """
    probe.check_compatible(model_info(model))
    positions = resolve_positions([probe.position], records)
    out: list[float | None] = [None] * len(records)
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        pos = positions[start : start + batch_size]
        seqs = [list(r["prompt_token_ids"]) + list(r["answer_token_ids"]) for r in chunk]
        acts = capture_batch(model, seqs, pos, [probe.hook])[:, 0, 0]
        values = probe.decision_function(acts).tolist()
        for i, ok in enumerate((pos[:, 0] >= 0).tolist()):
            if ok:
                out[start + i] = float(values[i])
    return out
