"""Probe-guided answer choice (`tl-truth correct`) on tiny random models.

The core claim: where the probe is perfect, its choice among forced candidates is right even
though the model's own likelihood ranks a wrong candidate first. Also: the candidate set holds
the gold when it is in the likelihood top k; free-form candidates branch on the top first
tokens; the job reads a run, refuses another model, resumes from its checkpoint and writes
correction.json with its schema; the CLI names the fix on bad input.
"""

from __future__ import annotations

import json

import pytest
import torch

import tl_truth as tt
from tl_truth import cli
from tl_truth.answers.positions import resolve_positions
from tl_truth.probing.activations import capture_batch
from tl_truth.studies import Resampling, SampleSet, correction
from tl_truth.studies.candidates import continuation_logprobs
from tl_truth.studies.correction_job import correct_job
from tl_truth.studies.correction_result import ROWS_FILE
from tl_truth.testing import BACKENDS, tiny_hf, tiny_model

HOOK = "blocks.1.hook_resid_post"
VOCAB = ("Paris", "Lyon", "Rome", "Tokyo", "Berlin")
TEXTS = ("What is the capital of France?", "In which country is Tokyo?", "Name a city.")


def toy(golds, vocab=VOCAB) -> tt.QADataset:
    qs = [
        tt.make_question(str(i), t, g, "toy", "factual")
        for i, (t, g) in enumerate(zip(TEXTS, golds, strict=True))
    ]
    return tt.QADataset("toy", qs, candidates=vocab)


def greedy(model, ds, max_new=4):
    cfg = tt.GenerationConfig(max_new_tokens=max_new)
    return tt.answer_questions(model, ds, cfg, extract_with_model=False, progress=False).records


def flat_probe(model, position="exact_last") -> tt.Probe:
    d = model.cfg.d_model
    ones, zeros = torch.ones(d), torch.zeros(d)
    info = tt.model_info(model).to_dict()
    return tt.Probe("mean_diff", ones, 0.0, zeros, ones, hook=HOOK, position=position, model=info)


def choose(model, ds, records, probe, **kw) -> tt.CorrectionResult:
    kw = {"k": 5, "max_new_tokens": 6, "n_boot": 50, "progress": False, **kw}
    return tt.probe_guided_choice(model, ds, records, probe, **kw)


# -- the library -------------------------------------------------------------------------------


@pytest.mark.backend
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_continuation_logprobs_equal_a_full_forward(arch, backend):
    model = tiny_model(arch, backend)
    context = [0, 25, 31, 40, 52]
    conts = [[60], [61, 62, 63], [70, 71], [80, 81, 82, 83]]
    _, sums = continuation_logprobs(model, context, conts, batch_size=3)
    for cont, got in zip(conts, sums, strict=True):
        with torch.no_grad():
            logp = model(torch.tensor([context + cont]))[0].float().log_softmax(-1)
        want = sum(float(logp[len(context) - 1 + j, t]) for j, t in enumerate(cont))
        assert got == pytest.approx(want, abs=1e-4)


