"""`tl-truth steer --directions ...` end to end on a tiny model and a synthetic run: the
steering.json schema, the families it fits, and test labels that never reach a choice."""

from __future__ import annotations

import copy
import json

import pytest

from tl_truth import cli
from tl_truth.answers.generation import GenerationConfig
from tl_truth.answers.run import answer_questions
from tl_truth.config import ProbeConfig, RunOptions, SteeringConfig
from tl_truth.data.load import load_questions
from tl_truth.models import model_info
from tl_truth.probing.activations import capture
from tl_truth.studies import job_setup
from tl_truth.studies.intervention_jobs import steer_job
from tl_truth.studies.resampling import Resampling, SampleSet

N = 32
FAMILIES = "probe,mass_mean,contrastive,heads"


def write_dataset(path, poison: bool = False, golds: dict | None = None):
    """N sums questions; `poison` replaces every test question's gold (by id) from `golds`."""
    ds = load_questions(
        [
            {"id": str(i), "question": f"What is {i} + 1?", "answer": str(i + 1), "task": "sums"}
            for i in range(N)
        ]
    )
    rows = []
    for q in ds.questions:
        gold = q.gold
        if poison and q.split == "test":
            gold = (golds or {}).get(q.id) or f"not {q.gold}"
        rows.append({"id": q.id, "question": q.question, "answer": gold, "task": "sums"})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def make_run(model, run_dir, dataset: str, flip_test: bool = False):
    """A run on the tiny model whose labels are planted (`id` even = right) and whose exact
    answer is the first answer token; `flip_test` flips every test label."""
    ds = load_questions(dataset)
    run = answer_questions(
        model, ds, GenerationConfig(max_new_tokens=2), extract_with_model=False, progress=False
    )
    for r in run.records:
        r["correct"] = (int(r["id"]) % 2 == 0) != (flip_test and r["split"] == "test")
        r["category"] = "correct" if r["correct"] else "incorrect"
        start = len(r["prompt_token_ids"])
        r["exact_answer_token_span"] = [start, start + 1] if r["answer_token_ids"] else None
    run.save(run_dir)
    run.summary["_dir"] = str(run_dir)  # where the tests find it
    hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    capture(model, run.records, run_dir / "activations", hooks, ["exact_last"], progress=False)
    best = {"hook": hooks[1], "layer": 1, "position": "exact_last"}
    report = {"best": best, "selected": {"any": best}, "model": model_info(model).to_dict()}
    (run_dir / "report.json").write_text(json.dumps(report))
    return run


def make_samples(run, out):
    """For every question answered wrong: one right sample (another first token)."""
    sets = []
    for r in run.records:
        if r["correct"] or not r["answer_token_ids"]:
            continue
        right = copy.deepcopy(dict(r))
        right.update(correct=True, category="correct", sample_index=1)
        right["answer_token_ids"] = [
            (right["answer_token_ids"][0] + 7) % 200,
            *right["answer_token_ids"][1:],
        ]
        sets.append(SampleSet(dict(r), [right]))
    return Resampling(sets, {}).save(out)


def _setup(root, poison_with=None):
    """The dataset, run and samples in `root`; `poison_with` (a clean run): every test label
    flipped and every test gold answer replaced by the tiny model's own answer in that run (so
    the unsteered test accuracy moves)."""
    from tl_truth.testing import tiny_model

    model = tiny_model("llama")
    root.mkdir(parents=True, exist_ok=True)
    data = write_dataset(root / "sums.jsonl")
    if poison_with is not None:
        golds = {r["id"]: r["answer"].strip() for r in poison_with.records}
        data = write_dataset(root / "poisoned.jsonl", poison=True, golds=golds)
    run = make_run(model, root / "run", data, flip_test=poison_with is not None)
    return model, data, run, make_samples(run, root / "samples")


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    return _setup(tmp_path_factory.mktemp("families"))


