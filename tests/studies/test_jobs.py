"""The jobs' library pieces on synthetic stores and runs: `fit_probe_grid(store)`,
`probes_from_store`, the run reuse check and the jobs' wiring (no real model)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tl_truth.config import ProbeConfig, RunOptions
from tl_truth.data.questions import QADataset, make_question
from tl_truth.intervention.store_probes import probes_from_store
from tl_truth.probing.activations import META_FILE, STORE_VERSION, ActivationStore
from tl_truth.probing.grid import fit_probe_grid
from tl_truth.probing.probe import Probe, ProbeMismatchError
from tl_truth.studies import intervention_jobs, job_setup, jobs, run_jobs, sample_jobs
from tl_truth.studies.resampling import Resampling, SampleSet

JOB_MODULES = (jobs, job_setup, run_jobs, sample_jobs, intervention_jobs)


def patch_jobs(monkeypatch, name: str, value) -> None:
    """Replace `name` in the job modules (`tl_truth.studies.jobs` re-exports them, and each
    job looks its collaborators up in its own module)."""
    modules = [m for m in JOB_MODULES if hasattr(m, name)]
    assert modules, name
    for m in modules:
        monkeypatch.setattr(m, name, value)


D = 8
MODEL = {
    "name": "synthetic",
    "backend": "bridge",
    "processing": "hf",
    "fingerprint": "f",
    "n_layers": 2,
    "d_model": D,
    "chat": False,
}
GRID_FIELDS = ("auc", "auc_ci_low", "auc_shuffled", "auc_mean_diff", "C", "cv_auc", "n_train")


def synthetic_store(path, kind="resid_post", n=96, tasks=("a", "b")) -> ActivationStore:
    """Correctness on dimension 0 at layer 1 / `exact_last`; some rows lack `exact_first`."""
    rng = np.random.default_rng(0)
    hooks = [f"blocks.{layer}.hook_{kind}" for layer in range(2)]
    positions = ["exact_first", "exact_last"]
    acts = rng.normal(size=(n, 2, 2, D)).astype(np.float32)
    correct = np.arange(n) % 2 == 0
    acts[:, 1, 1, 0] += np.where(correct, 1.5, -1.5)
    valid = np.ones((n, 2), dtype=bool)
    valid[::7, 0] = False
    examples = [
        {
            "id": str(i),
            "task": tasks[i % len(tasks)],
            "split": "test" if i % 4 in (1, 2) else "train",
            "correct": bool(correct[i]),
            "sample_index": 0,
        }
        for i in range(n)
    ]
    acts[~valid[:, 0], :, 0] = 0.0
    meta = {
        "version": STORE_VERSION,
        "model": MODEL,
        "hooks": hooks,
        "positions": positions,
        "dtype": "float32",
        "d_model": D,
        "shard_size": n,
        "examples": examples,
        "shards": [{"file": "shard_00000.safetensors", "start": 0, "end": n}],
    }
    path.mkdir(parents=True)
    (path / META_FILE).write_text(json.dumps(meta))
    tensors = {
        "acts": torch.tensor(acts),
        "valid": torch.tensor(valid),
        "rows": torch.arange(n),
    }
    save_file(tensors, str(path / "shard_00000.safetensors"))
    return ActivationStore.open(path)


def assert_same_grid(a, b):
    assert (a.hooks, a.positions, a.layers, a.model) == (b.hooks, b.positions, b.layers, b.model)
    for name in GRID_FIELDS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=0)


def test_fit_probe_grid_from_a_store_equals_the_arrays(tmp_path):
    store = synthetic_store(tmp_path / "acts")
    acts, valid = store.load()
    train, test = store.split_mask("train"), store.split_mask("test")
    kw = dict(n_boot=20, progress=False)
    from_arrays = fit_probe_grid(
        acts,
        store.labels,
        train,
        test,
        store.hooks,
        store.positions,
        valid=valid,
        model=store.model,
        **kw,
    )
    assert_same_grid(fit_probe_grid(store, **kw), from_arrays)
    assert from_arrays.best()["hook"] == "blocks.1.hook_resid_post"


def test_fit_probe_grid_from_a_store_subset_and_rows(tmp_path):
    """Hooks/positions pick captured cells; train/test masks replace the splits (one task)."""
    store = synthetic_store(tmp_path / "acts")
    acts, valid = store.load(positions=["exact_last"])
    task_a = torch.tensor([e["task"] == "a" for e in store.examples])
    train, test = store.split_mask("train"), store.split_mask("test")
    kw = dict(n_boot=0, shuffled_control=False, progress=False)
    subset = fit_probe_grid(
        acts[task_a],
        store.labels[task_a],
        train[task_a],
        test[task_a],
        store.hooks,
        ["exact_last"],
        valid=valid[task_a],
        model=store.model,
        **kw,
    )
    masked = fit_probe_grid(
        store, train=task_a & train, test=task_a & test, positions=["exact_last"], **kw
    )
    assert_same_grid(masked, subset)


def test_fit_probe_grid_needs_a_store_or_every_array(tmp_path):
    store = synthetic_store(tmp_path / "acts")
    with pytest.raises(ValueError, match="come from the store"):
        fit_probe_grid(store, store.labels)
    with pytest.raises(ValueError, match="give an ActivationStore"):
        fit_probe_grid(store.load()[0], store.labels)


def test_probes_from_store_at_another_hook_kind(tmp_path):
    store = synthetic_store(tmp_path / "acts", kind="resid_mid")
    probes = probes_from_store(store, [0, 1], "exact_last", hook_kind="resid_mid")
    assert sorted(probes) == [0, 1]
    probe, direction = probes[1]
    assert (probe.hook, probe.layer, probe.position) == ("blocks.1.hook_resid_mid", 1, "exact_last")
    assert direction.hook == probe.hook and direction.metadata["projection_std_measured"]
    # the same probe as fitting the cell's train rows by hand
    x, rows = store.cell(probe.hook, "exact_last")
    keep = store.split_mask("train")[rows]
    by_hand = Probe.from_data(
        x[keep], store.labels[rows][keep], hook=probe.hook, layer=1, position="exact_last"
    )
    torch.testing.assert_close(probe.weight, by_hand.weight)
    assert abs(float(direction.vector[0])) > 0.5  # the planted signal
    with pytest.raises(ValueError, match="hook_resid_post was not captured"):
        probes_from_store(store, [1], "exact_last")  # resid_post is the default kind
    with pytest.raises(ValueError, match="last_prompt was not captured"):
        probes_from_store(store, [1], "last_prompt", hook_kind="resid_mid")
    other = {**MODEL, "fingerprint": "other"}
    with pytest.raises(ProbeMismatchError):
        probes_from_store(store, [1], "exact_last", hook_kind="resid_mid", expect_model=other)


# -- the run other jobs reuse --------------------------------------------------------------


def fake_run(run_dir, dataset, options, probing, fingerprint="f"):
    run_dir.mkdir(parents=True)
    with (run_dir / "generations.jsonl").open("w") as f:
        for q in dataset.questions:
            f.write(json.dumps({"task": q.task, "id": q.id}) + "\n")
    (run_dir / "summary.json").write_text(json.dumps({"generation": vars(options.generation())}))
    report = {
        "model": {"fingerprint": fingerprint},
        "hooks": probing.hook_names(2),
        "positions": list(probing.position_names()),
        "locate": probing.locate,
    }
    (run_dir / "report.json").write_text(json.dumps(report))
    (run_dir / "best_probe.json").write_text("{}")


def tiny_dataset(n=4):
    return QADataset("d", [make_question(str(i), "Q?", "x", "t", "factual") for i in range(n)])


def test_ensure_run_reuses_only_a_matching_finished_run(tmp_path, monkeypatch):
    info = SimpleNamespace(fingerprint="f", n_layers=2)
    patch_jobs(monkeypatch, "model_info", lambda model: info)
    made = []
    patch_jobs(monkeypatch, "run_job", lambda options, *a: made.append(options.out))
    ds = tiny_dataset()
    options = RunOptions(out=str(tmp_path / "run"), max_new_tokens=24)
    probing = ProbeConfig(layers="1", p_true=False)
    fake_run(tmp_path / "run", ds, options, probing)
    assert jobs.finished_run(tmp_path / "run", ds, options, probing, info)
    assert jobs.ensure_run(options, probing, model="m", dataset=ds) == tmp_path / "run"
    assert made == []  # reused
    # bootstrap and p(True) settings do not change the probe: still reused
    assert jobs.finished_run(tmp_path / "run", ds, options, ProbeConfig(layers="1"), info)
    # answers located under another rule are not the same run
    assert not jobs.finished_run(
        tmp_path / "run", ds, options, ProbeConfig(layers="1", locate="paper"), info
    )
    for changed in (
        (tiny_dataset(3), options, probing, info),
        (ds, RunOptions(max_new_tokens=12), probing, info),
        (ds, options, ProbeConfig(layers="all"), info),
        (ds, options, ProbeConfig(layers="1", positions="exact_last"), info),
        (ds, options, probing, SimpleNamespace(fingerprint="g", n_layers=2)),
    ):
        assert not jobs.finished_run(tmp_path / "run", *changed)
    jobs.ensure_run(options, ProbeConfig(layers="all"), model="m", dataset=ds)
    assert made == [str(tmp_path / "run")]
    assert not jobs.finished_run(tmp_path / "none", ds, options, probing, info)


def test_run_job_captures_the_configured_hooks(monkeypatch, tmp_path):
    got = {}
    patch_jobs(monkeypatch, "parse_format", lambda prompt, model: f"format {prompt}")
    patch_jobs(monkeypatch, "run_all", lambda *args, **kwargs: got.update(kwargs, args=args))
    model = SimpleNamespace(cfg=SimpleNamespace(n_layers=4))
    options = RunOptions(out=str(tmp_path), max_new_tokens=12, quiet=True)
    probing = ProbeConfig(hooks="resid_post,attn_out", layers="every:3", n_boot=7, p_true=False)
    jobs.run_job(options, probing, model=model, dataset=tiny_dataset())
    assert got["hooks"] == [
        "blocks.0.hook_resid_post",
        "blocks.3.hook_resid_post",
        "blocks.0.hook_attn_out",
        "blocks.3.hook_attn_out",
    ]
    assert got["positions"] == probing.position_names() and len(got["positions"]) > 4
    assert (got["n_boot"], got["p_true"], got["progress"]) == (7, False, False)
    assert got["args"][3].max_new_tokens == 12 and got["args"][4] == "format auto"


def sample_set(qid, greedy_right, right, split="test", score=None):
    def rec(correct, i, s=None):
        r = {
            "id": qid,
            "task": "t",
            "split": split,
            "question": "Q?",
            "gold": "paris",
            "answer": "Paris" if correct else "Lyon",
            "exact_answer": "Paris" if correct else "Lyon",
            "correct": correct,
            "category": "correct" if correct else "incorrect",
            "sample_index": i,
        }
        if s is not None:
            r["probe_score"] = s
        return r

    samples = [rec(i < right, i, None if score is None else score * (i < right)) for i in range(3)]
    return SampleSet(rec(greedy_right, 0), samples)


def test_select_job_reads_samples_without_a_model(tmp_path, monkeypatch):
    def no_model(options):
        raise AssertionError("select on existing samples loads no model")

    patch_jobs(monkeypatch, "load_model_for", no_model)
    sets = [sample_set(str(i), i % 3 == 0, i % 2, score=0.9) for i in range(12)]
    Resampling(sets, {"probe": {"hook": "h", "position": "p"}}).save(tmp_path / "s")
    out = tmp_path / "sel"
    options = RunOptions.for_command("select", out=str(out), dataset="ignored: samples given")
    result = jobs.select_job(options, samples=tmp_path / "s")
    assert result.meta == {
        "samples": str(tmp_path / "s"),
        "split": "test",
        "probe": {"hook": "h", "position": "p"},
    }
    assert (out / "selection.json").exists()
    assert result.accuracy["probe"]["value"] >= result.accuracy["greedy"]["value"]


def test_resample_result_markdown_has_the_summary_and_the_error_types(tmp_path):
    from tl_truth.studies.error_types import error_type_report

    sets = [sample_set(str(i), i % 3 == 0, i % 2) for i in range(6)]
    res = Resampling(sets, {})
    types = error_type_report(sets)
    md = jobs.ResampleResult(res, types, tmp_path, tmp_path / "run").to_markdown()
    assert md.startswith("6 questions x K=3: greedy accuracy ")
    assert f"## {types.title()}\n\n{types.to_markdown()}" in md