def test_a_perfect_probe_picks_the_right_candidate_where_likelihood_does_not():
    model = tiny_model("llama")
    first_ds = toy(["Paris"] * 3)
    records = greedy(model, first_ds)
    dry = choose(model, first_ds, records, flat_probe(model))
    # the gold of each question is its *second* most likely candidate: logit_choice is wrong
    golds = [row["candidates"][1]["text"] for row in dry.rows]
    ds = toy(golds)
    # a probe that is perfect on these forced answers: 15 points in 32 dimensions, fitted exactly
    cands = [
        {**c, "prompt_token_ids": r["prompt_token_ids"], "gold": g}
        for row, r, g in zip(dry.rows, records, golds, strict=True)
        for c in row["candidates"]
    ]
    pos = resolve_positions(["exact_last"], cands)
    seqs = [c["prompt_token_ids"] + c["answer_token_ids"] for c in cands]
    X = capture_batch(model, seqs, pos, [HOOK])[:, 0, 0].double()
    y = torch.tensor([1.0 if c["text"] == c["gold"] else -1.0 for c in cands], dtype=X.dtype)
    w = torch.linalg.lstsq(X, y[:, None]).solution[:, 0]
    assert torch.allclose(X @ w, y, atol=1e-6)
    d = model.cfg.d_model
    probe = tt.Probe(
        "logistic", w, 0.0, torch.zeros(d), torch.ones(d), hook=HOOK, position="exact_last",
        model=tt.model_info(model).to_dict(),
    )  # fmt: skip

    res = choose(model, ds, records, probe)
    assert [row["candidates"][row["probe_choice"]]["text"] for row in res.rows] == golds
    assert res.accuracy["probe_choice"]["value"] == 1.0
    assert res.accuracy["logit_choice"]["value"] == 0.0
    assert res.accuracy["oracle"]["value"] == 1.0
    assert res.differences["probe_choice_minus_logit_choice"]["value"] == 1.0
    assert res.accuracy["sample_selection"] is None and "no samples" in res.sample_selection_reason
    assert res.transitions["probe_choice"] == {"recovered": 3, "broken": 0}
    assert res.n_probe_ties == res.n_probe_fallback == 0


def test_candidates_hold_the_gold_when_it_is_in_the_likelihood_top_k():
    model = tiny_model("llama")
    ds = toy(["Paris", "Tokyo", "Berlin"])
    records = greedy(model, ds)
    full = choose(model, ds, records, flat_probe(model), k=len(VOCAB))
    top = choose(model, ds, records, flat_probe(model), k=2)
    tok = model.tokenizer
    for row_full, row_top, r in zip(full.rows, top.rows, records, strict=True):
        ranked = [c["text"] for c in row_full["candidates"]]
        assert sorted(ranked) == sorted(VOCAB)  # every vocabulary entry, most likely first
        logps = [c["logprob"] for c in row_full["candidates"]]
        assert logps == sorted(logps, reverse=True)
        assert [c["text"] for c in row_top["candidates"]] == ranked[:2]
        gold_rank = ranked.index(row_full["gold"])
        assert any(c["correct"] for c in row_top["candidates"]) == (gold_rank < 2)
        for c in row_full["candidates"]:  # the exact-answer tokens are the candidate's
            s, e = c["exact_answer_token_span"]
            ids = r["prompt_token_ids"] + c["answer_token_ids"]
            assert c["text"] in tok.decode(ids[s:e])
            assert c["correct"] == (c["text"] == row_full["gold"])


def test_candidates_branch_at_the_greedy_exact_answer():
    from tl_truth.answers.generation import Generation, tokenize_prompts
    from tl_truth.answers.prompts import QA
    from tl_truth.answers.run import build_record

    model = tiny_model("llama")
    tok = model.tokenizer
    ds = toy(["Paris", "Tokyo", "Berlin"])
    records = []
    for q in ds.questions:  # a greedy answer as the model might have written it
        prompt = QA.render(tok, q.question)
        (ids,) = tokenize_prompts(tok, [prompt], QA)
        text = "The capital is Lyon."
        answer_ids = tok(text, add_special_tokens=False).input_ids
        gen = Generation(prompt, ids, answer_ids, tok.decode(answer_ids), [0.0] * 5, "eos")
        exact = tt.find_exact_answer(q, gen.text, candidates=VOCAB)
        records.append(build_record(q, gen, tok, exact, tt.grade(q, gen.text)))
    res = choose(model, ds, records, flat_probe(model), k=3)
    assert res.coverage["slot_at_exact_answer"] == 1.0
    for row, r in zip(res.rows, records, strict=True):
        assert row["slot"] == "exact" and row["prefix"].rstrip() == "The capital is"
        for c in row["candidates"]:
            assert c["answer"] == f"The capital is {c['text']}"  # exact_last: nothing after
            s, e = c["exact_answer_token_span"]
            full = r["prompt_token_ids"] + c["answer_token_ids"]
            assert tok.decode(full[s:e]).strip() == c["text"]
    start = choose(model, ds, records, flat_probe(model), k=3, slot="start")
    assert {row["slot"] for row in start.rows} == {"start"}
    assert all(c["answer"] == c["text"] for row in start.rows for c in row["candidates"])


