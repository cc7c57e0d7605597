"""Scoring new generations with a saved probe: capture its one cell, then predict.

The probe refuses a model whose weights, backend or processing mode differ from the ones it
was trained on (`Probe.check_compatible`), so a score is never silently meaningless.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from tl_truth.answers.positions import resolve_positions
from tl_truth.models import model_info
from tl_truth.probing.activations import capture_batch
from tl_truth.probing.probe import Probe


@torch.no_grad()
def score_records(
    model: Any, probe: Probe, records: Sequence[dict], batch_size: int = 16, progress: bool = False
) -> Float[Tensor, " n"]:
    """P(correct) for each generation record; NaN where the probe's position does not exist.

    Only the probe's own (hook, position) cell is captured, batch by batch.

    Args:
        model: the model the probe was trained on (checked: fingerprint, backend, processing).
        probe: a `Probe` with `hook` and `position` set.
        records: generation records with `prompt_token_ids` and `answer_token_ids` (and
            `exact_answer_token_span` for the exact-answer positions).
        batch_size: records per forward pass.
        progress: show a progress bar.

    Returns:
        [n] probabilities (float32).

    Raises:
        ProbeMismatchError: the probe was trained on another model's activations.

    >>> from tl_truth.models import model_info
    >>> from tl_truth.testing import tiny_model
    >>> model = tiny_model("llama")
    >>> probe = Probe("mean_diff", torch.ones(32), 0.0, torch.zeros(32), torch.ones(32),
    ...               hook="blocks.1.hook_resid_post", position="first_answer",
    ...               model=model_info(model).to_dict())
    >>> records = [{"prompt_token_ids": [1, 20, 30], "answer_token_ids": [50, 60]},
    ...            {"prompt_token_ids": [1, 21], "answer_token_ids": []}]  # no answer token
    >>> p = score_records(model, probe, records)
    >>> p.shape, bool(0 < p[0] < 1), bool(p[1].isnan())
    (torch.Size([2]), True, True)
    """
    probe.check_compatible(model_info(model))
    positions = resolve_positions([probe.position], records)
    scores = torch.full((len(records),), float("nan"))
    for start in tqdm(
        range(0, len(records), batch_size), desc="score", unit="batch", disable=not progress
    ):
        chunk = records[start : start + batch_size]
        pos = positions[start : start + batch_size]
        seqs = [r["prompt_token_ids"] + r["answer_token_ids"] for r in chunk]
        acts = capture_batch(model, seqs, pos, [probe.hook])[:, 0, 0]
        ok = pos[:, 0] >= 0
        scores[start : start + len(chunk)][ok] = probe.predict_proba(acts[ok]).float()
    return scores
