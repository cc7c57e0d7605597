"""`samples_in`, the sampling step `tl-truth resample` and the contrastive steering family share:
a call that dies mid-way resumes from its per-batch checkpoints to the samples an uninterrupted
call draws, the checkpoints go once samples.jsonl is saved, and finished samples are reused."""

from __future__ import annotations

import copy

import pytest

import tl_truth.checkpoint as checkpoint
from tl_truth.answers.generation import GenerationConfig
from tl_truth.answers.run import answer_questions
from tl_truth.config import ResampleConfig, RunOptions
from tl_truth.data.questions import QADataset, make_question
from tl_truth.studies import family_jobs, sample_jobs
from tl_truth.studies.sample_jobs import RESAMPLE_CHECKPOINTS, samples_in
from tl_truth.testing import tiny_model


class Died(RuntimeError):
    """Stands in for SIGKILL: raised right after a batch was appended to its checkpoint."""


@pytest.fixture(scope="module")
def setup():
    model = tiny_model("llama")
    qs = [make_question(str(i), f"What is {i} + 1?", str(i + 1), "sums", "math") for i in range(6)]
    dataset = QADataset("sums", qs)
    run = answer_questions(
        model, dataset, GenerationConfig(max_new_tokens=4), extract_with_model=False,
        progress=False,
    )  # fmt: skip
    options = RunOptions.for_command(
        "resample", max_new_tokens=4, batch_size=4, model_extract=False, quiet=True
    )
    return model, dataset, run, options, ResampleConfig(k=3, temperature=1.0, seed=7)


def _texts(res):
    return [[(r["answer"], r["sample_index"]) for r in s.samples] for s in res.sets]


def test_a_killed_call_resumes_to_the_uninterrupted_samples(setup, tmp_path, monkeypatch):
    model, dataset, run, options, resampling = setup
    whole = samples_in(tmp_path / "whole", model, dataset, run, options, resampling)

    calls = {"n": 0}

    def die_after_first_batch(stage):
        calls["n"] += 1
        if calls["n"] == 2:
            raise Died(stage)

    monkeypatch.setattr(checkpoint, "maybe_die", die_after_first_batch)
    out = tmp_path / "killed"
    with pytest.raises(Died):
        samples_in(out, model, dataset, run, options, resampling)
    assert not (out / "samples.jsonl").exists()
    kept = sum(len(p.read_text().splitlines()) for p in out.glob("*.ckpt/*.jsonl"))
    assert kept >= 2  # batches finished before the kill are on disk

    monkeypatch.setattr(checkpoint, "maybe_die", lambda stage: None)
    resumed = samples_in(out, model, dataset, run, options, resampling)
    assert _texts(resumed) == _texts(whole)
    assert (out / "samples.jsonl").exists()
    assert not any((out / sub).exists() for sub in RESAMPLE_CHECKPOINTS)


def test_finished_samples_are_reused_not_redrawn(setup, tmp_path, monkeypatch):
    model, dataset, run, options, resampling = setup
    first = samples_in(tmp_path, model, dataset, run, options, resampling)

    def no_resample(*a, **k):
        raise AssertionError("finished samples were drawn again")

    monkeypatch.setattr(sample_jobs, "resample", no_resample)
    again = samples_in(tmp_path, model, dataset, run, options, resampling)
    assert _texts(again) == _texts(first)
    # other settings are not silently mixed with the finished ones
    with pytest.raises(ValueError):
        samples_in(tmp_path, model, dataset, run, options, ResampleConfig(k=2, seed=7))


def test_the_contrastive_family_samples_through_it(setup, tmp_path, monkeypatch):
    model, dataset, run, options, resampling = setup
    seen = {}

    def fake(out, model_, subset, run_, options_, resampling_):
        seen["out"], seen["n"] = out, len(subset)
        return sample_jobs.Resampling([])

    monkeypatch.setattr(family_jobs, "samples_in", fake)
    options = RunOptions.for_command("steer", out=str(tmp_path), quiet=True)
    run = copy.deepcopy(run)
    for r in run.records[:3]:  # answered wrong with a located exact answer: a pair can come
        r["correct"], r["exact_answer_token_span"] = False, [len(r["prompt_token_ids"])] * 2
    for r in run.records[3:]:
        r["correct"] = True
    fit = {(r["task"], r["id"]) for r in run.records[1:]}
    sets, where = family_jobs._contrastive_sets(
        options, resampling, None, run, dataset, fit, model, None
    )
    assert seen["n"] == 2 and sets == []  # the fit questions answered wrong
    assert where == str(tmp_path / family_jobs.CONTRASTIVE_SAMPLES_DIR) == str(seen["out"])
