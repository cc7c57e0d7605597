"""The report pipeline end to end on a tiny model (labels assigned by hand: a random model
answers nothing right), and `tl-truth run` on the real SmolLM2 on a small slice."""

import json

import pytest
import torch

from tl_truth.answers.generation import GenerationConfig
from tl_truth.answers.run import AnswerRun, answer_questions, summarize
from tl_truth.cli import main, parse_layers
from tl_truth.data.questions import QADataset, make_question
from tl_truth.probing.activations import capture
from tl_truth.probing.probe import Probe
from tl_truth.studies.main_job import probe_report, save_report

REPORT_KEYS = [
    "model",
    "dataset",
    "n_train",
    "n_test",
    "accuracy",
    "exact_answer_rate",
    "layers",
    "positions",
    "auc",
    "auc_ci_low",
    "auc_ci_high",
    "best",
    "baselines",
    "shuffled_control",
    "timings",
]


def test_report_on_tiny_model(tmp_path):
    from tiny import tiny_model

    model = tiny_model("llama", "bridge")
    qs = [
        make_question(
            str(i), f"What is {i} + {i}?", str(2 * i), "arithmetic", "arithmetic", grade="numeric"
        )
        for i in range(40)
    ]
    ds = QADataset("mini", qs)
    run = answer_questions(
        model, ds, GenerationConfig(max_new_tokens=6), extract_with_model=False, progress=False
    )
    for i, r in enumerate(run.records):  # hand-made labels so both classes exist
        r["correct"] = bool(i % 2)
        n_prompt = len(r["prompt_token_ids"])
        if r["answer_token_ids"]:  # and an exact answer: the first answer token
            r["exact_answer_token_span"] = [n_prompt, n_prompt + 1]
    run = AnswerRun(run.records, {**run.summary, **summarize(run.records, ds)})
    store = capture(model, run.records, tmp_path / "activations", progress=False)
    report = probe_report(model, run, store, n_boot=50, progress=False)
    save_report(report, tmp_path)
    data = json.loads((tmp_path / "report.json").read_text())
    assert all(k in data for k in REPORT_KEYS)
    assert len(data["auc"]) == model.cfg.n_layers and len(data["auc"][0]) == len(data["positions"])
    assert set(data["baselines"]) >= {"logits_mean", "logits_min", "p_true"}
    assert data["baselines"]["p_true"]["n"] == data["n_test"]
    md = (tmp_path / "report.md").read_text()
    assert "| method | where | AUC |" in md
    assert (tmp_path / "probe_grid.png").stat().st_size > 1000
    best = data["best"]
    assert best["position"] in ("before_exact", "exact_first", "exact_last", "after_exact")
    probe = Probe.load(tmp_path / "best_probe", expect_model=store.model)
    assert probe.hook == best["hook"]


def test_parse_layers():
    assert parse_layers("all", 4) == [0, 1, 2, 3]
    assert parse_layers("every:3", 8) == [0, 3, 6, 7]
    assert parse_layers("1,2", 4) == [1, 2]
    with pytest.raises(ValueError):
        parse_layers("9", 4)


@pytest.mark.integration
def test_cli_run_on_smollm2(tmp_path, capsys):
    out = tmp_path / "run"
    args = "run --dataset capitals --limit 48 --layers every:6 --max-new-tokens 24 "
    args += "--positions last_prompt,exact_first,exact_last,last_generated "
    args += f"--no-model-extract --n-boot 200 --quiet --out {out}"
    assert main(args.split()) == 0
    data = json.loads((out / "report.json").read_text())
    assert data["model"]["name"] == "smollm2-135m-instruct"
    assert data["layers"] == [0, 6, 12, 18, 24, 29]
    assert 0 < data["accuracy"] < 1
    for name in ("logits_mean", "logits_min_exact", "p_true"):
        auc = data["baselines"][name]["auc"]
        assert auc is None or 0 <= auc <= 1
    assert (out / "activations" / "meta.json").exists()
    assert "Report:" in capsys.readouterr().out
    # Re-running resumes: generations and shards are reused, the report is rewritten.
    shards = (out / "activations").glob("*.safetensors")
    mtimes = {p.name: p.stat().st_mtime_ns for p in shards}
    assert main([*args.split(), "--no-p-true"]) == 0
    shards = (out / "activations").glob("*.safetensors")
    assert mtimes == {p.name: p.stat().st_mtime_ns for p in shards}
    assert json.loads((out / "report.json").read_text())["baselines"].get("p_true") is None


