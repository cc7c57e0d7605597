"""Contrastive directions from paired answers to the same question (CAA, arXiv 2312.06681).

A pair is a question's wrong greedy answer and a right sampled answer to it (`tl-truth
resample`; `tl_truth.studies.patch_study.knows_more_pairs` finds them). Both runs are read at
the same named position relative to their own exact answer (`exact_last` in each: aligned on
the exact answer, whatever the lengths of the two answers), and the direction is the mean over
questions of right minus wrong (`tl_truth.intervention.directions.contrastive`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tl_truth.intervention.directions import Direction, contrastive
from tl_truth.models import hook_name
from tl_truth.probing.activations import capture_at


def contrastive_directions(
    model: Any,
    pairs: Sequence[tuple[dict, dict]],
    layers: Sequence[int],
    hook_kind: str = "resid_post",
    position: str = "exact_last",
    batch_size: int = 16,
    progress: bool = False,
) -> dict[int, Direction]:
    """layer -> the contrastive direction (mean of right minus wrong) at `hook_kind`.

    Args:
        model: a TransformerLens model.
        pairs: (wrong record, right record) per question, as `knows_more_pairs` returns them
            (records with token ids and `exact_answer_token_span`).
        layers: where to read (and later steer).
        hook_kind: the hook kind (`tl_truth.models.HOOK_KINDS`).
        position: the aligned position read in both runs (a named position).
        batch_size: examples per forward pass.
        progress: show a progress bar.

    Returns:
        layer -> `Direction` (`source="contrastive"`, `metadata` with the position and the
        questions' keys); pairs where either answer lacks the position are dropped.

    Raises:
        ValueError: no pair has the position in both answers.

    >>> from tl_truth.testing import tiny_model
    >>> def rec(answer_ids, correct):
    ...     return {"task": "t", "id": "q", "correct": correct, "prompt_token_ids": [1, 5, 9],
    ...             "answer_token_ids": answer_ids, "exact_answer_token_span": [4, 5]}
    >>> pairs = [(rec([20, 21, 22], False), rec([20, 30, 22], True))]
    >>> d = contrastive_directions(tiny_model("llama"), pairs, [1])[1]
    >>> d.hook, d.source, d.metadata["n_pairs"], d.metadata["position"]
    ('blocks.1.hook_resid_post', 'contrastive', 1, 'exact_last')
    """
    if not pairs:
        raise ValueError("no (wrong greedy, right sample) pairs to build a contrastive direction")
    hooks = [hook_name(hook_kind, layer) for layer in layers]
    wrong = [w for w, _ in pairs]
    right = [r for _, r in pairs]
    acts, valid = capture_at(model, wrong + right, hooks, position, batch_size, progress)
    n = len(pairs)
    keep = valid[:n] & valid[n:]
    if not bool(keep.any()):
        raise ValueError(f"no pair has {position} located in both answers")
    keys = [
        [w.get("task"), w.get("id")] for (w, _), k in zip(pairs, keep.tolist(), strict=True) if k
    ]
    out = {}
    for j, layer in enumerate(layers):
        d = contrastive(acts[n:][keep, j], acts[:n][keep, j], hook=hooks[j], layer=layer)
        d.metadata.update(position=position, questions=keys)
        out[layer] = d
    return out
