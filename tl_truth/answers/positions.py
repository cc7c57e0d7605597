"""Positions: from a character span in the answer text to token positions the hooks will see.

Coordinates are those of the full unpadded sequence `prompt_token_ids + answer_token_ids`
(BOS and chat-template tokens included). `to_padded` moves them into a padded batch.

Token character offsets come from incremental decoding of the answer ids (the text *is* the
decode of those ids), which is exact for every tokenizer, including byte-level BPE where one
character spans several tokens: a token that stops inside a character (its leading bytes, alone
or after complete characters, as in "ZÃ" + "¼rich") does not count that character yet but is
marked partial, and a span starting at that character includes it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

# The positions of Orgad et al. 2024 (Fig. 2): last question token, first answer token, the
# exact-answer tokens and their neighbours, and the last eight generated tokens.
NAMED_POSITIONS: tuple[str, ...] = (
    "last_prompt",
    "first_answer",
    "before_exact",
    "exact_first",
    "exact_last",
    "after_exact",
    "last_generated",
    *(f"{-k}" for k in range(1, 9)),
)
"""The names `resolve_position` understands: "last_prompt", "first_answer", the exact-answer
positions, "last_generated" and "-1".."-8" (counted back over the generated tokens)."""
EXACT_POSITIONS = ("before_exact", "exact_first", "exact_last", "after_exact")

PositionFn = Callable[[dict], "int | None"]


class CharEnds(list):
    """`token_char_ends`' list of end offsets, with `partial[i]`: token i stops inside a character."""

    partial: tuple[bool, ...]


def token_char_ends(tokenizer: Any, answer_ids: Sequence[int]) -> CharEnds:
    """End character offset (in `decode(answer_ids)`) of each answer token: the characters
    complete once it is read. `.partial` marks tokens that also hold leading bytes of the next."""
    full = tokenizer.decode(list(answer_ids), clean_up_tokenization_spaces=False)
    ends = CharEnds()
    partial: list[bool] = []
    prev = 0
    for i in range(1, len(answer_ids) + 1):
        prefix = tokenizer.decode(list(answer_ids[:i]), clean_up_tokenization_spaces=False)
        cut = not full.startswith(prefix)
        if not cut:
            end = len(prefix)
        elif prefix.endswith("\ufffd") and full.startswith(prefix[:-1]):
            # The prefix ends in an incomplete character (one U+FFFD): the characters before
            # it are complete, and this token holds the leading bytes of the next one.
            end = len(prefix) - 1
        else:
            end = prev
        end = max(prev, min(end, len(full)))
        ends.append(end)
        partial.append(cut)
        prev = end
    if ends and ends[-1] != len(full):
        ends[-1] = len(full)
    if partial:
        partial[-1] = False
    ends.partial = tuple(partial)
    return ends


def char_to_token_span(ends: Sequence[int], char_span: tuple[int, int]) -> tuple[int, int]:
    """Minimal [start, end) token span (answer-relative) whose decode covers the char span.

    `ends` comes from `token_char_ends`; a plain list counts the tokens that add no characters
    as the partial ones (right unless a token completes one character and starts the next).
    """
    s, e = char_span
    if not (0 <= s < e) or not ends or e > ends[-1]:
        raise ValueError(
            f"char span {char_span} outside answer of length {ends[-1] if ends else 0}"
        )
    partial = getattr(ends, "partial", None)
    if partial is None:
        starts = [0, *ends[:-1]]
        partial = [start == end for start, end in zip(starts, ends, strict=True)]
    # Token i holds bytes of the characters before ends[i], and of character ends[i] itself when
    # it stops inside it: the span starts at the first token holding a byte of character s.
    first = next(i for i, end in enumerate(ends) if end + partial[i] > s)
    last = next(i for i, end in enumerate(ends) if end >= e)
    return first, last + 1


def exact_answer_token_span(
    tokenizer: Any, prompt_len: int, answer_ids: Sequence[int], char_span: tuple[int, int] | None
) -> tuple[int, int] | None:
    """Exact-answer token span in full-sequence coordinates, or None when there is no span."""
    if char_span is None:
        return None
    s, e = char_to_token_span(token_char_ends(tokenizer, answer_ids), char_span)
    return prompt_len + s, prompt_len + e


