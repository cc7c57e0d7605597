"""The 'knows more than it shows' patching study: aligned positions, baselines, averaging."""

import json

import matplotlib
import numpy as np
import pytest
import torch

from tl_truth.intervention.patching import patch_metrics
from tl_truth.models import hook_name
from tl_truth.probing.probe import Probe
from tl_truth.studies.patch_study import (
    ALIGNED_POSITIONS,
    aligned_position,
    knows_more_pairs,
    load_study,
    patch_pair,
    patching_study,
)
from tl_truth.studies.resampling import SampleSet

matplotlib.use("Agg")
pytestmark = pytest.mark.backend

PROMPT = [1, 5, 9, 30, 40]


def rec(answer_ids, span, correct, qid="q", exact="x", i=0):
    n = len(PROMPT)
    return {
        "id": qid,
        "task": "t",
        "split": "test",
        "question": "Q?",
        "gold": "g",
        "answer": "a",
        "exact_answer": exact,
        "correct": correct,
        "category": "correct" if correct else "incorrect",
        "prompt_token_ids": list(PROMPT),
        "answer_token_ids": list(answer_ids),
        "exact_answer_token_span": None if span is None else [n + span[0], n + span[1]],
        "sample_index": i,
    }


# wrong: "50 60 [70 71] 80"; right: "50 55 60 [90] 80 81" (one token longer before the answer)
WRONG = rec([50, 60, 70, 71, 80], (2, 4), False, exact="Lyon")
RIGHT = rec([50, 55, 60, 90, 80, 81], (3, 4), True, exact="Paris")


def make_probe(model, hook):
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(40, model.cfg.d_model, generator=gen)
    y = torch.arange(40) % 2
    X[y == 1] += torch.randn(model.cfg.d_model, generator=gen)
    return Probe.from_data(X, y, kind="mean_diff", hook=hook, position="exact_last")


def test_aligned_positions():
    n = len(PROMPT)
    got = {name: aligned_position(name, WRONG) for name in ALIGNED_POSITIONS}
    assert got == {
        "exact-3": n - 1,
        "exact-2": n,
        "before_exact": n + 1,
        "exact_first": n + 2,
        "exact_last": n + 3,
        "after_exact": n + 4,
    }
    assert aligned_position("exact_first", RIGHT) == n + 3
    assert aligned_position("exact-9", WRONG) is None
    assert aligned_position("exact_first", {**WRONG, "exact_answer_token_span": None}) is None


def test_knows_more_pairs_needs_wrong_greedy_right_sample_with_spans():
    other = rec([50], None, True, i=1)
    s1 = SampleSet(WRONG, [rec([50], (0, 1), False), other, RIGHT])
    s2 = SampleSet(RIGHT, [RIGHT])  # greedy right: no pair
    s3 = SampleSet({**WRONG, "exact_answer_token_span": None}, [RIGHT])  # no wrong span
    pairs = knows_more_pairs([s1, s2, s3])
    assert pairs == [(WRONG, RIGHT)]


def test_moved_patch_equals_manual_copy(tiny):
    layer = 1
    hook = hook_name("resid_pre", layer)
    seq_w = WRONG["prompt_token_ids"] + WRONG["answer_token_ids"]
    seq_r = RIGHT["prompt_token_ids"] + RIGHT["answer_token_ids"]
    _, cache_r = tiny.run_with_cache(torch.tensor([seq_r]))
    metric = {"last": lambda logits: logits[0, -1].sum()}
    out, _, _ = patch_metrics(
        tiny, seq_r, seq_w, metric, "resid_pre", [layer], positions=[7], clean_positions=[8]
    )

    def manual(act, hook):
        act = act.clone()
        act[:, 7] = cache_r[hook.name][:, 8]
        return act

    ref = tiny.run_with_hooks(torch.tensor([seq_w]), fwd_hooks=[(hook, manual)])
    torch.testing.assert_close(out["last"][0, 0], ref[0, -1].sum().float(), atol=1e-3, rtol=1e-4)
    with pytest.raises(ValueError, match="one to one"):
        patch_metrics(tiny, seq_r, seq_w, metric, positions=[7], clean_positions=[8, 9])


def test_patch_pair_own_layer_gives_clean_probe_score(tiny):
    layer = tiny.cfg.n_layers - 1
    probe = make_probe(tiny, hook_name("resid_pre", layer))
    r = patch_pair(tiny, WRONG, RIGHT, probe, layers=[0, layer])
    assert r.probe_score.shape == (2, len(ALIGNED_POSITIONS))
    j = ALIGNED_POSITIONS.index("exact_last")
    # the probe reads resid_pre[layer] at exact_last: patching exactly that cell copies the
    # clean run's own activation there
    assert float(r.probe_score[1, j]) == pytest.approx(r.clean_probe_score, abs=1e-3)
    # later positions cannot change what the probe reads at an earlier position (causal)
    after = ALIGNED_POSITIONS.index("after_exact")
    assert float(r.probe_score[1, after]) == pytest.approx(r.corrupted_probe_score, abs=1e-3)
    assert r.clean_probe_score != pytest.approx(r.corrupted_probe_score, abs=1e-3)