def test_score_records_matches_grid_and_refuses_other_models(tmp_path):
    import torch
    from tiny import tiny_model

    from tl_truth.probing.probe import ProbeMismatchError
    from tl_truth.probing.scoring import score_records

    model = tiny_model("gpt2", "bridge")
    qs = [make_question(str(i), f"Name {i}?", "x", "t", "factual") for i in range(30)]
    run = answer_questions(
        model,
        QADataset("m", qs),
        GenerationConfig(max_new_tokens=4),
        extract_with_model=False,
        progress=False,
    )
    for i, r in enumerate(run.records):
        r["correct"] = bool(i % 2)
    store = capture(
        model,
        run.records,
        tmp_path / "a",
        positions=["last_prompt"],
        dtype=torch.float32,
        progress=False,
    )
    acts, valid = store.load()
    probe = Probe.from_data(
        acts[:, 1, 0],
        store.labels,
        hook=store.hooks[1],
        layer=1,
        position="last_prompt",
        model=store.model,
    )
    got = score_records(model, probe, run.records)
    torch.testing.assert_close(got, probe.predict_proba(acts[:, 1, 0]).float(), atol=1e-4, rtol=0)
    other = tiny_model("llama", "bridge")
    with pytest.raises(ProbeMismatchError, match="fingerprint"):
        score_records(other, probe, run.records)


CONTRACT = {
    "locate": str,
    "located_rate": dict,
    "controls": dict,
    "permutation": dict,
    "prr": dict,
    "accuracy_at_80_coverage": dict,
    "risk_coverage": dict,
    "beyond_artefacts": dict,
}


