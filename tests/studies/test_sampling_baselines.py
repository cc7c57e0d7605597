"""Sampling baselines on hand-made sample sets with a known answer."""

from __future__ import annotations

import numpy as np
import pytest

from tl_truth.studies.resampling import SampleSet
from tl_truth.studies.sampling_baselines import compare_with_probe, sampling_scores


def _rec(qid, answer, correct, exact=None):
    return {
        "task": "capitals",
        "id": qid,
        "answer": answer,
        "exact_answer": exact or answer,
        "correct": correct,
        "category": "correct" if correct else "incorrect",
    }


def _set(qid, greedy, samples, greedy_correct):
    return SampleSet(
        _rec(qid, greedy, greedy_correct),
        [_rec(qid, a, a == greedy and greedy_correct) for a in samples],
    )


def test_scores_by_hand():
    sets = [
        _set("1", "Paris", ["Paris", "Paris", "Paris", "Paris"], True),  # certain
        _set("2", "Lyon", ["Lyon", "Nice", "Paris", "Lille"], False),  # all different
    ]
    s = sampling_scores(sets)
    assert s["semantic_entropy"][0] == 0.0
    assert s["semantic_entropy"][1] == pytest.approx(-np.log(4))
    assert s["greedy_agreement"].tolist() == [1.0, 0.25]
    assert s["lexical_similarity"].tolist() == [1.0, 0.0]


def test_user_clustering_is_used():
    sets = [_set("1", "Paris", ["Paris", "Lyon"], True)]
    one_cluster = sampling_scores(sets, cluster_fn=lambda answers: [0] * len(answers))
    assert one_cluster["semantic_entropy"][0] == 0.0 and one_cluster["greedy_agreement"][0] == 1


def test_compare_ranks_consistent_questions_as_right_and_pairs_with_the_probe():
    rng = np.random.default_rng(0)
    sets, probe = [], []
    for i in range(40):
        right = i % 2 == 0
        if right:  # right answers are stable across samples
            samples = ["Paris"] * 4 + ["Lyon"] * int(rng.integers(0, 2))
        else:
            samples = ["Lyon", "Nice", "Lille", "Paris"]
        sets.append(_set(str(i), "Paris" if right else "Lyon", samples, right))
        probe.append(0.5 + (0.3 if right else -0.3) * rng.random())
    out = compare_with_probe(sets, probe, n_boot=100)
    assert out["n"] == 40 and out["n_correct"] == 20
    assert out["auc"]["semantic_entropy"] > 0.95 and out["auc"]["greedy_agreement"] > 0.95
    assert "no NLI" in out["clustering"]
    assert set(out["probe_minus_method"]) == {
        "semantic_entropy",
        "lexical_similarity",
        "greedy_agreement",
    }