def test_patch_pair_identical_runs_change_nothing(tiny):
    probe = make_probe(tiny, hook_name("resid_post", 0))
    same = {**WRONG, "correct": True}
    r = patch_pair(tiny, WRONG, same, probe, layers=[0, 1])
    assert torch.allclose(
        r.probe_score, torch.full_like(r.probe_score, r.corrupted_probe_score), atol=1e-3
    )
    assert r.clean_probe_score == pytest.approx(r.corrupted_probe_score, abs=1e-3)


def test_study_average_skips_missing_positions_and_saves(tiny, tmp_path):
    probe = make_probe(tiny, hook_name("resid_post", 1))
    # this wrong answer ends with its exact answer: no after_exact column for it
    short = rec([50, 60, 70], (2, 3), False, qid="b", exact="Nice")
    sets = [
        SampleSet(WRONG, [rec([50], (0, 1), False), RIGHT]),
        SampleSet(short, [{**RIGHT, "id": "b"}]),
        SampleSet(RIGHT, [RIGHT]),
    ]
    study = patching_study(tiny, sets, probe, layers=[0, 1], progress=False)
    assert len(study.results) == 2 and study.meta == {"n_candidates": 2, "n_questions": 3}
    after = ALIGNED_POSITIONS.index("after_exact")
    assert torch.isnan(study.results[1].probe_score[:, after]).all()
    avg = study.average()
    torch.testing.assert_close(
        avg.probe_score[:, after].float(), study.results[0].probe_score[:, after].float()
    )
    assert not torch.isnan(avg.probe_score).any()
    s = study.summary()
    assert s["n_questions"] == 2 and set(s) >= {"probe_score", "answer_logit"}
    study.save(tmp_path)
    doc = json.loads((tmp_path / "patching.json").read_text())
    assert len(doc["examples"]) == 2 and doc["examples"][0]["wrong"] == "Lyon"
    assert (tmp_path / "patching_average.png").exists()
    assert len(list((tmp_path / "patching_examples").glob("*.png"))) == 2
    assert "knows more" in study.to_markdown()
    assert len(study.to_dataframe()) == 2 * 2 * len(ALIGNED_POSITIONS)
    assert np.isfinite(study.to_dataframe()["probe_score"]).sum() == 2 * 2 * 6 - 2
    # gap closed = ratio of means over the questions that have the position
    r0, r1 = study.results
    j = ALIGNED_POSITIONS.index("exact_last")
    num = (r0.probe_score[1, j] + r1.probe_score[1, j]) / 2
    num -= (r0.corrupted_probe_score + r1.corrupted_probe_score) / 2
    den = (r0.clean_probe_score + r1.clean_probe_score) / 2
    den -= (r0.corrupted_probe_score + r1.corrupted_probe_score) / 2
    assert study.gap_closed()[1, j] == pytest.approx(float(num / den), rel=1e-4, abs=1e-4)
    after = ALIGNED_POSITIONS.index("after_exact")
    only0 = (r0.probe_score[1, after] - r0.corrupted_probe_score) / (
        r0.clean_probe_score - r0.corrupted_probe_score
    )
    assert study.gap_closed()[1, after] == pytest.approx(float(only0), rel=1e-4, abs=1e-4)
    back = load_study(tmp_path)
    assert back.pairs == study.pairs
    for m in ("probe_score", "answer_logit"):  # saved values are rounded to 4 decimals
        a, b = back.summary()[m], study.summary()[m]
        assert a["clean_mean"] == pytest.approx(b["clean_mean"], abs=1e-3)
        assert a["best_cell"]["position"] == b["best_cell"]["position"]


def test_study_without_pairs_says_why(tiny):
    probe = make_probe(tiny, hook_name("resid_post", 0))
    with pytest.raises(ValueError, match="wrong greedily and right in a sample"):
        patching_study(tiny, [SampleSet(RIGHT, [RIGHT])], probe, progress=False)


def test_patch_pair_clean_shorter_than_probe_position(tiny):
    # the right answer ends before the wrong answer's probe position: the clean run is only
    # read at its own positions
    wrong = rec([50, 60, 61, 62, 63, 70, 71, 80], (5, 7), False)
    right = rec([90], (0, 1), True)
    probe = make_probe(tiny, hook_name("resid_post", 0))
    r = patch_pair(tiny, wrong, right, probe, layers=[0])
    assert torch.isfinite(torch.tensor(r.clean_probe_score))
    present = [n for n in ALIGNED_POSITIONS if aligned_position(n, right) is not None]
    assert present == [n for n in ALIGNED_POSITIONS if n != "after_exact"]
    got = [bool(torch.isfinite(r.probe_score[0, j])) for j in range(len(ALIGNED_POSITIONS))]
    assert got == [n in present for n in ALIGNED_POSITIONS]