def test_report_has_the_controls_contract(tmp_path):
    """report.json carries every control of issue 9, on the same test examples."""
    from tiny import tiny_model

    model = tiny_model("gpt2", "bridge")
    qs = [
        make_question(str(i), f"Capital number {i}?", f"city{i % 6}", "capitals", "factual")
        for i in range(48)
    ] + [
        make_question(str(i), f"Country number {i}?", f"land{i % 5}", "city_country", "factual")
        for i in range(48)
    ]
    ds = QADataset("mini", qs)
    run = answer_questions(
        model, ds, GenerationConfig(max_new_tokens=4), extract_with_model=False, progress=False
    )
    for i, r in enumerate(run.records):  # hand-made labels and exact answers
        r["correct"] = bool(i % 3 == 0)
        r["category"] = "correct" if r["correct"] else "incorrect"
        r["exact_answer"] = f"answer {i % 7}"
        n_prompt = len(r["prompt_token_ids"])
        if r["answer_token_ids"]:
            r["exact_answer_token_span"] = [n_prompt, n_prompt + 1]
    run = AnswerRun(run.records, {**run.summary, **summarize(run.records, ds)})
    hooks = ["hook_embed", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    store = capture(model, run.records, tmp_path / "activations", hooks=hooks, progress=False)
    report = probe_report(model, run, store, n_boot=30, p_true=False, progress=False, n_perm=5)
    report.save(tmp_path)
    data = json.loads((tmp_path / "report.json").read_text())
    for key, kind in CONTRACT.items():
        assert isinstance(data[key], kind), key
    assert "hook_embed" not in data["hooks"]  # the embedding is a control, not a grid row
    c = data["controls"]
    assert set(c) >= {"answer_prior", "task_prior", "embedding", "unseen_answers", "within_answer"}
    assert c["embedding"]["hook"] == "hook_embed"
    assert c["task_prior"] is not None  # two tasks pooled
    assert set(c["within_answer"]) >= {"n_pairs", "n_groups", "auc", "ci"}
    assert set(c["unseen_answers"]) >= {"n", "n_correct", "n_incorrect", "auc"}
    assert data["permutation"]["n"] == 5 and 0 < data["permutation"]["p_value"] <= 1
    assert data["shuffled_control"]["auc"] == data["permutation"]["null_mean"]
    b = data["beyond_artefacts"]
    assert b["against"] in ("answer_prior", "task_prior", "embedding")
    assert b["auc_diff"] == pytest.approx(b["auc"] - b["against_auc"], abs=1e-3)
    assert len(b["ci"]) == 2
    assert set(data["prr"]) == set(data["accuracy_at_80_coverage"])
    assert data["per_task_auc"] and set(data["per_task_auc"]) == {"capitals", "city_country"}
    md = (tmp_path / "report.md").read_text()
    assert "Beyond artefacts" in md and "Permutation null" in md
    # a report read back from report.json keeps the controls
    from tl_truth.studies.main_job import ProbeReport

    again = ProbeReport.load(tmp_path)
    assert again.to_dict()["beyond_artefacts"]["against"] == b["against"]


def test_fused_and_two_pass_runs_give_the_same_grid(tmp_path):
    """`tl-truth run` capturing inside generation and with a second forward pass: the same
    store (to float error) and the same AUC grid (within 0.01; labels made learnable by
    taking a word of half the tiny model's own answers as their gold)."""
    import numpy as np
    from tiny import tiny_model

    from tl_truth.probing.activations import ActivationStore
    from tl_truth.studies.main_job import run_all

    model = tiny_model("llama", "bridge")
    cfg = GenerationConfig(max_new_tokens=5, batch_size=8)
    qs = [make_question(str(i), f"What is {i} + 1?", "-", "sums", "math") for i in range(32)]
    first = answer_questions(model, QADataset("sums", qs), cfg, extract_with_model=False,
                             progress=False)  # fmt: skip
    qs = [
        make_question(
            q.id,
            q.question,
            (r["answer"].split() or ["-"])[0] if i % 2 else "never said",
            "sums",
            "math",
            split="test" if i % 3 == 0 else "train",
        )
        for i, (q, r) in enumerate(zip(qs, first.records, strict=True))
    ]
    ds = QADataset("sums", qs)
    reports, stores = {}, {}
    for fused in (True, False):
        out = tmp_path / str(fused)
        reports[fused] = run_all(model, ds, out, cfg, n_boot=10, p_true=False, progress=False,
                                 extract_with_model=False, n_perm=0, fused_capture=fused)  # fmt: skip
        stores[fused] = ActivationStore.open(out / "activations").load()
    assert reports[True].capture["path"] == "fused"
    assert reports[False].capture["path"] == "two_pass"
    labels = [r["correct"] for r in AnswerRun.load(tmp_path / "True").records]
    assert 4 <= sum(labels) <= 28
    (a, va), (b, vb) = stores[True], stores[False]
    assert torch.equal(va, vb) and torch.allclose(a, b, atol=2e-3, rtol=1e-3)  # float16 store
    grid_f, grid_t = (np.asarray(reports[f].grid.auc, dtype=float) for f in (True, False))
    assert np.array_equal(np.isnan(grid_f), np.isnan(grid_t)) and not np.isnan(grid_f).all()
    assert np.nanmax(np.abs(grid_f - grid_t)) <= 0.01
    assert reports[True].timings.keys() >= {"generate_s", "capture_s", "probe_s", "baselines_s"}
    saved = json.loads((tmp_path / "True" / "report.json").read_text())
    assert (
        saved["capture"]["fused_rows"] == 32
        and "inside generation" in (tmp_path / "True" / "report.md").read_text()
    )


def test_a_resumed_or_relocated_run_captures_what_generation_did_not_record(tmp_path):
    """Generations read back from the output directory were not recorded: the two-pass
    capture serves them, and the report says so."""
    from tiny import tiny_model

    from tl_truth.studies.main_job import run_all

    model = tiny_model("llama", "bridge")
    qs = [make_question(str(i), f"What is {i} + 1?", str(i + 1), "sums", "math") for i in range(6)]
    kw = dict(n_boot=10, p_true=False, progress=False, extract_with_model=False, n_perm=0)
    cfg = GenerationConfig(max_new_tokens=3)
    first = run_all(model, QADataset("sums", qs), tmp_path, cfg, **kw)
    assert first.capture["path"] == "fused"
    moved = run_all(model, QADataset("sums", qs), tmp_path, cfg, locate="paper", **kw)
    assert (tmp_path / "activations.locate-blind" / "meta.json").exists()
    assert moved.capture == {
        "path": "two_pass",
        "fused_rows": 0,
        "two_pass_rows": 6,
        "two_pass_reasons": {"not_recorded": 6},
    }
