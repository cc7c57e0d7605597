"""Directions in the residual stream to steer along: from probes, plus random and negated controls.

A `Direction` is a unit vector at one hook point. It records the standard deviation of the
activations' projection onto it, so a steering strength can be given in standard deviations
(as Inference-Time Intervention does) and means the same thing at any layer or model size.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

Units = Literal["sd", "abs"]


@dataclass
class Direction:
    """A unit vector at `hook`; `projection_std`/`mean` describe activations projected onto it.

    The vector is normalised on construction. Make one with `from_probe`; `random_like` and
    `negated` give the controls; `steer(model, direction, alpha=4)` pushes along it.

    Args:
        vector: [d] the direction (any non-zero norm; stored with unit norm, float32).
        hook: the hook point it lives at (where `steer` adds it).
        layer: that hook's layer.
        source: where it came from: "logistic", "mean_diff", "random", "negated", ...
        projection_std: std of the activations' projection onto it (1 unit of "sd").
        projection_mean: mean of that projection.
        metadata: anything else (the probe's position and model, the random seed, ...).

    >>> d = Direction(torch.tensor([3.0, 4.0]), hook="blocks.0.hook_resid_post", projection_std=2.0)
    >>> [round(x, 3) for x in d.vector.tolist()], d.d
    ([0.6, 0.8], 2)
    >>> [round(x, 3) for x in d.scaled(1.5).tolist()]  # 1.5 sd = 3.0 along the unit vector
    [1.8, 2.4]
    """

    vector: Float[Tensor, " d"]
    hook: str | None = None
    layer: int | None = None
    source: str = "unknown"  # "logistic" | "mean_diff" | "random" | "negated" | ...
    projection_std: float = 1.0
    projection_mean: float = 0.0
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        v = torch.as_tensor(self.vector).detach().float().reshape(-1)
        norm = v.norm()
        if not bool(torch.isfinite(norm)) or float(norm) == 0.0:
            raise ValueError("a direction needs a finite, non-zero vector")
        self.vector = v / norm  # unit norm, so only the strength sets the size of a push

    @property
    def d(self) -> int:
        """The width of the vector (the model's d_model)."""
        return self.vector.shape[0]

    def scaled(self, alpha: float, units: Units = "sd") -> Float[Tensor, " d"]:
        """The vector to add: `alpha` standard deviations of the projection (or `alpha` raw).

        Args:
            alpha: the strength (negative pushes the other way).
            units: "sd" (multiples of `projection_std`) or "abs" (multiples of the unit vector).

        Returns:
            [d] the vector `alpha * projection_std * vector` ("sd") or `alpha * vector` ("abs").

        >>> Direction(torch.tensor([0.0, 2.0]), projection_std=3.0).scaled(2, units="abs").tolist()
        [0.0, 2.0]
        """
        if units not in ("sd", "abs"):
            raise ValueError(f"units must be 'sd' or 'abs', got {units!r}")
        return self.vector * (alpha * (self.projection_std if units == "sd" else 1.0))

    def project(self, acts: Float[Tensor, "*batch d"]) -> Float[Tensor, " *batch"]:
        """The activations' coordinate along the direction.

        Args:
            acts: [..., d] activations, on any device.

        Returns:
            [...] float32 projections `acts @ vector`.

        >>> Direction(torch.tensor([0.0, 2.0])).project(torch.tensor([[5.0, 1.0], [0.0, -3.0]])).tolist()
        [1.0, -3.0]
        """
        return acts.float() @ self.vector.to(acts.device)


def _projection_stats(vector: Tensor, acts: Tensor) -> tuple[float, float]:
    proj = torch.as_tensor(acts).detach().float().reshape(-1, vector.shape[0]) @ vector
    std = float(proj.std()) if proj.numel() > 1 else 0.0
    return float(proj.mean()), std


def from_probe(probe: Any, acts: Float[Tensor, "n d"] | None = None) -> Direction:
    """The probe's direction (towards "correct"), with projection stats measured on `acts`.

    `acts` should be activations at the probe's own (hook, position) cell. Without them the
    std is 1.0, so "sd" units silently become absolute ones: metadata says so.

    Args:
        probe: a `tl_truth.probing.Probe` (its `direction`, `hook`, `layer`, `kind`).
        acts: [n, d] activations to measure the projection's mean and std on.

    Returns:
        A `Direction` with `source` = the probe's kind.

    Raises:
        ValueError: `acts` have no spread along the direction.

    >>> from tl_truth.probing import Probe
    >>> probe = Probe("mean_diff", torch.tensor([1.0, 0.0]), 0.0, torch.zeros(2), torch.ones(2),
    ...               hook="blocks.1.hook_resid_post")
    >>> d = from_probe(probe, acts=torch.tensor([[1.0, 5.0], [3.0, 5.0]]))
    >>> d.hook, d.source, d.vector.tolist(), d.projection_mean, round(d.projection_std, 3)
    ('blocks.1.hook_resid_post', 'mean_diff', [1.0, 0.0], 2.0, 1.414)
    """
    vec = probe.direction.detach().float()
    meta: dict[str, Any] = {
        "probe_kind": probe.kind,
        "position": probe.position,
        "model": probe.model,
    }
    mean, std = 0.0, 1.0
    if acts is None:
        meta["projection_std_measured"] = False
    else:
        mean, std = _projection_stats(vec / vec.norm(), acts)
        if std <= 0.0:
            raise ValueError("activations have zero spread along the probe direction")
        meta["projection_std_measured"] = True
        meta["n_acts"] = int(torch.as_tensor(acts).reshape(-1, vec.shape[0]).shape[0])
    return Direction(
        vector=vec,
        hook=probe.hook,
        layer=probe.layer,
        source=probe.kind,
        projection_std=std,
        projection_mean=mean,
        metadata=meta,
    )


def _from_difference(
    gap: Tensor, acts: Tensor, source: str, hook: str | None, layer: int | None, meta: dict
) -> Direction:
    """A direction along a non-zero difference of activations, with the projection stats of
    `acts` (which differ along it, so their spread is positive) and the gap's length."""
    mean, std = _projection_stats(gap / gap.norm(), acts)
    return Direction(
        vector=gap,
        hook=hook,
        layer=layer,
        source=source,
        projection_std=std,
        projection_mean=mean,
        metadata={**meta, "mean_gap": float(gap.norm())},
    )


def mass_mean(
    acts: Float[Tensor, "n d"],
    labels: Tensor | Any,
    hook: str | None = None,
    layer: int | None = None,
) -> Direction:
    """The mass-mean shift: mean activation of right answers minus that of wrong ones.

    ITI (Li et al. 2023, arXiv 2306.03341, Table 3 and Appendix B) found this direction steers
    better than a probe's weight vector: with anisotropic classes the separating normal of a
    probe is not the direction between the class means, and pushing along it moves
    activations where the classes do not differ.

    Args:
        acts: [n, d] activations at one (hook, position) cell.
        labels: [n] 1 = right answer, 0 = wrong.
        hook, layer: where the activations come from (where `steer` will add it).

    Returns:
        A `Direction` (`source="mass_mean"`) towards "right", with the projection stats of
        `acts` (so `alpha` in "sd" units means the same as for a probe direction) and the raw
        distance between the class means in `metadata["mean_gap"]`.

    Raises:
        ValueError: a class is empty, or the means coincide.

    >>> acts = torch.tensor([[2.0, 0.0], [4.0, 1.0], [0.0, 0.0], [0.0, 1.0]])
    >>> d = mass_mean(acts, [1, 1, 0, 0], hook="blocks.0.hook_resid_post")
    >>> d.source, [round(x, 3) for x in d.vector.tolist()], d.metadata["mean_gap"]
    ('mass_mean', [1.0, 0.0], 3.0)
    """
    x = torch.as_tensor(acts).detach().float()
    y = torch.as_tensor(labels).reshape(-1).bool()
    if x.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"acts must be [n, d] with one label each, got {tuple(x.shape)}")
    if not bool(y.any()) or bool(y.all()):
        raise ValueError("mass_mean needs both right and wrong answers")
    gap = x[y].mean(0) - x[~y].mean(0)
    if float(gap.norm()) == 0.0:
        raise ValueError("the class means coincide: no mass-mean direction")
    meta = {"n_right": int(y.sum()), "n_wrong": int((~y).sum())}
    return _from_difference(gap, x, "mass_mean", hook, layer, meta)


def contrastive(
    right: Float[Tensor, "n d"],
    wrong: Float[Tensor, "n d"],
    hook: str | None = None,
    layer: int | None = None,
) -> Direction:
    """The contrastive (CAA-style, arXiv 2312.06681) direction: the mean over paired rows of
    `right - wrong`, e.g. a question's right sample minus its wrong greedy answer, each at its
    exact answer. Pairing removes what the two share (the question, the topic).

    Args:
        right, wrong: [n, d] paired activations (row i of each belongs to the same question).
        hook, layer: where the activations come from.

    Returns:
        A `Direction` (`source="contrastive"`), projection stats measured on both sets
        together; `metadata["n_pairs"]`.

    >>> base = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    >>> d = contrastive(base + torch.tensor([0.0, 0.0, 2.0, 0.0]), base)
    >>> d.source, [round(x, 3) for x in d.vector.tolist()], d.metadata["n_pairs"]
    ('contrastive', [0.0, 0.0, 1.0, 0.0], 6)
    """
    a = torch.as_tensor(right).detach().float()
    b = torch.as_tensor(wrong).detach().float()
    if a.shape != b.shape or a.ndim != 2 or a.shape[0] == 0:
        raise ValueError(f"right and wrong must be paired [n, d], got {a.shape} and {b.shape}")
    diff = (a - b).mean(0)
    if float(diff.norm()) == 0.0:
        raise ValueError("the paired differences average to zero: no contrastive direction")
    meta = {"n_pairs": int(a.shape[0])}
    return _from_difference(diff, torch.cat([a, b]), "contrastive", hook, layer, meta)


def random_like(direction: Direction, n: int = 1, seed: int = 0) -> list[Direction]:
    """`n` random unit vectors at the same hook, as a control for steering along `direction`.

    They keep the original's `projection_std`, so the same alpha in "sd" units adds a vector
    of the same absolute norm: only the direction differs (a norm-matched control).

    Args:
        direction: the direction to match.
        n: how many random directions.
        seed: seeds them; the i-th vector is the same whatever `n` is.

    Returns:
        `n` `Direction`s with `source="random"`.

    >>> d = Direction(torch.ones(8), hook="blocks.0.hook_resid_post", projection_std=2.0)
    >>> controls = random_like(d, n=3)
    >>> [c.source for c in controls], controls[0].projection_std, controls[0].hook
    (['random', 'random', 'random'], 2.0, 'blocks.0.hook_resid_post')
    >>> torch.equal(random_like(d, n=1)[0].vector, controls[0].vector)
    True
    """
    gen = torch.Generator().manual_seed(seed)
    vecs = [torch.randn(direction.d, generator=gen) for _ in range(n)]  # row i ignores n
    return [
        replace(
            direction,
            vector=v,
            source="random",
            metadata={**direction.metadata, "random_of": direction.source, "seed": seed, "i": i},
        )
        for i, v in enumerate(vecs)
    ]


def negated(direction: Direction) -> Direction:
    """The opposite direction (towards "wrong" for a probe direction).

    Args:
        direction: the direction to flip.

    Returns:
        A `Direction` with the vector and projection mean negated, `source="negated"`.

    >>> d = Direction(torch.tensor([3.0, 4.0]), projection_mean=0.5, source="logistic")
    >>> flipped = negated(d)
    >>> torch.equal(flipped.vector, -d.vector), flipped.projection_mean, flipped.source
    (True, -0.5, 'negated')
    """
    return replace(
        direction,
        vector=-direction.vector,
        source="negated",
        projection_mean=-direction.projection_mean,
        metadata={**direction.metadata, "negated_of": direction.source},
    )
