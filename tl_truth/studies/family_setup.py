"""The direction families of `tl-truth steer --directions`, fitted from a run's train questions.

`carve_validation` sets some train questions aside (seeded) to choose settings on; every
family is then fitted on the remaining train questions only (`fit_families`), so the
validation questions are as unseen by the directions as the test ones:

* probe, mass_mean: refitted per layer from the run's activation store (`probes_from_store`,
  at the run's best position);
* contrastive: (wrong greedy, right sample) pairs of those questions from resampling
  (`knows_more_pairs`, `contrastive_directions`, at an exact-answer position);
* heads: the run's graded answers, `hook_z` captured at an exact-answer position
  (`head_directions`), one candidate per k.

A family that cannot be fitted (no pairs, one class only, ...) is reported as skipped, with
why, instead of stopping the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tl_truth.answers.positions import EXACT_POSITIONS
from tl_truth.intervention.contrastive_pairs import contrastive_directions
from tl_truth.intervention.directions import Direction, mass_mean
from tl_truth.intervention.heads import head_directions
from tl_truth.intervention.store_probes import probes_from_store
from tl_truth.models import hook_name
from tl_truth.probing.activations import ActivationStore
from tl_truth.probing.probe import ProbeMismatchError
from tl_truth.studies.patch_study import knows_more_pairs
from tl_truth.studies.resampling import SampleSet
from tl_truth.studies.steering_protocol import Candidate

Key = tuple[str, str]


def carve_validation(keys: Sequence[Key], n: int, seed: int = 0) -> list[Key]:
    """`n` of the (task, id) `keys`, drawn with `seed`: the same whatever the keys' order.

    Args:
        keys: the train questions' keys.
        n: how many to set aside (at most all but 2 of them: directions need data).
        seed: the draw's seed.

    Returns:
        The validation keys, sorted.

    Raises:
        ValueError: too few train questions.

    >>> keys = [("t", str(i)) for i in range(10)]
    >>> carve_validation(keys, 3) == carve_validation(keys[::-1], 3)
    True
    >>> len(carve_validation(keys, 3)), len(set(carve_validation(keys, 3)))
    (3, 3)
    """
    unique = sorted(set(map(tuple, keys)))
    if n > len(unique) - 2:
        raise ValueError(
            f"cannot carve {n} validation questions from {len(unique)} train questions: "
            "lower --n-validation or give the run more questions (--train-limit)"
        )
    order = np.random.default_rng(seed).permutation(len(unique))
    return sorted(unique[i] for i in order[:n])


def exact_position(position: str) -> str:
    """The position contrastive and head directions are read at: `position` if it is an
    exact-answer one, else "exact_last" (the answer's last exact token, as ITI reads answers).

    >>> exact_position("exact_first"), exact_position("last_prompt")
    ('exact_first', 'exact_last')
    """
    return position if position in EXACT_POSITIONS else "exact_last"


def reference_direction(
    store: ActivationStore, layer: int, position: str, hook_kind: str, exclude: Sequence[Key]
) -> Direction:
    """The mass-mean shift at `layer` on the fit questions: its projection SD sets the default
    "abs" alpha grid (`steering_protocol.abs_alphas`)."""
    hook = hook_name(hook_kind, layer)
    x, rows = store.cell(hook, position)
    left_out = set(map(tuple, exclude))
    keep = [
        store.examples[int(r)]["split"] == "train"
        and (store.examples[int(r)]["task"], store.examples[int(r)]["id"]) not in left_out
        for r in rows
    ]
    return mass_mean(x[keep], store.labels[rows][keep], hook=hook, layer=layer)


def fit_families(
    model: Any,
    families: Sequence[str],
    store: ActivationStore,
    records: Sequence[dict],
    layers: Sequence[int],
    position: str,
    validation: Sequence[Key],
    hook_kind: str = "resid_post",
    head_layers: Sequence[int] | None = None,
    head_ks: Sequence[int] = (4, 16),
    sample_sets: Sequence[SampleSet] | None = None,
    expect_model: Any = None,
    seed: int = 0,
    min_pairs: int = 3,
    progress: bool = False,
) -> tuple[dict[str, list[Candidate]], dict[str, str]]:
    """Each family's candidates, fitted on the train questions outside `validation`.

    Args:
        model: the model (heads and contrastive capture activations with it).
        families: names among `steering_protocol.FAMILIES`.
        store: the run's activation store (probe and mass_mean).
        records: the run's graded answers (heads).
        layers: layers of the residual families.
        position: the run's best position (probe and mass_mean; heads and contrastive read
            `exact_position(position)`).
        validation: (task, id) keys left out of every fit.
        hook_kind: the residual hook kind.
        head_layers: layers whose heads compete (None: all).
        head_ks: the k candidates of the heads family.
        sample_sets: resampled questions (contrastive); None: contrastive is skipped.
        expect_model: checked against the store's model (`ModelInfo`).
        seed: the head ranking's split seed.
        min_pairs: fewest contrastive pairs (fewer: the family is skipped).
        progress: show progress bars.

    Returns:
        (family -> candidates, family -> why it was skipped).

    >>> import tempfile
    >>> from tl_truth.probing import capture
    >>> from tl_truth.testing import tiny_model
    >>> model = tiny_model("llama")
    >>> recs = [{"id": str(i), "task": "t", "split": "train", "correct": i % 2 == 0,
    ...          "prompt_token_ids": [1, 20 + i, 30], "answer_token_ids": [50 + i % 3, 60],
    ...          "exact_answer_token_span": [3, 4]} for i in range(20)]
    >>> with tempfile.TemporaryDirectory() as d:
    ...     store = capture(model, recs, d, positions=["exact_last"], progress=False)
    ...     cands, skipped = fit_families(model, ["mass_mean", "heads", "contrastive"], store,
    ...                                   recs, [1], "exact_last", [("t", "0")], head_ks=[2])
    >>> [(c.family, c.layer, c.k) for f in cands for c in cands[f]], list(skipped)
    ([('mass_mean', 1, None), ('heads', None, 2)], ['contrastive'])
    """
    left_out = set(map(tuple, validation))
    exact = exact_position(position)
    candidates: dict[str, list[Candidate]] = {}
    skipped: dict[str, str] = {}

    def fit_ok(r: dict) -> bool:
        return r["split"] == "train" and (r["task"], r["id"]) not in left_out

    for family in families:
        if family not in ("probe", "mass_mean", "contrastive", "heads"):
            raise ValueError(f"unknown family {family!r}")
        try:
            if family in ("probe", "mass_mean"):
                probes = probes_from_store(
                    store, layers, position, hook_kind, "train", expect_model, family, left_out
                )
                candidates[family] = [Candidate(family, lay, d) for lay, (_, d) in probes.items()]
            elif family == "contrastive":
                if sample_sets is None:
                    skipped[family] = "no samples (give --samples or let steer resample)"
                    continue
                pairs = knows_more_pairs([s for s in sample_sets if fit_ok(s.greedy)])
                if len(pairs) < min_pairs:
                    # one pair's "SD" is its own gap: alpha in sd units would mean nothing
                    skipped[family] = (
                        f"{'no' if not pairs else 'too few'} pairs: {len(pairs)} fit questions "
                        f"(< {min_pairs}) were answered wrong greedily and right in one of "
                        f"their samples ({len(sample_sets)} resampled questions)"
                    )
                    continue
                dirs = contrastive_directions(
                    model, pairs, layers, hook_kind, exact, progress=progress
                )
                candidates[family] = [Candidate(family, lay, d) for lay, d in dirs.items()]
            elif family == "heads":
                fit = [r for r in records if fit_ok(r) and r.get("sample_index", 0) == 0]
                ranked = head_directions(
                    model, fit, head_layers, position=exact, seed=seed, progress=progress
                )
                ks = sorted({min(k, len(ranked.heads)) for k in head_ks})
                candidates[family] = [Candidate(family, heads=ranked, k=k) for k in ks if k > 0]
        except ProbeMismatchError:  # another model's store: an error, not a skipped family
            raise
        except ValueError as e:  # this family cannot be fitted here; the others go on
            skipped[family] = str(e)
            if family in ("heads", "contrastive") and "exact" in str(e):
                skipped[family] += (
                    f" (read at {exact}: wrong answers need a located exact answer; a run "
                    "with model extraction, the default, locates more)"
                )
    return candidates, skipped
