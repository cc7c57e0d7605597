"""Probes to steer with, refitted from a captured activation store: one per layer.

`tl-truth steer --from-run R` steers along the correctness probe of each chosen layer. The grid
of a run saves only its best probe, so the others are refitted here on the store's train split,
at one hook kind and one position, and each comes with its direction (`from_probe`), whose
projection statistics are measured on the same training activations ("sd" units).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch

from tl_truth.intervention.directions import Direction, from_probe, mass_mean
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
    direction: str = "probe",
    exclude: Collection[tuple[str, str]] = (),
) -> dict[int, tuple[Probe, Direction]]:
    """layer -> (logistic probe at `blocks.{layer}.hook_{hook_kind}` / `position`, its direction).

    Each probe is fitted on the store's `split` examples that have `position`. `expect_model`
    (the model to steer) is checked against the store's model, so a direction is never applied
    to another model's residual stream. The result is what `steering_sweep` takes.

    Args:
        store: an `ActivationStore` holding those hooks and the position.
        layers: the layers to fit a probe at.
        position: a captured position name.
        hook_kind: the hook kind (`tl_truth.models.HOOK_KINDS`).
        split: the examples to fit on.
        expect_model: the model the directions will steer (`ModelInfo` or dict); None: not
            checked.
        direction: "probe" (the probe's own direction, `from_probe`) or "mass_mean" (mean of
            right minus mean of wrong answers on the same activations, `mass_mean`); the probe
            is fitted either way (steering reports its score shift).
        exclude: (task, id) keys of questions left out of the fit (e.g. a validation split
            carved from train, on which the steering settings are then chosen).

    Returns:
        layer -> (`Probe`, `Direction` with projection stats from the same activations).

    Raises:
        ValueError: a hook or the position was not captured.
        ProbeMismatchError: `expect_model` is not the store's model.

    >>> import tempfile
    >>> from tl_truth.models import model_info
    >>> from tl_truth.probing import capture
    >>> from tl_truth.testing import tiny_model
    >>> model = tiny_model("llama")
    >>> records = [{"id": str(i), "task": "demo", "split": "train" if i < 12 else "test",
    ...             "correct": i % 2 == 0, "prompt_token_ids": [1, 20 + i, 30, 40],
    ...             "answer_token_ids": [50 + i, 60]} for i in range(16)]
    >>> with tempfile.TemporaryDirectory() as d:
    ...     store = capture(model, records, d, positions=["first_answer"], progress=False)
    ...     probes = probes_from_store(store, [1], "first_answer", expect_model=model_info(model))
    ...     held = probes_from_store(store, [1], "first_answer", exclude=[("demo", "0")])
    >>> probe, direction = probes[1]
    >>> probe.hook, probe.metadata["n_train"], direction.hook, direction.source
    ('blocks.1.hook_resid_post', 12, 'blocks.1.hook_resid_post', 'logistic')
    >>> held[1][0].metadata["n_train"]  # one question left out (a validation split)
    11
    """
    if position not in store.positions:
        raise ValueError(
            f"{position} was not captured in {store.path}; captured: {store.positions}"
        )
    in_split = store.split_mask(split)
    if exclude:
        left_out = set(map(tuple, exclude))
        in_split &= torch.tensor([(e["task"], e["id"]) not in left_out for e in store.examples])
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
        if direction == "mass_mean":
            d = mass_mean(x[keep], labels[rows][keep], hook=hook, layer=layer)
            d.metadata.update(position=position, model=store.model)
        elif direction == "probe":
            d = from_probe(probe, x[keep])
        else:
            raise ValueError(f"direction must be 'probe' or 'mass_mean', got {direction!r}")
        probes[layer] = (probe, d)
    return probes
