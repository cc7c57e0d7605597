"""Activation patching on "knows more than it shows" questions, over many questions.

For every question answered wrong greedily but right in one of its samples (`resampling.py`):
clean = the prompt + the right sample, corrupted = the prompt + the wrong greedy answer. The two
answers differ in length and wording, so positions are aligned on the exact answer: the three
tokens before it, its first and last token and the token after it, in each run. At each
(layer, aligned position), the clean activation is patched into the corrupted run and, from the
same forward, the probe's score (at the corrupted answer's probe position) and the logit of the
right answer's first token (where the wrong answer's first token was predicted) are read.

Clean baselines are each run's own values (the probe at the clean answer's own position, the
logit the clean run gave its own first answer token), so "fraction of the gap closed" compares
like with like.

The result, `PatchStudy`, lives in `tl_truth.studies.patch_study_result` (re-exported here).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from tl_truth.answers.positions import resolve_position
from tl_truth.intervention.patching import PatchResult, logit_metric, patch_metrics, probe_metric
from tl_truth.models import model_device
from tl_truth.probing.probe import Probe
from tl_truth.studies.patch_study_result import (
    ALIGNED_POSITIONS,
    PATCHING_FILE,
    PatchStudy,
    load_study,
)
from tl_truth.studies.resampling import SampleSet

__all__ = [
    "ALIGNED_POSITIONS",
    "PATCHING_FILE",
    "PatchStudy",
    "aligned_position",
    "knows_more_pairs",
    "load_study",
    "patch_pair",
    "patching_study",
]


def aligned_position(name: str, record: dict) -> int | None:
    """Full-sequence index of an exact-answer-aligned position.

    Args:
        name: one of `ALIGNED_POSITIONS` (`exact-k`: k tokens before the exact answer) or
            another named position.
        record: a generation record with `exact_answer_token_span`.

    Returns:
        The index into prompt + answer tokens, or None where the record has none.

    >>> record = {"prompt_token_ids": [1, 2, 3], "answer_token_ids": [4, 5, 6, 7],
    ...           "exact_answer_token_span": [4, 6]}
    >>> [aligned_position(name, record) for name in ALIGNED_POSITIONS]
    [1, 2, 3, 4, 5, 6]
    """
    if name.startswith("exact-"):
        span = record.get("exact_answer_token_span")
        if span is None:
            return None
        pos = span[0] - int(name.removeprefix("exact-"))
        return pos if pos >= 0 else None
    return resolve_position(name, record)


def knows_more_pairs(sets: Sequence[SampleSet]) -> list[tuple[dict, dict]]:
    """The "knows more than it shows" questions: wrong greedily, right in a sample.

    Args:
        sets: the questions' samples.

    Returns:
        (wrong greedy record, first right sample) for every question where both have an exact
        answer located; the right sample is the first correct one in sample order.

    >>> def rec(answer_ids, span, correct, exact, i=0):
    ...     return {"task": "t", "id": "q", "split": "test", "question": "Capital of France?",
    ...             "answer": exact, "exact_answer": exact, "correct": correct, "sample_index": i,
    ...             "prompt_token_ids": [1, 5, 9, 30, 40], "answer_token_ids": answer_ids,
    ...             "exact_answer_token_span": [5 + span[0], 5 + span[1]]}
    >>> wrong = rec([50, 60, 70, 71, 80], (2, 4), False, "Lyon")  # "50 60 [70 71] 80"
    >>> right = rec([50, 55, 60, 90, 80, 81], (3, 4), True, "Paris", i=1)  # "50 55 60 [90] 80 81"
    >>> knows_more_pairs([SampleSet(wrong, [right])]) == [(wrong, right)]
    True
    """
    pairs = []
    for s in sets:
        g = s.greedy
        if g["correct"] or g.get("exact_answer_token_span") is None:
            continue
        right = [r for r in s.samples if r["correct"] and r.get("exact_answer_token_span")]
        if right:
            pairs.append((g, right[0]))
    return pairs


def _seq(r: dict) -> list[int]:
    return r["prompt_token_ids"] + r["answer_token_ids"]


@torch.no_grad()
def _own_values(model: Any, probe: Probe, r: dict, token_id: int) -> tuple[float, float]:
    """A run's probe score at its own probe position and the logit of `token_id` where the
    run's own exact answer starts."""
    pos = resolve_position(probe.position, r)
    start = r["exact_answer_token_span"][0]
    tokens = torch.tensor([_seq(r)], device=model_device(model))
    with probe_metric(model, probe, pos) as pm:
        logits = model(tokens)
        return float(pm(logits)), float(logit_metric(token_id, start - 1)(logits))


