"""Activation patching with probe read-outs (Orgad et al. 2024, "LLMs know more than they show").

The paper's experiment: for a question the model answers wrong with greedy decoding but right in
some sample, patch residual-stream activations from the *right* (clean) run into the *wrong*
(corrupted) run, one (layer, position) at a time, and watch two read-outs of the patched run:
the error-detection probe's score and the logit of the correct answer's first token.

Structure follows `transformer_lens.patching`: one generic function (`patch_metrics`, any number
of metrics read from the *same* forward per cell) and thin specialisations
(`patch_probe_and_logit`, `patch_probe_and_logit_resid_pre`, ...). The patch itself is
TransformerLens' own `layer_pos_patch_setter`, hook names come from `tl_truth.models.hook_name`.

Metrics are TransformerLens `patching_metric`s (callables `logits -> 0-dim tensor`), defined in
`tl_truth.intervention.patching_metrics`; the result, `PatchResult`, is in
`tl_truth.intervention.patch_result`. Both are re-exported here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor
from transformer_lens.patching import layer_pos_patch_setter

from tl_truth.intervention.patch_result import METRICS, PatchResult
from tl_truth.intervention.patching_metrics import (
    Metric,
    ProbeMetric,
    logit_metric,
    probe_metric,
)
from tl_truth.models import HOOK_KINDS, hook_name, model_device
from tl_truth.probing.probe import Probe

__all__ = [
    "METRICS",
    "Metric",
    "PatchResult",
    "ProbeMetric",
    "logit_metric",
    "patch_metrics",
    "patch_probe_and_logit",
    "patch_probe_and_logit_attn_out",
    "patch_probe_and_logit_mlp_out",
    "patch_probe_and_logit_resid_mid",
    "patch_probe_and_logit_resid_post",
    "patch_probe_and_logit_resid_pre",
    "probe_metric",
]


def _as_tokens(tokens: Any, device: torch.device) -> Int[Tensor, "1 pos"]:
    t = torch.as_tensor(tokens, dtype=torch.long)
    if t.ndim == 1:
        t = t[None]
    if t.ndim != 2 or t.shape[0] != 1:
        raise ValueError(f"expected one token sequence, got shape {tuple(t.shape)}")
    return t.to(device)


def _patch_hook(act: Tensor, hook: Any, index: list[int], clean_activation: Tensor) -> Tensor:
    return layer_pos_patch_setter(act.clone(), index, clean_activation)


def _rows_patch_hook(
    act: Tensor, hook: Any, pos: list[int], src: list[int], clean_activation: Tensor
) -> Tensor:
    # Row r of a batch of corrupted copies gets clean position src[r] at position pos[r].
    act = act.clone()
    rows = torch.arange(len(pos), device=act.device)
    act[rows, torch.tensor(pos)] = clean_activation[0, torch.tensor(src)].to(act.dtype)
    return act


def _per_row(metric: Metric, logits: Tensor) -> Tensor:
    if hasattr(metric, "per_row"):
        return metric.per_row(logits)
    return torch.stack([torch.as_tensor(metric(logits[r : r + 1])) for r in range(len(logits))])


@torch.no_grad()
def patch_metrics(
    model: Any,
    clean_tokens: Any,
    corrupted_tokens: Any,
    metrics: Mapping[str, Metric],
    hook_kind: str = "resid_pre",
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    show_progress: bool = False,
    clean_positions: Sequence[int] | None = None,
    read_clean: bool = True,
    batch_size: int = 1,
) -> tuple[dict[str, Tensor], dict[str, float], dict[str, float]]:
    """Generic patching: clean -> corrupted at each (layer, position), several metrics per cell.

    Like `transformer_lens.patching.generic_activation_patch` with `layer_pos_patch_setter`,
    but every metric is evaluated on the *same* patched forward (one forward per cell), and the
    two sequences may differ in length: by default the positions `0..min_len-1` are patched,
    clean position p into corrupted position p (meaningful for a shared prefix such as the
    prompt). Metrics that need hooks (`probe_metric`) must already be open. `batch_size > 1`
    runs that many cells of a layer in one batched forward (same numbers, several times faster
    on CPU); metrics are then read per row: with a `per_row(logits)` method if they have one
    (`ProbeMetric`), else by calling them on each row's logits.

    Args:
        model: a TransformerLens model.
        clean_tokens: one token sequence ([pos] or [1, pos]), the run to copy from.
        corrupted_tokens: one token sequence, the run patched into.
        metrics: name -> `patching_metric` (`logit_metric`, an open `probe_metric`, ...).
        hook_kind: what to patch (`tl_truth.models.HOOK_KINDS`).
        layers: the layers to patch (default all).
        positions: the corrupted positions to patch (default `0..min_len-1`).
        show_progress: show a progress bar.
        clean_positions: for each of `positions`, the clean position to take the activation
            from (same length; default the same position), e.g. to align two answers on their
            exact answers.
        read_clean: `False` skips the metrics on the clean run (when their positions only
            mean something in the corrupted one); `clean` is then empty.
        batch_size: cells per forward pass.

    Returns:
        `(patched, clean, corrupted)`: `patched[name]` is [len(layers), len(positions)];
        `clean`/`corrupted` hold each metric on the unpatched runs.

    Raises:
        ValueError: an unknown hook kind, or positions outside the sequences.

    >>> from tl_truth.testing import tiny_model
    >>> model = tiny_model("llama")
    >>> clean, corrupted = [1, 5, 9, 30, 40], [1, 5, 9, 31, 40]  # they differ at position 3
    >>> patched, clean_v, corrupted_v = patch_metrics(model, clean, corrupted,
    ...                                               {"logit": logit_metric(42, 4)},
    ...                                               batch_size=5)  # a layer per forward
    >>> patched["logit"].shape
    torch.Size([2, 5])
    >>> # patching layer 0's residual stream at position 3 turns the corrupted run into the clean one
    >>> abs(float(patched["logit"][0, 3]) - clean_v["logit"]) < 1e-4
    True
    """
    from tqdm.auto import tqdm

    if hook_kind not in HOOK_KINDS:
        raise ValueError(f"unknown hook kind {hook_kind!r}; choose from {HOOK_KINDS}")
    device = model_device(model)
    clean, corrupted = _as_tokens(clean_tokens, device), _as_tokens(corrupted_tokens, device)
    n_layers = model.cfg.n_layers
    layers = list(range(n_layers)) if layers is None else [int(x) for x in layers]
    common = min(clean.shape[1], corrupted.shape[1])
    positions = list(range(common)) if positions is None else [int(p) for p in positions]
    if clean_positions is None:
        for p in positions:
            if not 0 <= p < common:
                raise ValueError(f"position {p} is outside the common length {common}")
    else:
        clean_positions = [int(q) for q in clean_positions]
        if len(clean_positions) != len(positions):
            raise ValueError("clean_positions must match positions one to one")
        for p, q in zip(positions, clean_positions, strict=True):
            if not (0 <= p < corrupted.shape[1] and 0 <= q < clean.shape[1]):
                raise ValueError(f"position {p} <- {q} is outside the sequences")
    names = [hook_name(hook_kind, layer, n_layers) for layer in layers]

    def read(logits: Tensor) -> dict[str, float]:
        return {k: float(m(logits)) for k, m in metrics.items()}

    clean_logits, cache = model.run_with_cache(clean, names_filter=lambda n: n in names)
    clean_values = read(clean_logits) if read_clean else {}
    corrupted_values = read(model(corrupted))
    out = {k: torch.zeros(len(layers), len(positions)) for k in metrics}
    src = list(positions) if clean_positions is None else clean_positions
    if batch_size > 1:
        # All positions of a layer in batches of copies of the corrupted run, row r patched
        # at its own position; the metrics are read per row (`_per_row`).
        chunks = [
            (i, list(range(j, min(j + batch_size, len(positions)))))
            for i in range(len(layers))
            for j in range(0, len(positions), batch_size)
        ]
        for i, js in tqdm(chunks, disable=not show_progress):
            hook = partial(
                _rows_patch_hook,
                pos=[positions[j] for j in js],
                src=[src[j] for j in js],
                clean_activation=cache[names[i]],
            )
            logits = model.run_with_hooks(
                corrupted.expand(len(js), -1), fwd_hooks=[(names[i], hook)]
            )
            for k, m in metrics.items():
                out[k][i, js] = _per_row(m, logits).float().cpu()
        return out, clean_values, corrupted_values
    cells = [(i, j) for i in range(len(layers)) for j in range(len(positions))]
    for i, j in tqdm(cells, disable=not show_progress):
        if clean_positions is None:
            hook = partial(
                _patch_hook, index=[layers[i], positions[j]], clean_activation=cache[names[i]]
            )
        else:
            # one corrupted row: clean position src[j] into corrupted position positions[j]
            hook = partial(
                _rows_patch_hook,
                pos=[positions[j]],
                src=[src[j]],
                clean_activation=cache[names[i]],
            )
        values = read(model.run_with_hooks(corrupted, fwd_hooks=[(names[i], hook)]))
        for k, v in values.items():
            out[k][i, j] = v
    return out, clean_values, corrupted_values


def patch_probe_and_logit(
    model: Any,
    clean_tokens: Any,
    corrupted_tokens: Any,
    probe: Probe,
    probe_position: int,
    answer_token_id: int,
    answer_position: int,
    hook_kind: str = "resid_pre",
    show_progress: bool = False,
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
) -> PatchResult:
    """The paper's experiment on one question (clean = the right run, corrupted = the wrong one).

    Patches `hook_kind` at every layer and every position `0..min_len-1` and records the probe
    score at `probe_position` and the logit of `answer_token_id` at `answer_position` (the
    position predicting it) from the same patched forward. Positions are full-sequence indices
    used in both runs (as for the baselines), so they should lie in the shared prefix or mean
    the same thing in both sequences. `patch_probe_and_logit_resid_pre` (`_resid_mid`,
    `_resid_post`, `_attn_out`, `_mlp_out`) fix `hook_kind`.

    Args:
        model: a TransformerLens model.
        clean_tokens: the token sequence of the right answer's run.
        corrupted_tokens: the token sequence of the wrong answer's run.
        probe: the error-detection `Probe` (with `hook`).
        probe_position: the full-sequence index the probe reads.
        answer_token_id: the correct answer's first token.
        answer_position: the position whose logits predict it.
        hook_kind: what to patch (`tl_truth.models.HOOK_KINDS`).
        show_progress: show a progress bar.
        layers: the layers to patch (default all).
        positions: the positions to patch (default `0..min_len-1`).

    Returns:
        A `PatchResult` (token labels from the model's tokenizer).

    >>> from tl_truth.probing import Probe
    >>> from tl_truth.testing import tiny_model
    >>> model = tiny_model("llama")
    >>> probe = Probe("mean_diff", torch.ones(32), 0.0, torch.zeros(32), torch.ones(32),
    ...               hook="blocks.1.hook_resid_post")
    >>> res = patch_probe_and_logit(model, [1, 5, 9, 30, 40], [1, 5, 9, 31, 40], probe,
    ...                             probe_position=4, answer_token_id=42, answer_position=4,
    ...                             positions=[3])  # the position where the runs differ
    >>> res.shape, res.hook_kind, res.positions
    ((2, 1), 'resid_pre', [3])
    >>> abs(float(res.probe_score[0, 0]) - res.clean_probe_score) < 1e-4
    True
    """
    with probe_metric(model, probe, probe_position) as pm:
        metrics = {
            "probe_score": pm,
            "answer_logit": logit_metric(answer_token_id, answer_position),
        }
        out, clean, corrupted = patch_metrics(
            model,
            clean_tokens,
            corrupted_tokens,
            metrics,
            hook_kind,
            layers,
            positions,
            show_progress=show_progress,
        )
    n_pos = out["probe_score"].shape[1]
    patched = list(positions) if positions is not None else list(range(n_pos))
    labels = None
    if getattr(model, "tokenizer", None) is not None:
        ids = torch.as_tensor(corrupted_tokens).reshape(-1).tolist()
        labels = [model.tokenizer.decode([ids[p]]) for p in patched]
    return PatchResult(
        probe_score=out["probe_score"],
        answer_logit=out["answer_logit"],
        clean_probe_score=clean["probe_score"],
        corrupted_probe_score=corrupted["probe_score"],
        clean_answer_logit=clean["answer_logit"],
        corrupted_answer_logit=corrupted["answer_logit"],
        hook_kind=hook_kind,
        positions=patched,
        labels=labels,
        layers=list(layers) if layers is not None else None,
    )


patch_probe_and_logit_resid_pre = partial(patch_probe_and_logit, hook_kind="resid_pre")
patch_probe_and_logit_resid_mid = partial(patch_probe_and_logit, hook_kind="resid_mid")
patch_probe_and_logit_resid_post = partial(patch_probe_and_logit, hook_kind="resid_post")
patch_probe_and_logit_attn_out = partial(patch_probe_and_logit, hook_kind="attn_out")
patch_probe_and_logit_mlp_out = partial(patch_probe_and_logit, hook_kind="mlp_out")
