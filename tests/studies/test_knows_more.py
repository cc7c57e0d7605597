"""Resampling, clustering, the error-type taxonomy and answer selection on hand-made samples."""

import math

import numpy as np
import pytest
import torch

from tl_truth.studies.error_types import ERROR_TYPES, Thresholds, error_type_report, error_types
from tl_truth.studies.resampling import (
    REFUSAL_KEY,
    Resampling,
    SampleSet,
    answer_key,
    cluster_keys,
    clusters_of,
    pass_at_k,
)
from tl_truth.studies.selection import majority_choice, probe_choice, select_answers


def rec(answer, correct, qid="q", task="t", split="test", category=None, exact=None, i=0):
    return {
        "id": qid,
        "task": task,
        "split": split,
        "question": "Q?",
        "gold": "gold",
        "answer": answer,
        "exact_answer": exact if exact is not None else answer,
        "correct": correct,
        "category": category or ("correct" if correct else "incorrect"),
        "sample_index": i,
    }


def sset(answers, gold="paris", greedy=None, qid="q", task="t", split="test"):
    """Samples from answer strings: correct iff the normalised answer contains `gold`;
    None means a refusal."""
    samples = []
    for i, a in enumerate(answers):
        if a is None:
            samples.append(rec("I don't know", False, qid, task, split, "refusal", "", i))
        else:
            samples.append(rec(a, gold in a.lower(), qid, task, split, i=i))
    g = greedy if greedy is not None else answers[0]
    return SampleSet(rec(g, g is not None and gold in g.lower(), qid, task, split), samples)


# -- clustering ---------------------------------------------------------------------------


def test_cluster_keys_equal_and_containment_transitive():
    keys = ["paris", "lyon", "paris france", "city of paris france", "nice", "lyon"]
    assert cluster_keys(keys) == [0, 1, 0, 0, 2, 1]


def test_cluster_keys_whole_words_only():
    # "nice" is inside "venice" as characters but not as a word
    assert cluster_keys(["nice", "venice"]) == [0, 1]


def test_refusals_never_merge_with_answers():
    assert cluster_keys([REFUSAL_KEY, "paris", REFUSAL_KEY]) == [0, 1, 0]


def test_answer_key_normalises_and_prefers_exact_answer():
    r = rec("The capital is Paris.", True, exact="Paris")
    assert answer_key(r) == "paris"
    assert answer_key({**r, "exact_answer": None}) == "capital is paris"
    assert answer_key({**r, "category": "refusal"}) == REFUSAL_KEY


def test_clusters_sorted_by_size_with_correctness():
    s = sset(["Lyon", "Paris", "paris", "Paris, France", "Lyon", "Nice"])
    cs = clusters_of(s.samples)
    assert [(c.key, c.size, c.correct) for c in cs] == [
        ("paris", 3, True),
        ("lyon", 2, False),
        ("nice", 1, False),
    ]
    assert s.cluster_of(0) == s.cluster_of(4) != s.cluster_of(1)


# -- pass@k -------------------------------------------------------------------------------


def test_pass_at_k_matches_combinatorics():
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(10, 1, 10) == 1.0
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - math.comb(3, 2) / math.comb(5, 2))
    with pytest.raises(ValueError):
        pass_at_k(5, 6, 1)


def test_resampling_summary_knows_more():
    sets = [
        sset(["Lyon"] * 8 + ["Paris"] * 2, greedy="Lyon", qid="a"),  # wrong greedy, right sample
        sset(["Lyon"] * 10, greedy="Lyon", qid="b"),  # wrong everywhere
        sset(["Paris"] * 10, greedy="Paris", qid="c"),
    ]
    s = Resampling(sets).summary()
    assert s["k"] == 10
    assert s["n_greedy_wrong"] == 2
    assert s["pass_at_k_greedy_wrong"] == 0.5
    assert s["pass_at_k"]["10"] == pytest.approx(2 / 3)
    assert s["pass_at_k"]["1"] == pytest.approx((0.2 + 0 + 1) / 3)
    assert s["greedy_accuracy"] == pytest.approx(1 / 3)