def test_free_form_candidates_branch_on_the_top_first_tokens():
    model = tiny_model("llama")
    ds = toy(["Paris", "Japan", "Rome"], vocab=())  # no vocabulary: free-form
    records = greedy(model, ds, max_new=6)
    res = choose(model, ds, records, flat_probe(model), k=3, slot="start", stop_at_newline=True)
    for row, r in zip(res.rows, records, strict=True):
        cands = row["candidates"]
        assert row["kind"] == "free_form" and 1 <= len(cands) <= 3
        assert [c["logprob"] for c in cands] == sorted((c["logprob"] for c in cands), reverse=True)
        firsts = [c["answer_token_ids"][0] for c in cands]
        assert len(set(firsts)) == len(firsts)
        # the most likely first token, greedily completed, is the greedy answer itself
        assert r["answer"] in [c["answer"] for c in cands]


def test_a_probe_before_the_candidate_ties_and_the_more_likely_candidate_wins():
    model = tiny_model("llama")
    ds = toy(["Paris", "Tokyo", "Berlin"])
    res = choose(model, ds, greedy(model, ds), flat_probe(model, "last_prompt"), k=3)
    assert res.n_probe_ties == res.n == 3
    assert all(row["probe_choice"] == row["logit_choice"] == 0 for row in res.rows)
    assert "several candidates with the best probe score" in res.to_markdown()


# -- the job and the CLI -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-llama")
    hf, tok = tiny_hf("llama")
    hf.save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def loaded(tiny_dir):
    return tt.load_model(str(tiny_dir))


def make_run(model, out, n=24, position="first_answer"):
    """A `tl-truth run` directory by hand: a random model answers nothing right, so the labels
    are planted (every other answer "correct") for the probe to have two classes."""
    ds = tt.load_questions("capitals", limit=n)
    run = tt.answer_questions(
        model, ds, tt.GenerationConfig(max_new_tokens=4), extract_with_model=False, progress=False
    )
    for i, r in enumerate(run.records):
        r["correct"] = i % 2 == 0
    run.save(out)
    tt.capture(model, run.records, out / "activations", [HOOK], [position], progress=False)
    cell = {"hook": HOOK, "layer": 1, "position": position}
    doc = {"model": tt.model_info(model).to_dict(), "dataset": "capitals", "best": cell}
    (out / "report.json").write_text(json.dumps(doc))
    return run


def options(out, **kw):
    return tt.RunOptions.for_command("correct", out=str(out), quiet=True, **kw)


def test_cli_writes_correction_json_with_its_schema(tiny_dir, loaded, tmp_path):
    make_run(loaded, tmp_path / "run")
    out = tmp_path / "correct"
    argv = ["correct", "--from-run", str(tmp_path / "run"), "--model", str(tiny_dir)]
    argv += ["--out", str(out), "--limit", "3", "--k", "2", "--n-boot", "20", "--quiet"]
    assert cli.main(argv) == 0
    doc = json.loads((out / "correction.json").read_text())
    assert doc["n"] == 3 and doc["k"] == 2
    assert set(doc["accuracy"]) == {
        "greedy", "logit_choice", "probe_choice", "sample_selection", "oracle"
    }  # fmt: skip
    for name in ("greedy", "logit_choice", "probe_choice", "oracle"):
        block = doc["accuracy"][name]
        assert set(block) >= {"value", "ci"} and len(block["ci"]) == 2
        assert 0 <= block["ci"][0] <= block["value"] <= block["ci"][1] <= 1
    assert doc["accuracy"]["sample_selection"] is None and doc["sample_selection_reason"]
    assert {"probe_choice_minus_greedy", "probe_choice_minus_logit_choice"} <= set(
        doc["differences"]
    )
    assert doc["probe"] == {"hook": HOOK, "layer": 1, "position": "first_answer"}
    assert doc["coverage"]["oracle"] >= doc["accuracy"]["probe_choice"]["value"]
    rows = (out / ROWS_FILE).read_text().splitlines()
    assert len(rows) == 3 and all(json.loads(x)["split"] == "test" for x in rows)
    assert (out / "correction.md").exists() and (out / "correction.png").exists()
    assert not (out / "correct.ckpt.jsonl").exists()  # finished: the checkpoint is gone
    back = tt.CorrectionResult.load(out)
    assert back.n == 3 and len(back.rows) == 3


