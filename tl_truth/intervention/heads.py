"""Attention-head directions (Inference-Time Intervention, Li et al. 2023, arXiv 2306.03341).

ITI reads each head's output before the output projection (`blocks.L.attn.hook_z`, [batch,
seq, n_heads, d_head]) at the answer, ranks the heads by the held-out accuracy of a linear
probe on that head alone, and shifts the top k heads along their mass-mean directions (mean
of right minus mean of wrong answers) by alpha standard deviations of the projection.

Head h's contribution to the residual stream is `z_h @ W_O[L, h]` (plus a bias that does not
depend on z), so shifting z_h by v is adding `v @ W_O[L, h]` to `blocks.L.hook_attn_out` on
architectures whose attention output goes straight into the residual stream (GPT-2, Llama;
tested). Gemma normalises the attention output before adding it (TransformerLens's
`hook_attn_out` comes after that norm), so the shift is applied where ITI applies it: at
`hook_z` itself, as a `Steering` of (`blocks.L.attn.hook_z`, flattened head-major vector)
pairs, which `steering_hook` adds per head. That hook exists on both backends.

Units: "sd" is ITI's, each head moved by alpha times its own projection SD (in z space); "abs"
scales the shifts so that their images in the residual stream (`v @ W_O`, summed over the k
heads and their layers) have total Euclidean norm alpha, the same as an "abs" push of a
residual direction (before Gemma's post-attention norm). The random controls draw a random
unit vector per head with the same projection SD ("sd": the same z-space norm per head), or
rescale to the same total norm ("abs"): the same size of push, along no learned direction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from tl_truth.intervention.directions import Direction, Units, mass_mean
from tl_truth.intervention.steering import Scope, Steering
from tl_truth.probing.activations import capture_at
from tl_truth.probing.metrics import DTYPE
from tl_truth.probing.solver import _reduce, _refit, _standardise_stats


def z_hook(layer: int) -> str:
    """The hook holding each head's output before W_O (`blocks.{layer}.attn.hook_z`).

    >>> z_hook(3), attn_out_hook(3)
    ('blocks.3.attn.hook_z', 'blocks.3.hook_attn_out')
    """
    return f"blocks.{layer}.attn.hook_z"


def attn_out_hook(layer: int) -> str:
    """Where a head shift's W_O image lands (`blocks.{layer}.hook_attn_out`; before the
    residual add only on architectures without a post-attention norm)."""
    return f"blocks.{layer}.hook_attn_out"


def head_to_resid(model: Any, layer: int, head: int, z: Float[Tensor, " d_head"]) -> Tensor:
    """What a shift `z` of head `head`'s output adds to the residual stream: `z @ W_O[layer, head]`.

    Args:
        model: a TransformerLens model (either backend).
        layer, head: the head.
        z: [d_head] the shift in z space.

    Returns:
        [d_model] float32 vector on the CPU, to add at `blocks.{layer}.hook_attn_out`.

    >>> from tl_truth.testing import tiny_model
    >>> head_to_resid(tiny_model("llama"), 1, 2, torch.ones(8)).shape
    torch.Size([32])
    """
    w_o = model.blocks[layer].attn.W_O[head].detach().float().cpu()  # [d_head, d_model]
    return torch.as_tensor(z).float().cpu() @ w_o


def rank_heads(
    acts: Float[Tensor, "n n_heads d_head"],
    labels: Bool[Tensor, " n"],
    held_out: Bool[Tensor, " n"],
    C: float = 1.0,
) -> Float[Tensor, " n_heads"]:
    """Held-out accuracy of a logistic probe per head (all heads fitted in one batched solve).

    Args:
        acts: [n, n_heads, d_head] each head's output (heads of several layers may be
            concatenated along the head axis).
        labels: [n] 1 = right answer.
        held_out: [n] rows to score on; the others are fitted on (standardised, L2 with `C`).

    Returns:
        [n_heads] float accuracies on the held-out rows.

    >>> g = torch.Generator().manual_seed(0)
    >>> y = torch.arange(60) % 2 == 0
    >>> acts = torch.randn(60, 3, 4, generator=g)
    >>> acts[:, 1, 0] += 3 * y  # head 1 knows the label
    >>> rank_heads(acts, y, torch.arange(60) >= 40).argmax().item()
    1
    """
    x = torch.as_tensor(acts).to(DTYPE).transpose(0, 1)  # [c, n, d]
    y = torch.as_tensor(labels).bool().reshape(-1)
    test = torch.as_tensor(held_out).bool().reshape(-1)
    fit = ~test
    if not (y[fit].any() and (~y[fit]).any()) or not bool(test.any()):
        raise ValueError("ranking heads needs right and wrong answers to fit on, and held-out rows")
    c = x.shape[0]
    rows = fit.expand(c, -1)
    mean, scale = _standardise_stats(x, rows)
    xs = (x - mean[:, None]) / scale[:, None]
    red = _reduce(torch.where(rows[..., None], xs, 0.0))
    weight, bias, _ = _refit(
        red, [y.expand(c, -1)], rows, torch.full((c,), 1 / C, dtype=DTYPE), 1e-4, 500
    )
    logits = torch.einsum("cnd,cd->cn", xs[:, test], weight[:, 0]) + bias[:, 0, None]
    return ((logits > 0) == y[test]).float().mean(1)


@dataclass
class HeadDirection:
    """One head's mass-mean direction in z space, and its probe accuracy.

    Attributes:
        layer, head: the head.
        direction: the mass-mean `Direction` ([d_head], at `blocks.{layer}.attn.hook_z`).
        accuracy: held-out accuracy of a probe on this head alone (the ranking key).
    """

    layer: int
    head: int
    direction: Direction
    accuracy: float


@dataclass
class HeadDirections:
    """Heads ranked by probe accuracy (best first), each with its mass-mean direction.

    `steering(model, k, alpha)` shifts the top k heads; `controls(...)` gives norm-matched
    random shifts of the same heads. Build with `head_directions`.
    """

    heads: list[HeadDirection]
    position: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def top(self, k: int) -> list[HeadDirection]:
        """The k best heads (all of them if k is larger)."""
        return self.heads[:k]

    def _pairs(
        self,
        model: Any,
        dirs: Sequence[tuple[HeadDirection, Direction]],
        alpha: float,
        units: Units,
    ) -> list[tuple[str, Tensor]]:
        """(hook_z, flat head-major shift) per layer; alpha applied as `units` says."""
        if units not in ("sd", "abs"):
            raise ValueError(f"units must be 'sd' or 'abs', got {units!r}")
        n_heads, d_head = model.cfg.n_heads, model.cfg.d_head
        per_hook: dict[str, Tensor] = {}
        resid = torch.zeros(model.cfg.d_model)
        for hd, d in dirs:
            z = d.scaled(1.0, "sd")  # one projection SD along the head's direction
            flat = per_hook.setdefault(z_hook(hd.layer), torch.zeros(n_heads * d_head))
            flat[hd.head * d_head : (hd.head + 1) * d_head] += z
            resid += head_to_resid(model, hd.layer, hd.head, z)
        scale = alpha
        if units == "abs":  # the total push into the residual stream has norm alpha
            total = float(resid.norm())
            scale = alpha / total if total > 0 else 0.0
        return [(name, scale * vec) for name, vec in sorted(per_hook.items())]

    def push_norm(self, model: Any, k: int, alpha: float, units: Units = "sd") -> float:
        """Norm of the residual-stream push of `steering(model, k, alpha, units)`: the W_O
        images of the k shifts, summed ("abs": alpha itself)."""
        if units == "abs":
            return abs(alpha)
        total = torch.zeros(model.cfg.d_model)
        for h in self.top(k):
            total += head_to_resid(model, h.layer, h.head, h.direction.scaled(alpha, "sd"))
        return float(total.norm())

    def steering(
        self, model: Any, k: int, alpha: float, units: Units = "sd", scope: Scope = "all"
    ) -> Steering:
        """Shift the top k heads along their directions, as (hook_z, flat vector) pairs.

        Args:
            model: the model (its W_O maps z shifts to the residual stream).
            k: how many heads.
            alpha: strength ("sd": each head by alpha SDs of its projection; "abs": total
                residual push of norm alpha).
            units: "sd" or "abs".
            scope: the positions pushed.

        Returns:
            A `Steering`, one [n_heads * d_head] vector per layer holding a chosen head
            (zeros for the other heads).
        """
        top = self.top(k)
        return Steering(self._pairs(model, [(h, h.direction) for h in top], alpha, units), scope)

    def controls(
        self,
        model: Any,
        k: int,
        alpha: float,
        units: Units = "sd",
        scope: Scope = "all",
        n: int = 1,
        seed: int = 0,
    ) -> list[Steering]:
        """`n` random shifts of the same k heads, matched in size to `steering(...)`.

        Each head gets a random unit vector in its z space with the head's projection SD
        ("sd": the same z-space norm per head) or the total is rescaled to norm alpha ("abs").
        Control i is the same whatever `n`.
        """
        top = self.top(k)
        gen = torch.Generator().manual_seed(seed)
        out = []
        for _ in range(n):
            dirs = [
                (h, replace(h.direction, vector=torch.randn(h.direction.d, generator=gen)))
                for h in top
            ]
            out.append(Steering(self._pairs(model, dirs, alpha, units), scope))
        return out

    def to_list(self) -> list[dict]:
        """One dict per head: layer, head, accuracy, projection SD (JSON-ready)."""
        return [
            {
                "layer": h.layer,
                "head": h.head,
                "accuracy": h.accuracy,
                "projection_std": h.direction.projection_std,
            }
            for h in self.heads
        ]


def head_directions(
    model: Any,
    records: Sequence[dict],
    layers: Sequence[int] | None = None,
    k: int | None = None,
    position: str = "exact_last",
    held_out_fraction: float = 0.3,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = False,
) -> HeadDirections:
    """ITI's head directions: rank heads by held-out probe accuracy on `hook_z` at `position`,
    each with its mass-mean direction.

    The records are split (seeded, stratified by label) into a part the per-head probes are
    fitted on and `held_out_fraction` they are scored on; the mass-mean directions and their
    projection SDs use all the records.

    Args:
        model: a TransformerLens model.
        records: graded generation records (`correct`, token ids, `exact_answer_token_span`);
            only those with `position` are used. Give only training questions.
        layers: layers whose heads compete (None: all).
        k: keep only the k best heads (None: all, ranked).
        position: where `hook_z` is read (a named position; ITI reads the answer's last token).
        held_out_fraction: share of records the head probes are scored on.
        seed: seeds that split.
        batch_size: examples per forward pass.
        progress: show a progress bar.

    Returns:
        `HeadDirections`, best head first (ties: lower layer, then head).

    Raises:
        ValueError: too few right or wrong answers at the position.

    >>> from tl_truth.testing import tiny_model
    >>> model = tiny_model("llama")
    >>> recs = [{"correct": i % 2 == 0, "prompt_token_ids": [1, 5 + i, 9],
    ...          "answer_token_ids": [20 + i % 2, 30, 40], "exact_answer_token_span": [3, 5]}
    ...         for i in range(24)]
    >>> hd = head_directions(model, recs, k=3)
    >>> len(hd.heads), hd.heads[0].direction.hook.endswith("attn.hook_z")
    (3, True)
    >>> [name for name, _ in hd.steering(model, k=1, alpha=2.0).vectors]  # doctest: +ELLIPSIS
    ['blocks....attn.hook_z']
    """
    n_layers, n_heads, d_head = model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_head
    layers = list(range(n_layers)) if layers is None else list(layers)
    hooks = [z_hook(layer) for layer in layers]
    acts, valid = capture_at(model, records, hooks, position, batch_size, progress)
    y = torch.tensor([bool(r["correct"]) for r in records])[valid]
    acts = acts[valid].reshape(-1, len(layers) * n_heads, d_head)
    n_right, n_wrong = int(y.sum()), int((~y).sum())
    if min(n_right, n_wrong) < 2:
        raise ValueError(
            f"ranking heads needs >= 2 right and >= 2 wrong answers with {position}; got "
            f"{n_right} right, {n_wrong} wrong"
        )
    rng = np.random.default_rng(seed)
    held_out = torch.zeros(len(y), dtype=torch.bool)
    for cls in (True, False):  # stratified: both classes on both sides
        idx = np.flatnonzero((y == cls).numpy())
        n_out = min(len(idx) - 1, max(1, round(held_out_fraction * len(idx))))
        held_out[rng.permutation(idx)[:n_out]] = True
    accuracy = rank_heads(acts, y, held_out)
    ranked = []
    for j in range(acts.shape[1]):
        layer, head = layers[j // n_heads], j % n_heads
        x = acts[:, j]
        if float((x[y].mean(0) - x[~y].mean(0)).norm()) == 0.0:
            continue  # a head that never differs (e.g. dead) gives no direction
        d = mass_mean(x, y, hook=z_hook(layer), layer=layer)
        d.metadata.update(head=head, position=position)
        ranked.append(HeadDirection(layer, head, d, float(accuracy[j])))
    ranked.sort(key=lambda h: (-h.accuracy, h.layer, h.head))
    meta = {
        "n_records": int(len(y)),
        "n_held_out": int(held_out.sum()),
        "layers": layers,
        "n_heads": n_heads,
        "seed": seed,
    }
    return HeadDirections(ranked if k is None else ranked[:k], position, meta)