def resolve_position(
    name: str | PositionFn,
    record: dict,
) -> int | None:
    """Full-sequence index of a named position for one example, None if it does not exist.

    `record` needs `prompt_token_ids`, `answer_token_ids` and `exact_answer_token_span`
    (the generations.jsonl fields); a callable gets the record and returns an index or None.

    Args:
        name: one of `NAMED_POSITIONS`, or a callable `record -> index | None`.
        record: an `AnswerRecord` or a dict with the fields above.

    Returns:
        The index into `prompt_token_ids + answer_token_ids`, or None when the example has no
        such position (no exact answer, no generated token, an index out of range).

    Raises:
        ValueError: an unknown name.

    >>> rec = {"prompt_token_ids": [0, 1, 2], "answer_token_ids": [3, 4, 5, 6],
    ...        "exact_answer_token_span": [4, 6]}
    >>> [resolve_position(n, rec) for n in ("last_prompt", "first_answer", "exact_first",
    ...                                     "exact_last", "after_exact", "-1")]
    [2, 3, 4, 5, 6, 6]
    >>> resolve_position("exact_first", {**rec, "exact_answer_token_span": None}) is None
    True
    """
    n_prompt = len(record["prompt_token_ids"])
    n_total = n_prompt + len(record["answer_token_ids"])
    if callable(name):
        pos = name(record)
        return pos if pos is not None and 0 <= pos < n_total else None
    span = record.get("exact_answer_token_span")
    if name == "last_prompt":
        pos = n_prompt - 1
    elif name == "first_answer":
        pos = n_prompt if n_total > n_prompt else None
    elif name == "last_generated":
        pos = n_total - 1 if n_total > n_prompt else None
    elif name in EXACT_POSITIONS:
        if span is None:
            return None
        start, end = span
        pos = {
            "exact_first": start,
            "exact_last": end - 1,
            "before_exact": start - 1,
            "after_exact": end,
        }[name]
    elif name.lstrip("-").isdigit() and name.startswith("-"):
        k = int(name)
        # Negative positions count back over the generated tokens only.
        pos = n_total + k if n_prompt <= n_total + k else None
    else:
        raise ValueError(f"unknown position {name!r}; choose from {NAMED_POSITIONS} or a callable")
    return pos if pos is not None and 0 <= pos < n_total else None


def resolve_positions(
    names: Sequence[str | PositionFn], records: Sequence[dict]
) -> Int[Tensor, "batch n_positions"]:
    """[batch, n_positions] full-sequence indices, -1 where the position does not exist.

    Args:
        names: position names (`NAMED_POSITIONS`) or callables, one column each.
        records: the examples (`AnswerRun.records` or generations.jsonl dicts).

    Returns:
        A long tensor of shape ``[len(records), len(names)]`` (see `resolve_position`).

    >>> recs = [{"prompt_token_ids": [0, 1, 2], "answer_token_ids": [3, 4],
    ...          "exact_answer_token_span": [3, 4]},
    ...         {"prompt_token_ids": [0, 1], "answer_token_ids": [],
    ...          "exact_answer_token_span": None}]
    >>> resolve_positions(["last_prompt", "exact_first", "-1"], recs)
    tensor([[ 2,  3,  4],
            [ 1, -1, -1]])
    """
    out = torch.full((len(records), len(names)), -1, dtype=torch.long)
    for i, rec in enumerate(records):
        for j, name in enumerate(names):
            pos = resolve_position(name, rec)
            if pos is not None:
                out[i, j] = pos
    return out


def to_padded(
    positions: Int[Tensor, "batch n"], lengths: Int[Tensor, " batch"], width: int, side: str
) -> Int[Tensor, "batch n"]:
    """Move unpadded positions into a batch padded to `width` on `side`; -1 stays -1."""
    if side not in ("left", "right"):
        raise ValueError(f"padding side must be 'left' or 'right', got {side!r}")
    if side == "right":
        return positions.clone()
    shift = (width - lengths)[:, None]
    return torch.where(positions >= 0, positions + shift, positions)