def patch_pair(
    model: Any,
    wrong: dict,
    right: dict,
    probe: Probe,
    layers: Sequence[int],
    hook_kind: str = "resid_pre",
) -> PatchResult:
    """One question: patch the right run into the wrong one at aligned positions.

    Args:
        model: a HookedTransformer or TransformerBridge.
        wrong: the wrong greedy answer's record (the corrupted run).
        right: the right sample's record (the clean run).
        probe: the correctness probe read in the corrupted run.
        layers: the layers to patch.
        hook_kind: where to patch (`resid_pre`: a layer's input).

    Returns:
        The `PatchResult`: probe score and answer logit per (layer, aligned position).

    >>> import torch
    >>> from tl_truth.probing import Probe
    >>> from tl_truth.testing import tiny_model
    >>> def rec(answer_ids, span, correct, exact, i=0):
    ...     return {"task": "t", "id": "q", "split": "test", "question": "Capital of France?",
    ...             "answer": exact, "exact_answer": exact, "correct": correct, "sample_index": i,
    ...             "prompt_token_ids": [1, 5, 9, 30, 40], "answer_token_ids": answer_ids,
    ...             "exact_answer_token_span": [5 + span[0], 5 + span[1]]}
    >>> wrong = rec([50, 60, 70, 71, 80], (2, 4), False, "Lyon")  # "50 60 [70 71] 80"
    >>> right = rec([50, 55, 60, 90, 80, 81], (3, 4), True, "Paris", i=1)  # "50 55 60 [90] 80 81"
    >>> model = tiny_model("llama")
    >>> x, y = torch.randn(20, model.cfg.d_model), torch.arange(20) % 2
    >>> probe = Probe.from_data(x, y, hook="blocks.1.hook_resid_pre", position="exact_last")
    >>> patch_pair(model, wrong, right, probe, layers=[0, 1]).probe_score.shape
    torch.Size([2, 6])
    """
    probe_pos = resolve_position(probe.position, wrong)
    if probe_pos is None:
        raise ValueError(f"the wrong answer has no {probe.position!r} position")
    cols = [
        (j, aligned_position(n, wrong), aligned_position(n, right))
        for j, n in enumerate(ALIGNED_POSITIONS)
    ]
    cols = [(j, p, q) for j, p, q in cols if p is not None and q is not None]
    token = _seq(right)[right["exact_answer_token_span"][0]]
    answer_pos = wrong["exact_answer_token_span"][0] - 1
    probe_score = torch.full((len(layers), len(ALIGNED_POSITIONS)), float("nan"))
    answer_logit = probe_score.clone()
    with probe_metric(model, probe, probe_pos) as pm:
        metrics = {"probe_score": pm, "answer_logit": logit_metric(token, answer_pos)}
        out, _, corrupted = patch_metrics(
            model,
            _seq(right),
            _seq(wrong),
            metrics,
            hook_kind,
            layers,
            positions=[p for _, p, _ in cols],
            clean_positions=[q for _, _, q in cols],
            read_clean=False,  # clean baselines come from the clean run's own positions
            batch_size=len(cols),
        )
    idx = [j for j, _, _ in cols]
    probe_score[:, idx] = out["probe_score"]
    answer_logit[:, idx] = out["answer_logit"]
    clean_probe, clean_logit = _own_values(model, probe, right, token)
    return PatchResult(
        probe_score=probe_score,
        answer_logit=answer_logit,
        clean_probe_score=clean_probe,
        corrupted_probe_score=corrupted["probe_score"],
        clean_answer_logit=clean_logit,
        corrupted_answer_logit=corrupted["answer_logit"],
        hook_kind=hook_kind,
        positions=list(range(len(ALIGNED_POSITIONS))),
        labels=list(ALIGNED_POSITIONS),
        layers=list(layers),
    )


