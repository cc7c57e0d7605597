import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from tl_truth.answers.prompts import CHAT, QA
from tl_truth.probing import baselines
from tl_truth.probing.baselines import (
    evaluate_baselines,
    last_token_logits,
    letter_token_ids,
    logit_scores,
    p_true_prompts,
    p_true_scores,
    render_p_true_prompt,
)


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny matmuls gain nothing from threads, and on a busy machine 2 threads are ~100x slower.
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _record(probs, span=None, n_prompt=3, question="What is 12 + 30?", answer="42"):
    return {
        "question": question,
        "answer": answer,
        "correct": True,
        "prompt_token_ids": list(range(n_prompt)),
        "answer_token_ids": list(range(100, 100 + len(probs))),
        "token_logprobs": [math.log(p) for p in probs],
        "exact_answer_token_span": span,
    }


# ---------------------------------------------------------------------------------------------
# Logit-based scores


def test_logit_scores_exact_values():
    # prompt has 3 tokens: answer token i sits at full position 3 + i
    recs = [_record([0.5, 0.25, 1.0, 0.75], span=[4, 6]), _record([0.2], span=[3, 4])]
    s = logit_scores(recs)
    assert set(s) == set(baselines.LOGIT_SCORES)
    np.testing.assert_allclose(s["logits_mean"], [0.625, 0.2])
    np.testing.assert_allclose(s["logits_min"], [0.25, 0.2])
    np.testing.assert_allclose(s["logits_max"], [1.0, 0.2])
    np.testing.assert_allclose(s["logits_mean_exact"], [0.625, 0.2])  # (0.25 + 1.0) / 2
    np.testing.assert_allclose(s["logits_min_exact"], [0.25, 0.2])
    np.testing.assert_allclose(s["logits_max_exact"], [1.0, 0.2])


def test_logit_scores_nan_without_exact_answer_or_empty_answer():
    recs = [_record([0.5, 0.5], span=None), _record([], span=None), _record([0.9], span=[3, 3])]
    s = logit_scores(recs)
    assert s["logits_mean"][0] == pytest.approx(0.5)
    assert np.isnan(s["logits_mean"][1]) and np.isnan(s["logits_min"][1])
    for k in ("logits_mean_exact", "logits_min_exact", "logits_max_exact"):
        assert np.isnan(s[k]).all()
    assert s["logits_max"][2] == pytest.approx(0.9)


def test_logit_scores_reject_span_outside_answer():
    with pytest.raises(ValueError, match="outside the answer"):
        logit_scores([_record([0.5], span=[0, 1])])


# ---------------------------------------------------------------------------------------------
# p(True)


def test_p_true_prompts_both_orders():
    body_t, prefix = p_true_prompts("Q?", "ans", true_first=True)
    body_f, _ = p_true_prompts("Q?", "ans", true_first=False)
    assert (
        body_t
        == "Question: Q?\nProposed answer: ans\nIs the proposed answer:\n (A) True\n (B) False"
    )
    assert body_f.endswith(" (A) False\n (B) True")
    assert prefix == "The proposed answer is: ("
    plain = render_p_true_prompt(None, QA, "Q?", "ans", True)
    assert plain == body_t + "\nThe proposed answer is: ("


def test_p_true_chat_prompt_puts_prefix_in_assistant_turn():
    class Tok:
        chat_template = "x"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            assert add_generation_prompt and not tokenize
            return f"<user>{messages[-1]['content']}</user><assistant>"

    text = render_p_true_prompt(Tok(), CHAT, "Q?", "ans", False)
    body, prefix = p_true_prompts("Q?", "ans", False)
    assert text == f"<user>{body}</user><assistant>{prefix}"


def _recs_for_tiny():
    return [
        _record([0.5], question="What is the capital of France?", answer="Paris."),
        _record([0.5], question="What is 12 + 30?", answer="12 + 30 = 42."),
        _record([], question="In which country is Tokyo?", answer=""),  # empty answer
        _record([0.5], question="The quick brown fox?", answer="It jumps over the lazy dog."),
        _record([0.5], question="Q", answer="A"),
    ]