def test_cli_without_a_report_names_the_fix(tmp_path, capsys):
    assert cli.main(["correct", "--from-run", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "has no report.json" in err and "tl-truth run" in err
    assert cli.main(["correct", "--out", str(tmp_path / "o")]) == 2
    assert "--from-run" in capsys.readouterr().err


def test_a_run_of_another_model_is_refused_naming_the_flags(loaded, tmp_path):
    make_run(loaded, tmp_path / "run")
    other = tiny_model("gpt2")
    with pytest.raises(ValueError, match=r"load the run's model: --model .* --backend bridge"):
        correct_job(options(tmp_path / "o"), from_run=tmp_path / "run", model=other)


def test_sample_selection_reads_the_samples_probe_scores(loaded, tmp_path):
    run = make_run(loaded, tmp_path / "run")
    test = [r for r in run.records if r["split"] == "test"][:3]
    sets = []
    for i, g in enumerate(test):
        right = {**g.to_dict(), "answer": g["gold"], "correct": True, "category": "correct"}
        wrong = {**g.to_dict(), "answer": "Nowhere", "correct": False, "category": "incorrect"}
        right["probe_score"], wrong["probe_score"] = (0.9, 0.5) if i % 2 == 0 else (0.1, 0.5)
        right["sample_index"], wrong["sample_index"] = 0, 1
        sets.append(SampleSet(g.to_dict(), [right, wrong]))
    meta = {"probe": {"hook": HOOK, "position": "first_answer"}}
    samples = Resampling(sets, meta).save(tmp_path / "samples")
    cfg = tt.CorrectConfig(k=2, n_boot=20)
    res = correct_job(
        options(tmp_path / "o", limit=3), cfg, tmp_path / "run", samples, model=loaded
    )
    picked = [row["correct"] for row in res.rows]
    assert res.n == len(test) == len(picked)
    assert res.accuracy["sample_selection"]["value"] == pytest.approx(
        sum(i % 2 == 0 for i in range(len(test))) / len(test)
    )
    assert "probe_choice_minus_sample_selection" in res.differences
    assert res.sample_selection_reason is None


def test_a_killed_job_resumes_from_its_checkpoint(loaded, tmp_path, monkeypatch):
    make_run(loaded, tmp_path / "run")
    cfg = tt.CorrectConfig(k=2, n_boot=20)
    opts = {"batch_size": 4, "limit": 4}  # two batches of two questions
    ref = correct_job(options(tmp_path / "ref", **opts), cfg, tmp_path / "run", model=loaded)
    assert ref.n == 4
    real = correction._correct_batch
    calls = []

    def dies_on_the_second(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real(*a, **kw)

    monkeypatch.setattr(correction, "_correct_batch", dies_on_the_second)
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        correct_job(options(out, **opts), cfg, tmp_path / "run", model=loaded)
    assert (out / "correct.ckpt.jsonl").exists()
    calls.clear()
    monkeypatch.setattr(
        correction, "_correct_batch", lambda *a, **kw: calls.append(1) or real(*a, **kw)
    )
    res = correct_job(options(out, **opts), cfg, tmp_path / "run", model=loaded)
    assert len(calls) == 1  # the first batch came from the checkpoint
    assert res.rows == ref.rows
    assert res.to_dict() | {"meta": {}} == ref.to_dict() | {"meta": {}}