def patching_study(
    model: Any,
    sets: Sequence[SampleSet],
    probe: Probe,
    layers: Sequence[int] | None = None,
    hook_kind: str = "resid_pre",
    max_questions: int | None = None,
    progress: bool = True,
) -> PatchStudy:
    """Patch every "wrong greedy, right sample" question among `sets` (up to `max_questions`).

    Args:
        model: a HookedTransformer or TransformerBridge.
        sets: the questions' samples (`resample`); those wrong greedily and right in a
            sample, with exact answers located in both, are patched (`knows_more_pairs`).
        probe: the correctness probe read in the corrupted (wrong) run.
        layers: the layers to patch (None: all).
        hook_kind: where to patch (`resid_pre`: a layer's input).
        max_questions: at most this many questions (None: all).
        progress: show a progress bar.

    Returns:
        The `PatchStudy` (ValueError if no question qualifies).

    A tiny random model on one hand-made question (the numbers mean nothing here):

    >>> import torch
    >>> from tl_truth.probing import Probe
    >>> from tl_truth.testing import tiny_model
    >>> def rec(answer_ids, span, correct, exact, i=0):
    ...     return {"task": "t", "id": "q", "split": "test", "question": "Capital of France?",
    ...             "answer": exact, "exact_answer": exact, "correct": correct, "sample_index": i,
    ...             "prompt_token_ids": [1, 5, 9, 30, 40], "answer_token_ids": answer_ids,
    ...             "exact_answer_token_span": [5 + span[0], 5 + span[1]]}
    >>> wrong = rec([50, 60, 70, 71, 80], (2, 4), False, "Lyon")  # "50 60 [70 71] 80"
    >>> right = rec([50, 55, 60, 90, 80, 81], (3, 4), True, "Paris", i=1)  # "50 55 60 [90] 80 81"
    >>> model = tiny_model("llama")
    >>> x, y = torch.randn(20, model.cfg.d_model), torch.arange(20) % 2
    >>> probe = Probe.from_data(x, y, hook="blocks.1.hook_resid_pre", position="exact_last")
    >>> study = patching_study(model, [SampleSet(wrong, [right])], probe, progress=False)
    >>> len(study.results), study.results[0].probe_score.shape, study.pairs[0]["right"]
    (1, torch.Size([2, 6]), 'Paris')
    """
    pairs = knows_more_pairs(sets)
    if max_questions is not None:
        pairs = pairs[:max_questions]
    if not pairs:
        raise ValueError(
            "no question is answered wrong greedily and right in a sample (with exact answers "
            "located in both): resample more questions or more samples"
        )
    layers = list(range(model.cfg.n_layers)) if layers is None else list(layers)
    results, info = [], []
    for wrong, right in tqdm(pairs, desc="patch", disable=not progress):
        results.append(patch_pair(model, wrong, right, probe, layers, hook_kind))
        info.append(
            {
                "task": wrong["task"],
                "id": wrong["id"],
                "question": wrong["question"],
                "wrong": wrong["exact_answer"],
                "right": right["exact_answer"],
                "wrong_answer": wrong["answer"],
                "right_answer": right["answer"],
            }
        )
    return PatchStudy(
        results,
        info,
        probe={"hook": probe.hook, "position": probe.position, "layer": probe.layer},
        meta={"n_candidates": len(knows_more_pairs(sets)), "n_questions": len(sets)},
    )