def test_p_true_scores_shape_range_orders_and_batching(tiny, monkeypatch):
    recs = _recs_for_tiny()
    seen = []
    render = baselines.render_p_true_prompt

    def spy(tok, fmt, q, a, true_first):
        seen.append((q, true_first))
        return render(tok, fmt, q, a, true_first)

    monkeypatch.setattr(baselines, "render_p_true_prompt", spy)
    batched = p_true_scores(tiny, recs, batch_size=3, progress=False)
    assert batched.shape == (len(recs),)
    assert np.isfinite(batched).all() and ((batched >= 0) & (batched <= 1)).all()
    assert sorted(seen) == sorted((r["question"], o) for r in recs for o in (True, False))

    single = p_true_scores(tiny, recs, batch_size=1, progress=False)
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_left_padded_logits_match_unpadded(tiny):
    # p(True) of a random tiny model sits near 0.5, so check padding on the logits themselves:
    # a forward without the mask is off by > 5e-3 here on every architecture.
    from tl_truth.answers.generation import tokenize_prompts
    from tl_truth.answers.prompts import default_format

    tok, fmt = tiny.tokenizer, default_format(tiny)
    texts = [
        render_p_true_prompt(tok, fmt, r["question"], r["answer"], true_first)
        for r in _recs_for_tiny()
        for true_first in (True, False)
    ]
    ids = tokenize_prompts(tok, texts, fmt)
    assert len({len(i) for i in ids}) > 1  # the batch really is padded
    batched = last_token_logits(tiny, ids, tok.pad_token_id)
    for row, one in zip(batched, ids, strict=True):
        np.testing.assert_allclose(
            row, last_token_logits(tiny, [one], tok.pad_token_id)[0], atol=1e-5
        )


def test_p_true_scores_is_mean_of_true_letter_over_orders(tiny):
    """Each answer's score, from batches sorted by length with shared stems run once, equals
    two plain unpadded forwards of its own prompts, in the records' order."""
    import torch

    from tl_truth.answers.generation import tokenize_prompts
    from tl_truth.answers.prompts import default_format

    recs = _recs_for_tiny()
    tok, fmt = tiny.tokenizer, default_format(tiny)
    a, b = letter_token_ids(tok)
    refs = []
    for rec in recs:
        ref = []
        for true_first in (True, False):
            text = render_p_true_prompt(tok, fmt, rec["question"], rec["answer"], true_first)
            ids = tokenize_prompts(tok, [text], fmt)[0]
            assert ids.count(tok.bos_token_id) <= 1
            with torch.no_grad():
                logits = tiny(torch.tensor([ids]))[0, -1].float()
            p_a = torch.softmax(logits[[a, b]], -1)[0].item()
            ref.append(p_a if true_first else 1 - p_a)
        refs.append(np.mean(ref))
    got = p_true_scores(tiny, recs, batch_size=3, progress=False)
    # A random tiny model's p(True) sits within 1e-4 of 0.5, so compare at 5e-7: answers differ
    # from each other by more than that, and a shuffled order would show.
    np.testing.assert_allclose(got, refs, atol=5e-7, rtol=0)
    assert np.abs(np.subtract.outer(refs, refs)).max() > 4e-6


def test_letter_tokens_must_be_single():
    class Tok:
        def encode(self, text, add_special_tokens):
            return [1, 2]

    with pytest.raises(ValueError, match="single token"):
        letter_token_ids(Tok())


# ---------------------------------------------------------------------------------------------
# Evaluation


def test_evaluate_baselines_perfect_nan_and_mask():
    rng = np.random.default_rng(0)
    labels = rng.random(60) < 0.5
    labels[:2] = [True, False]
    test = np.arange(60) >= 20
    noisy = labels + rng.normal(0, 1.0, 60)
    with_nan = labels.astype(float)
    with_nan[[25, 30, 35]] = np.nan
    res = evaluate_baselines(
        {"perfect": labels.astype(float), "nan": with_nan, "noisy": noisy, "inverted": -noisy},
        labels,
        test,
        n_boot=200,
    )
    assert res["perfect"]["auc"] == 1.0 and res["perfect"]["n"] == 40
    assert res["perfect"]["ci"] == [1.0, 1.0]
    assert res["nan"]["auc"] == 1.0 and res["nan"]["n"] == 37
    ref = roc_auc_score(labels[test], noisy[test])
    assert res["noisy"]["auc"] == pytest.approx(ref)
    assert res["inverted"]["auc"] == pytest.approx(1 - ref)
    lo, hi = res["noisy"]["ci"]
    assert lo <= ref <= hi and 0 <= lo < hi <= 1


def test_evaluate_baselines_ties_and_single_class():
    labels = np.array([1, 0, 1, 0, 1], bool)
    tied = np.array([0.5, 0.5, 0.7, 0.2, 0.5])
    res = evaluate_baselines({"tied": tied, "const": np.zeros(5)}, labels, n_boot=50)
    assert res["tied"]["auc"] == pytest.approx(roc_auc_score(labels, tied))
    assert res["const"]["auc"] == pytest.approx(0.5)
    one_class = evaluate_baselines({"s": tied}, np.ones(5, bool), n_boot=50)["s"]
    assert math.isnan(one_class["auc"]) and one_class["n"] == 5
