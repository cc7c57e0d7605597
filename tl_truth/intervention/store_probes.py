"""Probes to steer with, refitted from a captured activation store: one per layer.

`tl-truth steer --from-run R` steers along the correctness probe of each chosen layer. The grid
of a run saves only its best probe, so the others are refitted here on the store's train split,
at one hook kind and one position, and each comes with its direction (`from_probe`), whose
projection statistics are measured on the same training activations ("sd" units).
"""

from __future__ import annotations

from collections.abc import Sequence

from tl_truth.intervention.directions import Direction, from_probe
from tl_truth.models import ModelInfo, hook_name
from tl_truth.probing.activations import ActivationStore
from tl_truth.probing.probe import Probe


def probes_from_store(
    store: ActivationStore,
    layers: Sequence[int],
    position: str,
    hook_kind: str = "resid_post",
    split: str = "train",
    expect_model: ModelInfo | dict | None = None,
) -> dict[int, tuple[Probe, Direction]]:
    """layer -> (logistic probe at `blocks.{layer}.hook_{hook_kind}` / `position`, its direction).

    Each probe is fitted on the store's `split` examples that have `position`. `expect_model`
    (the model to steer) is checked against the store's model, so a direction is never applied
    to another model's residual stream. The result is what `steering_sweep` takes.
    """
    if position not in store.positions:
        raise ValueError(
            f"{position} was not captured in {store.path}; captured: {store.positions}"
        )
    in_split = store.split_mask(split)
    labels = store.labels
    probes: dict[int, tuple[Probe, Direction]] = {}
    for layer in layers:
        hook = hook_name(hook_kind, layer)
        if hook not in store.hooks:
            raise ValueError(f"{hook} was not captured in {store.path}; captured: {store.hooks}")
        x, rows = store.cell(hook, position)
        keep = in_split[rows]
        probe = Probe.from_data(
            x[keep],
            labels[rows][keep],
            hook=hook,
            layer=layer,
            position=position,
            model=store.model,
        )
        if expect_model is not None:
            probe.check_compatible(expect_model)
        probes[layer] = (probe, from_probe(probe, x[keep]))
    return probes
