"""Direction families and the held-out protocol: planted directions are recovered, the best
validation setting is chosen, and test labels are never read when choosing."""

from __future__ import annotations

import hashlib
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from tl_truth.data.questions import QADataset, make_question
from tl_truth.intervention.contrastive_pairs import contrastive_directions
from tl_truth.intervention.directions import Direction
from tl_truth.intervention.store_probes import probes_from_store
from tl_truth.probing.activations import capture
from tl_truth.studies.family_setup import carve_validation
from tl_truth.studies.steering_protocol import (
    Candidate,
    choose,
    paired_bootstrap,
    select_and_test,
)

# -- planted directions on a tiny model ---------------------------------------------------------

A, B = 20, 21  # wrong answers say token A at the exact answer, right ones token B


@contextmanager
def planted(model, scale=40.0, seed=0):
    """Token B's embedding = token A's + scale * u (restored after: the model is cached)."""
    u = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(seed))
    u = u / u.norm()
    w = model.W_E
    old = w.detach().clone()
    with torch.no_grad():
        w[B] = w[A] + scale * u
    try:
        yield u
    finally:
        with torch.no_grad():
            w.copy_(old)


def _record(i, token, correct, split="train"):
    prompt = [1, 30 + i % 13, 50 + i % 7, 9]
    return {
        "id": str(i),
        "task": "t",
        "split": split,
        "correct": correct,
        "prompt_token_ids": prompt,
        "answer_token_ids": [60 + i % 5, token, 70],
        "exact_answer_token_span": [len(prompt) + 1, len(prompt) + 2],
    }


def _cos(d: Direction, u: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(d.vector, u, dim=0))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_mass_mean_and_contrastive_recover_a_planted_direction(arch, tmp_path):
    from tl_truth.testing import tiny_model

    model = tiny_model(arch)
    with planted(model) as u:
        records = [_record(i, B if i % 2 == 0 else A, i % 2 == 0) for i in range(24)]
        store = capture(
            model,
            records,
            tmp_path / "store",
            hooks=["blocks.1.hook_resid_post"],
            positions=["exact_last"],
            progress=False,
        )
        (_, mm) = probes_from_store(store, [1], "exact_last", direction="mass_mean")[1]
        pairs = [(_record(i, A, False), _record(i, B, True)) for i in range(8)]
        ct = contrastive_directions(model, pairs, [1], position="exact_last")[1]
    assert mm.source == "mass_mean" and _cos(mm, u) > 0.95
    assert ct.source == "contrastive" and _cos(ct, u) > 0.95
    assert ct.metadata["n_pairs"] == 8
    # without the plant the same records give no such direction
    store2 = capture(
        model,
        records,
        tmp_path / "s2",
        ["blocks.1.hook_resid_post"],
        ["exact_last"],
        progress=False,
    )
    (_, plain) = probes_from_store(store2, [1], "exact_last", direction="mass_mean")[1]
    assert _cos(plain, u) < 0.5


# -- the protocol on stub answer functions -------------------------------------------------------


def _questions(prefix, n, gold="a"):
    return QADataset(
        prefix, [make_question(f"{prefix}{i}", "q?", gold, "t", "t") for i in range(n)]
    )


def _direction(layer):
    return Direction(torch.ones(8), hook=f"blocks.{layer}.hook_resid_post", layer=layer)


def _candidates():
    return {
        "probe": [Candidate("probe", 0, _direction(0)), Candidate("probe", 1, _direction(1))],
        "mass_mean": [Candidate("mass_mean", 1, _direction(1))],
    }


def _fraction(acc, n):
    return [i < round(acc * n) for i in range(n)]