def test_cli_steer_directions_writes_the_schema(tiny_setup, tmp_path, monkeypatch):
    model, data, run, samples = tiny_setup
    monkeypatch.setattr(job_setup, "load_model_for", lambda options: model)
    out = tmp_path / "steer"
    argv = [
        "steer",
        "--from-run",
        str(run.summary["_dir"]),
        "--samples",
        str(samples),
        "--dataset",
        data,
        "--directions",
        FAMILIES,
        "--limit",
        "4",
        "--n-validation",
        "6",
        "--family-alphas",
        "probe=2,8",
        "--alphas",
        "1",
        "--ks",
        "1,3",
        "--n-random",
        "1",
        "--n-boot",
        "50",
        "--max-new-tokens",
        "2",
        "--quiet",
        "--out",
        str(out),
    ]
    assert cli.main(argv) == 0
    doc = json.loads((out / "steering.json").read_text())
    assert doc["selected_on"] == "validation"
    assert doc["n_validation"] == 6 and doc["n_test"] == 4 and doc["skipped"] == {}
    assert set(doc["families"]) == set(FAMILIES.split(","))
    assert doc["alphas"] == {
        "probe": [2.0, 8.0],
        "mass_mean": [1.0],
        "contrastive": [1.0],
        "heads": [1.0],
    }
    for name, fam in doc["families"].items():
        sel, test = fam["selected"], fam["test"]
        assert {"alpha", "push_norm", "scope", "validation_accuracy", "layer"} <= set(sel)
        assert sel["push_norm"] > 0
        assert sel in fam["validation"]
        for key in ("accuracy", "ci", "recovery_rate", "recovery_ci", "break_rate", "break_ci"):
            assert key in test
        assert test["random"]["n"] == 1 and "accuracy_mean" in test["random"]
        assert set(test["gain_over_unsteered"]) == {"value", "ci"}
        assert set(test["gain_over_random"]) == {"value", "ci"}
        if name == "heads":
            assert sel["k"] in (1, 3) and sel["layer"] is None and len(sel["heads"]) == sel["k"]
            assert len(fam["validation"]) == 2  # k in {1, 3} x alpha 1
        else:
            assert sel["layer"] == 1
            assert len(fam["validation"]) == (2 if name == "probe" else 1)
    # all validation accuracies tie on a random model: the smaller alpha is chosen
    assert doc["families"]["probe"]["selected"]["alpha"] == 2.0
    assert {"test_accuracy", "test_ci", "validation_accuracy"} <= set(doc["baseline"])
    assert doc["validation_questions"] and doc["head_ranking"]
    assert (out / "steering.png").stat().st_size > 1000
    assert "Steering families" in (out / "steering.md").read_text()


def test_contrastive_without_pairs_is_skipped_with_why(tiny_setup, tmp_path):
    model, data, run, _ = tiny_setup
    empty = Resampling([], {}).save(tmp_path / "none")
    opts = RunOptions(dataset=data, limit=2, out=str(tmp_path / "o"), max_new_tokens=2, quiet=True)
    res = steer_job(
        opts,
        SteeringConfig(directions="contrastive,mass_mean", alphas="1", n_random=1, n_validation=4),
        from_run=run.summary["_dir"],
        samples=empty,
        model=model,
        probing=ProbeConfig(n_boot=20, p_true=False),
    )
    assert "no pairs" in res.skipped["contrastive"] and list(res.families) == ["mass_mean"]
    assert "contrastive: skipped (no pairs" in res.conclusion()


def test_poisoned_test_labels_change_no_choice(tiny_setup, tmp_path):
    """Flip every test label of the run and replace every test gold answer: the fitted
    directions (their SDs are in the validation table), the head ranking, the validation
    table and every selected setting stay the same."""

    def steer(setup, out):
        model, data, run, samples = setup
        opts = RunOptions(dataset=data, limit=4, out=str(out), max_new_tokens=2, quiet=True)
        cfg = SteeringConfig(
            directions=FAMILIES, alphas="1", head_ks="2", n_random=0, n_validation=6
        )
        return steer_job(
            opts,
            cfg,
            from_run=run.summary["_dir"],
            samples=samples,
            model=model,
            probing=ProbeConfig(n_boot=20, p_true=False),
        )

    a = steer(tiny_setup, tmp_path / "clean")
    b = steer(_setup(tmp_path / "poisoned", poison_with=tiny_setup[2]), tmp_path / "poisoned_out")
    assert a.baseline["test_accuracy"] != b.baseline["test_accuracy"]  # the poison is real
    assert a.meta["validation_questions"] == b.meta["validation_questions"]
    assert a.meta["head_ranking"] == b.meta["head_ranking"]
    assert set(a.families) == set(b.families) == set(FAMILIES.split(","))
    for name in a.families:
        assert a.families[name]["selected"] == b.families[name]["selected"], name
        assert a.families[name]["validation"] == b.families[name]["validation"], name
