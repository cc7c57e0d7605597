"""Controls on synthetic data with a planted answer: answer identity vs a real direction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tl_truth.probing.controls import (
    answer_prior,
    artefact_controls,
    normalise_answer,
    task_prior,
)
from tl_truth.probing.metrics import (
    accuracy_at_coverage,
    paired_bootstrap_auc_diff,
    prediction_rejection_ratio,
    rejection_curve,
    roc_auc,
    within_group_auc,
)
from tl_truth.probing.permutation import permutation_null
from tl_truth.probing.probe import Probe


def _world(seed: int, answer_only: bool, n: int = 600, d: int = 64, n_answers: int = 20):
    """Examples naming one of `n_answers` answers; activations = the answer's embedding + noise.

    answer_only: correctness is a property of the answer (each answer right 90% or 10% of the
    time), and the activation carries nothing else. Otherwise correctness is a coin flip per
    example, independent of the answer, and written along a planted direction.
    """
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n_answers, d))
    answer = rng.integers(0, n_answers, size=n)
    if answer_only:
        p = np.where(np.arange(n_answers) % 2 == 0, 0.9, 0.1)
        y = (rng.random(n) < p[answer]).astype(int)
        X = emb[answer] + 0.3 * rng.normal(size=(n, d))
    else:
        y = (rng.random(n) < 0.5).astype(int)
        direction = rng.normal(size=d)
        X = emb[answer] + 0.3 * rng.normal(size=(n, d)) + 0.6 * np.outer(y, direction)
    train = rng.random(n) < 0.6
    return X, y, train, [f"answer {a}" for a in answer]


def _controls(seed: int, answer_only: bool) -> dict:
    X, y, train, answers = _world(seed, answer_only)
    probe = Probe.from_data(torch.tensor(X[train]), torch.tensor(y[train]))
    scores = probe.decision_function(torch.tensor(X)).double().numpy()
    return artefact_controls(
        labels=y,
        train=train,
        evaluate=~train,
        answers=[normalise_answer(a) for a in answers],
        tasks=["t"] * len(y),
        methods={"probe": scores},
        probe="probe",
        n_boot=300,
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_answer_identity_only_is_not_beyond_artefacts(seed):
    out = _controls(seed, answer_only=True)
    assert out["controls"]["answer_prior"]["auc"] > 0.75
    beyond = out["beyond_artefacts"]
    assert beyond["against"] == "answer_prior"
    lo, hi = beyond["ci"]
    assert lo <= 0 <= hi, beyond
    # answer identity cannot order a right and a wrong example of the same answer
    assert abs(out["controls"]["within_answer"]["auc"]["probe"] - 0.5) < 0.15
    assert out["controls"]["within_answer"]["n_pairs"] > 50


@pytest.mark.parametrize("seed", [0, 1])
def test_a_real_direction_is_beyond_artefacts(seed):
    out = _controls(seed, answer_only=False)
    assert abs(out["controls"]["answer_prior"]["auc"] - 0.5) < 0.12
    beyond = out["beyond_artefacts"]
    assert beyond["ci"][0] > 0, beyond
    assert beyond["within_answer_auc"] > 0.8
    assert beyond["within_answer_ci"][0] > 0.7


def test_task_prior_only_when_tasks_are_pooled():
    y = np.array([1, 1, 0, 0, 1, 1, 0, 0])
    train = np.array([1, 1, 1, 1, 0, 0, 0, 0], bool)
    s = np.array([0.9, 0.8, 0.1, 0.2, 0.7, 0.3, 0.6, 0.4])
    one = artefact_controls(y, train, ~train, list("abcdabcd"), ["t"] * 8, {"p": s}, "p", n_boot=0)
    assert one["controls"]["task_prior"] is None
    two = artefact_controls(
        y, train, ~train, list("abcdabcd"), ["t", "t", "u", "u"] * 2, {"p": s}, "p", n_boot=0
    )
    assert two["controls"]["task_prior"]["auc"] == 1.0  # task "t" is always right in train
    assert set(two["per_task"]) == {"t", "u"}


def test_unseen_answers_are_counted_and_small_sets_get_no_auc():
    y = np.array([1, 0, 1, 0, 1, 0])
    train = np.array([1, 1, 0, 0, 0, 0], bool)
    out = artefact_controls(
        y, train, ~train, ["a", "b", "a", "c", "d", "e"], ["t"] * 6,
        {"p": np.arange(6.0)}, "p", n_boot=0,
    )  # fmt: skip
    unseen = out["controls"]["unseen_answers"]
    assert (unseen["n"], unseen["n_correct"], unseen["n_incorrect"]) == (3, 1, 2)
    assert unseen["auc"]["p"] is None and unseen["note"]


def test_answer_and_task_prior_by_hand():
    got = answer_prior(["x", "x", "y", None], [1, 1, 0, 1], ["x", "y", "z", None])
    p0 = 2 / 3  # None answers are not counted in the train accuracy
    np.testing.assert_allclose(got, [(2 + p0) / 3, p0 / 2, p0, p0])
    np.testing.assert_allclose(task_prior(["a", "b"], [1, 0], ["b", "a", "c"]), [0, 1, 0.5])


def test_within_group_auc_ignores_pairs_across_groups():
    # every right answer above the wrong one of its own group
    auc, pairs, groups = within_group_auc([0.9, 1.0, 0.1, 0.2], [0, 1, 0, 1], ["a", "a", "b", "b"])
    assert (auc, pairs, groups) == (1.0, 2, 2)
    auc, _, _ = within_group_auc([1.0, 0.9, 0.2, 0.1], [0, 1, 0, 1], ["a", "a", "b", "b"])
    assert auc == 0.0
    assert roc_auc([1.0, 0.9, 0.2, 0.1], [0, 1, 0, 1]) == 0.25  # pooled pairs differ


def test_prr_by_hand():
    # 5 answers, 3 right. Keep the m most confident, m = 1..5:
    scores = [0.9, 0.7, 0.6, 0.4, 0.1]
    correct = [1, 0, 1, 1, 0]
    kept = [1 / 1, 1 / 2, 2 / 3, 3 / 4, 3 / 5]
    oracle = [1, 1, 1, 3 / 4, 3 / 5]
    base = 3 / 5
    expected = (np.mean(kept) - base) / (np.mean(oracle) - base)
    assert prediction_rejection_ratio(scores, correct) == pytest.approx(expected)
    cov, acc = rejection_curve(scores, correct)
    np.testing.assert_allclose(acc, kept)
    np.testing.assert_allclose(cov, [0.2, 0.4, 0.6, 0.8, 1.0])
    assert accuracy_at_coverage(scores, correct, 0.8) == pytest.approx(3 / 4)


def test_prr_ties_are_broken_in_expectation():
    # a constant score is a random order: PRR 0
    assert prediction_rejection_ratio([0.5] * 4, [1, 0, 1, 0]) == pytest.approx(0.0)
    assert np.isnan(prediction_rejection_ratio([0.1, 0.2], [1, 1]))


def test_paired_bootstrap_difference_of_a_method_with_itself_is_zero():
    rng = np.random.default_rng(0)
    s, y = rng.random(50), rng.integers(0, 2, 50)
    d, (lo, hi) = paired_bootstrap_auc_diff(s, s, y, n_boot=100)
    assert d == 0 and lo == 0 and hi == 0


def _noise(seed: int, signal: float = 0.0):
    g = torch.Generator().manual_seed(seed)
    n, d = 120, 6
    y = (torch.arange(n) % 2).long()
    X = torch.randn(n, 2, 1, d, generator=g)
    X[:, :, 0, 0] += signal * y[:, None]
    train = torch.arange(n) % 3 != 0
    return X, y, train


def test_permutation_null_p_value_under_noise_is_not_small():
    p_values = []
    for seed in range(4):
        X, y, train = _noise(seed)
        valid = torch.ones(len(y), 1, dtype=torch.bool)
        # the observed statistic of a pipeline on pure noise: one more draw from the null
        observed = permutation_null(
            X, y, train, ~train, valid, [(0, 0), (1, 0)], 0.5, n_perm=1, chosen_c=[1.0, 1.0],
            seed=1000 + seed, progress=False,
        ).null_aucs[0]  # fmt: skip
        null = permutation_null(
            X, y, train, ~train, valid, [(0, 0), (1, 0)], observed, n_perm=19,
            chosen_c=[1.0, 1.0], seed=seed, progress=False,
        )  # fmt: skip
        assert null.n == 19
        assert 0.4 < null.null_mean < 0.6
        p_values.append(null.p_value)
    assert 0.2 < np.mean(p_values) < 0.8, p_values


def test_permutation_null_rejects_a_planted_signal_and_reports_its_rule():
    X, y, train = _noise(0, signal=2.0)
    valid = torch.ones(len(y), 1, dtype=torch.bool)
    null = permutation_null(
        X, y, train, ~train, valid, [(0, 0), (1, 0)], 0.95, n_perm=19, Cs=(0.1, 1.0),
        progress=False,
    )  # fmt: skip
    assert null.p_value == pytest.approx(1 / 20)
    d = null.to_dict()
    assert d["n"] == 19 and "re-selected" in d["rule"] and d["n_candidate_cells"] == 2


def test_permutation_null_leaves_the_callers_random_state_alone():
    X, y, train = _noise(0)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    permutation_null(
        X, y, train, ~train, torch.ones(len(y), 1, dtype=torch.bool), [(0, 0)], 0.5,
        n_perm=3, chosen_c=[1.0], progress=False,
    )  # fmt: skip
    assert torch.rand(1) == before