def test_selection_picks_the_best_validation_setting():
    # known validation accuracies per (family, layer, scope, alpha); test ones are reversed
    val = {
        ("probe", 0, "all", 1.0): 0.4,
        ("probe", 0, "all", 2.0): 0.5,
        ("probe", 1, "all", 1.0): 0.7,  # best probe setting...
        ("probe", 1, "all", 2.0): 0.7,  # ...tied: the smaller |alpha| wins
        ("probe", 0, "generated", 1.0): 0.3,
        ("probe", 0, "generated", 2.0): 0.6,
        ("probe", 1, "generated", 1.0): 0.2,
        ("probe", 1, "generated", 2.0): 0.1,
        ("mass_mean", 1, "all", 1.0): 0.5,
        ("mass_mean", 1, "all", 2.0): 0.6,
        ("mass_mean", 1, "generated", 1.0): 0.8,  # best mass-mean setting
        ("mass_mean", 1, "generated", 2.0): 0.5,
    }
    validation, test = _questions("v", 20), _questions("t", 20)

    def answer(questions, s):
        if s is None:
            return _fraction(0.5, len(questions))
        key = (s.candidate.family, s.candidate.layer, s.scope, s.alpha)
        acc = val[key] if questions is validation else 1.0 - val[key]
        return _fraction(0.5 if s.control is not None else acc, len(questions))

    res = select_and_test(
        None,
        _candidates(),
        validation,
        test,
        answer,
        {"probe": [1.0, 2.0], "mass_mean": [1.0, 2.0]},
        scopes=["all", "generated"],
        n_random=3,
        n_boot=100,
        progress=False,
    )
    probe, mm = res.families["probe"], res.families["mass_mean"]
    assert (probe["selected"]["layer"], probe["selected"]["scope"], probe["selected"]["alpha"]) == (
        1,
        "all",
        1.0,
    )
    assert (mm["selected"]["layer"], mm["selected"]["scope"], mm["selected"]["alpha"]) == (
        1,
        "generated",
        1.0,
    )
    assert len(probe["validation"]) == 8 and len(mm["validation"]) == 4
    assert probe["test"]["accuracy"] == pytest.approx(0.3)  # the chosen setting, tested once
    assert mm["test"]["random"]["n"] == 3 and mm["test"]["random"]["accuracy_mean"] == 0.5
    assert mm["selected"]["validation_accuracy"] == 0.8
    assert res.to_dict()["selected_on"] == "validation"


def _coin(*parts) -> bool:
    """A deterministic pseudo-random bit of its arguments."""
    return hashlib.sha256(repr(parts).encode()).digest()[0] % 2 == 0


def test_protocol_never_reads_test_labels_when_choosing():
    """Correctness depends on the gold answers: flipping every test gold answer changes the
    test results but not one selected setting, and no test answer comes before a choice."""
    validation = _questions("v", 30)
    clean = _questions("t", 30, gold="a")
    poisoned = _questions("t", 30, gold="not a")
    calls: list[str] = []

    def answer(questions, s):
        calls.append("test" if questions.name == "t" else "validation")
        key = "none" if s is None else (s.candidate.family, s.candidate.layer, s.alpha, s.control)
        return [_coin(q.gold, q.id, key) for q in questions]

    def run(test):
        calls.clear()
        res = select_and_test(
            None,
            _candidates(),
            validation,
            test,
            answer,
            {"probe": [1.0, 2.0, 4.0], "mass_mean": [1.0, 2.0, 4.0]},
            n_random=2,
            n_boot=100,
            progress=False,
        )
        first_test = calls.index("test")
        assert "validation" not in calls[first_test:]  # every choice made before any test answer
        return res

    a, b = run(clean), run(poisoned)
    for family in ("probe", "mass_mean"):
        assert a.families[family]["selected"] == b.families[family]["selected"]
        assert a.families[family]["validation"] == b.families[family]["validation"]
    # the poison reached the test answers
    assert a.baseline["test_accuracy"] != b.baseline["test_accuracy"] or any(
        a.families[f]["test"]["accuracy"] != b.families[f]["test"]["accuracy"] for f in a.families
    )


def test_choose_and_bootstrap():
    rows = [{"alpha": a, "validation_accuracy": v} for a, v in [(8, 0.6), (-4, 0.6), (2, 0.5)]]
    assert choose(rows) == 1
    base = np.array([0, 0, 0, 0, 1, 1, 1, 1], dtype=bool)
    new = np.array([1, 1, 0, 0, 1, 1, 1, 0], dtype=bool)
    out = paired_bootstrap(base, new, [base, ~base], n_boot=500, seed=0)
    assert out["accuracy"] == 0.625 and out["recovery_rate"] == 0.5 and out["break_rate"] == 0.25
    assert out["n_wrong_unsteered"] == 4 and out["n_right_unsteered"] == 4
    assert out["gain_over_unsteered"]["value"] == pytest.approx(0.125)
    assert out["gain_over_random"]["value"] == pytest.approx(0.125)  # random mean is 0.5 each
    for key in ("ci", "recovery_ci", "break_ci"):
        lo, hi = out[key]
        assert lo <= out[key.replace("ci", "rate") if key != "ci" else "accuracy"] <= hi
    same = paired_bootstrap(base, base, [], n_boot=100)
    assert same["gain_over_unsteered"] == {"value": 0.0, "ci": [0.0, 0.0]}
    assert same["random"]["n"] == 0 and same["gain_over_random"]["value"] is None


def test_validation_split_is_seeded_and_from_the_given_keys():
    keys = [("t", str(i)) for i in range(50)]
    a = carve_validation(keys, 10, seed=0)
    assert a == carve_validation(list(reversed(keys)), 10, seed=0)
    assert a != carve_validation(keys, 10, seed=1)
    assert set(a) <= set(keys)
    with pytest.raises(ValueError, match="n-validation"):
        carve_validation(keys, 49)