def test_resampling_save_load_roundtrip(tmp_path):
    sets = [sset(["Lyon", "Paris", None], qid="a"), sset(["Paris"] * 3, qid="b")]
    Resampling(sets, {"k": 3}).save(tmp_path)
    lines = (tmp_path / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 6 and all('"cluster"' in x for x in lines)
    back = Resampling.load(tmp_path)
    assert [s.key for s in back.sets] == [s.key for s in sets]
    assert [s.n_correct for s in back.sets] == [1, 3]
    assert back.meta == {"k": 3}


# -- taxonomy -----------------------------------------------------------------------------


def types_of(answers, **kw):
    return {n for n, v in error_types(sset(answers, **kw)).items() if v}


def test_thresholds_scale_with_k():
    assert Thresholds.for_k(30) == Thresholds(30, 15, 8, 10)
    assert Thresholds.for_k(10) == Thresholds(10, 5, 3, 4)
    with pytest.raises(ValueError):
        Thresholds.for_k(1)


@pytest.mark.parametrize(
    "answers,expected",
    [
        (["Paris"] * 10, {"correct_all"}),
        (["Paris"] * 6 + ["Lyon"] * 4, {"correct_most", "two_competing"}),
        (["Lyon"] * 10, {"incorrect_all"}),
        (["Lyon"] * 7 + ["Nice", "Metz", "Paris"], {"incorrect_most", "many_with_correct"}),
        (["Lyon"] * 5 + ["Paris"] * 5, {"correct_most", "incorrect_most", "two_competing"}),
        ([None] * 6 + ["Lyon"] * 4, {"refuses"}),
        (["Lyon", "Nice", "Metz", "Brest", "Lille"] * 2, {"many_no_correct"}),
        (["Lyon", "Nice", "Metz", "Brest", "Paris"] * 2, {"many_with_correct"}),
        (["Lyon", "Lyon", "Nice", "Nice", "Metz"] * 2, set()),  # 3 answers < K/3 = 4: untyped
    ],
)
def test_taxonomy_on_hand_made_samples(answers, expected):
    assert types_of(answers) == expected


def test_taxonomy_k30_uses_paper_scale():
    # 16/30 correct is "most"; 9 different wrong answers + the right one = 10 answers: "many"
    answers = ["Paris"] * 16 + ["Lyon"] * 5 + [f"city{i}" for i in range(9)]
    got = types_of(answers)
    assert "correct_most" in got and "many_with_correct" in got and "two_competing" not in got


def test_error_type_report_distribution_and_probes():
    rng = np.random.default_rng(0)
    sets, feats = [], []
    for i in range(80):
        consistent = i % 2 == 0
        answers = ["Lyon"] * 10 if consistent else ["Lyon", "Nice", "Metz", "Brest", "Lille"] * 2
        split = "train" if i < 50 else "test"
        sets.append(sset(answers, qid=f"q{i}", split=split, task="a" if i < 40 else "b"))
        # the feature separates the two types: a probe must find it
        feats.append(rng.normal(size=8) + (3.0 if consistent else 0.0) * np.eye(8)[0])
    ref = [0.9 if i % 2 == 0 else 0.1 for i in range(80)]  # a perfect reference, inverted
    rep = error_type_report(
        sets, torch.tensor(np.array(feats), dtype=torch.float32), n_boot=100, reference_scores=ref
    )
    assert rep.probes["incorrect_all"]["reference_auc"] == 1.0
    dist = rep.distribution()
    assert dist["all"]["incorrect_all"] == 0.5 and dist["all"]["many_no_correct"] == 0.5
    assert dist["a"]["n"] == 40 and dist["b"]["n"] == 40
    assert rep.probes["incorrect_all"]["auc"] > 0.9
    assert rep.probes["incorrect_all"]["ci"][0] <= rep.probes["incorrect_all"]["auc"]
    assert "skipped" in rep.probes["correct_all"]  # no positives at all
    d = rep.to_dict()
    assert set(d["distribution"]["all"]) == {"n", *ERROR_TYPES}
    assert d["questions"][1]["types"] == ["many_no_correct"]
    assert "incorrect_all" in rep.to_markdown()
    assert len(rep.to_dataframe()) == 3 * len(ERROR_TYPES)


def test_error_type_report_needs_equal_k():
    with pytest.raises(ValueError, match="same number of samples"):
        error_type_report([sset(["Paris"] * 3), sset(["Paris"] * 4, qid="b")])


# -- selection ----------------------------------------------------------------------------


def test_majority_ignores_refusals_unless_alone():
    assert majority_choice(sset([None] * 6 + ["Paris"] * 4)) == 1.0
    assert majority_choice(sset([None] * 3)) == 0.0
    assert majority_choice(sset(["Lyon"] * 3 + ["Paris"] * 2)) == 0.0


def test_probe_choice_picks_highest_score_and_skips_nan():
    s = sset(["Lyon", "Paris", "Lyon"])
    assert probe_choice(s, [0.9, 0.1, 0.2]) == 0.0
    assert probe_choice(s, [0.1, 0.9, 0.2]) == 1.0
    assert probe_choice(s, [float("nan"), 0.5, float("nan")]) == 1.0
    assert probe_choice(s, [float("nan")] * 3) is None
    with pytest.raises(ValueError):
        probe_choice(s, [0.1])


def test_select_answers_strategies_and_cis():
    sets = []
    scores = {}
    for i in range(40):
        # greedy wrong, majority wrong, but the right answer is sampled and scored highest
        s = sset(["Lyon"] * 6 + ["Paris"] * 4, greedy="Lyon", qid=f"q{i}")
        sets.append(s)
        scores[s.key] = [0.2] * 6 + [0.8] * 4
    sets.append(sset([None] * 10, greedy="Lyon", qid="r"))  # no sample scored: fallback
    scores[sets[-1].key] = [float("nan")] * 10
    sets.append(sset(["Paris"] * 10, qid="train", split="train"))  # excluded: train split
    res = select_answers(sets, scores, n_boot=200)
    acc = res.accuracy
    assert res.n == 41 and res.k == 10
    assert acc["greedy"]["value"] == 0.0
    assert acc["majority"]["value"] == 0.0
    assert acc["random"]["value"] == pytest.approx(0.4 * 40 / 41)
    assert acc["probe"]["value"] == pytest.approx(40 / 41)
    assert acc["random_located"]["value"] == pytest.approx(0.4 * 40 / 41)
    assert acc["oracle"]["value"] == pytest.approx(40 / 41)
    lo, hi = acc["probe"]["ci"]
    assert lo <= acc["probe"]["value"] <= hi
    assert acc["probe"]["minus_greedy"]["ci"][0] > 0
    assert res.n_probe_fallback == 1
    assert res.pass_at_k["greedy_wrong"] == pytest.approx(40 / 41)
    assert res.per_type["refuses"]["n"] == 1
    assert res.per_type["two_competing"]["probe"]["value"] == 1.0
    assert "probe minus greedy (paired)" in res.to_markdown()
    assert acc["probe"]["minus_majority"]["value"] == pytest.approx(40 / 41)
    assert "minus_majority" not in acc["random"]
    assert set(res.to_dataframe()["strategy"]) >= {"greedy", "random", "majority", "probe"}


def test_select_answers_without_scores_has_no_probe_row():
    res = select_answers([sset(["Paris"] * 3)], None, n_boot=10)
    assert "probe" not in res.accuracy and "random_located" not in res.accuracy
    assert res.accuracy["greedy"]["value"] == 1.0


def test_random_located_only_counts_scored_samples():
    # wrong samples without a located answer (NaN score) are out of the located pool
    s = sset(["Lyon", "Paris", "Nice", "Paris"])
    res = select_answers([s], {s.key: [float("nan"), 0.1, float("nan"), 0.2]}, n_boot=10)
    assert res.accuracy["random"]["value"] == 0.5
    assert res.accuracy["random_located"]["value"] == 1.0


def test_resample_resume_only_for_the_same_questions_and_settings(tmp_path):
    from types import SimpleNamespace

    from tl_truth.answers.generation import GenerationConfig
    from tl_truth.cli import _finished_samples
    from tl_truth.data.questions import QADataset, make_question

    cfg = GenerationConfig(temperature=1.0, num_samples=3)
    meta = {"model": {"fingerprint": "abc"}, "generation": vars(cfg)}
    sets = [sset(["Paris"] * 3, qid="a"), sset(["Lyon"] * 3, qid="b")]
    Resampling(sets, meta).save(tmp_path)
    ds = QADataset("d", [make_question(q, "Q?", "Paris", "t", "factual") for q in ("a", "b")])
    info = SimpleNamespace(fingerprint="abc")
    assert _finished_samples(tmp_path / "none", ds, info, cfg) is None
    got = _finished_samples(tmp_path, ds, info, cfg)
    assert [s.key for s in got.sets] == [("t", "a"), ("t", "b")]
    other = GenerationConfig(temperature=1.0, num_samples=5)
    for args in (
        (ds, info, other),
        (ds[:1], info, cfg),
        (ds, SimpleNamespace(fingerprint="x"), cfg),
    ):
        with pytest.raises(ValueError, match="other questions, model or settings"):
            _finished_samples(tmp_path, *args)
