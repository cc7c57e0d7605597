"""The result protocol on every result class (synthetic data, no model): `save` writes JSON, markdown
and PNG without touching the matplotlib backend or leaving pyplot figures open, `load` gives the
same result back, `to_dataframe` / `to_markdown` / `plot(ax=...)` behave the same everywhere."""

from __future__ import annotations

import json
import math

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from tl_truth.intervention.patching import PatchResult
from tl_truth.models import ModelInfo
from tl_truth.probing.baselines import evaluate_baselines
from tl_truth.probing.grid import ProbeGrid, fit_probe_grid
from tl_truth.results import Result, json_safe, markdown_table, save_outputs
from tl_truth.studies.error_types import error_type_report
from tl_truth.studies.generalization import GeneralizationResult
from tl_truth.studies.main_job import ProbeReport, select_cell
from tl_truth.studies.patch_study import ALIGNED_POSITIONS, PatchStudy, load_study
from tl_truth.studies.resampling import Resampling, SampleSet
from tl_truth.studies.selection import select_answers
from tl_truth.studies.steering_eval import SteeringResult

INFO = ModelInfo("tiny", "bridge", "hf", "abc123", n_layers=2, d_model=8, chat=False)
CITIES = ["Paris", "Lyon", "Nice", "Metz", None]  # None: a refusal

# -- synthetic results ---------------------------------------------------------------------


def rec(answer, correct, qid, task, split, i=0):
    refusal = answer is None
    return {
        "id": qid,
        "task": task,
        "split": split,
        "question": f"Q{qid}? | with a pipe",
        "gold": "Paris",
        "answer": "I don't know" if refusal else answer,
        "exact_answer": "" if refusal else answer,
        "correct": correct,
        "category": "refusal" if refusal else ("correct" if correct else "incorrect"),
        "sample_index": i,
    }


def sample_sets(n=40, k=6, seed=0) -> list[SampleSet]:
    rng = np.random.default_rng(seed)
    sets = []
    for i in range(n):
        p = rng.dirichlet(np.ones(len(CITIES)))
        answers = [CITIES[j] for j in rng.choice(len(CITIES), size=k, p=p)]
        task, split = "ab"[i % 2], "train" if i < n // 2 else "test"
        samples = [rec(a, a == "Paris", f"q{i}", task, split, j) for j, a in enumerate(answers)]
        g = answers[0] or "Lyon"
        sets.append(SampleSet(rec(g, g == "Paris", f"q{i}", task, split), samples))
    return sets


def make_resampling():
    return Resampling(sample_sets(), {"k": 6, "temperature": 1.0, "model": {"name": "tiny"}})


def make_error_types():
    sets = sample_sets()
    rng = np.random.default_rng(1)
    X = torch.tensor(rng.normal(size=(len(sets), 8)), dtype=torch.float32)
    X[:, 0] += torch.tensor([s.n_correct / s.k for s in sets]) * 3
    ref = [float(v) for v in rng.random(len(sets))]
    return error_type_report(
        sets,
        X,
        n_boot=30,
        min_per_class=3,
        reference_scores=ref,
        cell={"hook": "blocks.1.hook_resid_post", "position": "exact_last"},
    )


def make_selection():
    sets = sample_sets()
    rng = np.random.default_rng(2)
    scores = {
        s.key: [math.nan if rng.random() < 0.2 else float(rng.normal()) for _ in range(s.k)]
        for s in sets
    }
    res = select_answers(sets, scores, n_boot=30)
    res.meta = {"samples": "somewhere", "split": "test", "probe": {"hook": "h", "position": "p"}}
    return res


def make_generalization():
    rng = np.random.default_rng(3)
    tasks = ["a", "b", "c"]
    auc = [[float(x) for x in rng.uniform(0.5, 1, 3)] for _ in tasks]
    logit = [[float(x) for x in rng.uniform(0.4, 0.9, 3)] for _ in tasks]
    auc[2] = [None] * 3  # no probe for "c"
    logit[0][1] = None
    ci = [[[None, None] if a is None else [a - 0.1, min(1.0, a + 0.05)] for a in r] for r in auc]
    cell = {"hook": "blocks.1.hook_resid_post", "position": "exact_last", "cv_auc": 0.91234567}
    return GeneralizationResult(
        tasks,
        {"a": "factual", "b": "factual", "c": "math"},
        auc,
        ci,
        logit,
        {"a": cell, "b": cell, "c": {"skipped": "0 correct / 40 wrong training answers"}},
        {t: {u: [20, 20] for u in tasks} for t in tasks},
        meta={"logit_baseline": {"a": "logits_min", "b": "logits_mean", "c": None}},
    )


def make_steering():
    settings = []
    for layer in (1, 2):
        for alpha in (0.0, 2.5):
            acc = 1 / 3 + layer / 7 + alpha / 100
            settings.append(
                {
                    "layer": layer,
                    "hook": f"blocks.{layer}.hook_resid_post",
                    "alpha": alpha,
                    "scope": "all",
                    "accuracy": acc,
                    "recovery_rate": 2 / 7,
                    "break_rate": None,
                    "probe_score_shift": 0.123456789 * layer,
                    "random": {
                        "n": 3,
                        "accuracy_mean": 1 / 6,
                        "accuracy_sd": 0.0471404,
                        "recovery_rate_mean": 1 / 9,
                        "break_rate_mean": None,
                    },
                    "net_gain_over_random": acc - 1 / 6,
                }
            )
    return SteeringResult(
        1 / 3, 30, settings, "all", "sd", meta={"model": {"name": "tiny"}, "dataset": "d"}
    )


def make_grid() -> ProbeGrid:
    g = torch.Generator().manual_seed(0)
    n, H, P, d = 120, 2, 3, 8
    y = torch.arange(n) % 2
    X = torch.randn(n, H, P, d, generator=g)
    X[:, 1, :, 0] += (y[:, None] - 0.5) * 2.5
    train = torch.arange(n) < 80
    valid = torch.rand(n, P, generator=g) < 0.9
    hooks, positions = (
        [f"blocks.{i}.hook_resid_post" for i in range(H)],
        [
            "last_prompt",
            "exact_first",
            "exact_last",
        ],
    )
    return fit_probe_grid(
        X, y, train, ~train, hooks, positions, valid=valid, n_boot=30, progress=False, model=INFO
    )


def make_report() -> ProbeReport:
    grid = make_grid()
    rng = np.random.default_rng(4)
    labels = np.arange(120) % 2 == 0
    test = np.arange(120) >= 80
    scores = {"logits_mean": rng.normal(size=120) + labels, "p_true": rng.normal(size=120)}
    baselines = evaluate_baselines(scores, labels, test, n_boot=30)
    selected = {
        "exact": select_cell(grid, ("exact_first", "exact_last")),
        "last_generated": None,
        "last_prompt": select_cell(grid, ("last_prompt",)),
        "any": select_cell(grid, tuple(grid.positions)),
    }
    summary = {
        "model": INFO.to_dict(),
        "dataset": {"name": "mini"},
        "n": 120,
        "splits": {"train": 80, "test": 40},
        "accuracy": 0.5,
        "exact_answer_rate": 0.9,
        "per_task": {"t": {"n": 120, "accuracy": 0.5}},
    }
    same = {"n": 36, "auc": evaluate_baselines(scores, labels, test, n_boot=30)}
    return ProbeReport(summary, grid, baselines, selected, {"probe_s": 1.23}, same)


def make_patch_result(seed=5, n_layers=2, nan_col=None) -> PatchResult:
    g = torch.Generator().manual_seed(seed)
    score = torch.randn(n_layers, len(ALIGNED_POSITIONS), generator=g)
    logit = torch.randn(n_layers, len(ALIGNED_POSITIONS), generator=g)
    if nan_col is not None:
        score[:, nan_col] = logit[:, nan_col] = float("nan")
    return PatchResult(
        probe_score=score,
        answer_logit=logit,
        clean_probe_score=1.2345678,
        corrupted_probe_score=-0.7654321,
        clean_answer_logit=3.14159265,
        corrupted_answer_logit=1.41421356,
        positions=list(range(len(ALIGNED_POSITIONS))),
        labels=list(ALIGNED_POSITIONS),
        layers=[0, 3],
    )


def make_patch_study() -> PatchStudy:
    results = [make_patch_result(5), make_patch_result(6, nan_col=5)]
    pairs = [
        {
            "task": "t",
            "id": str(i),
            "question": f"Q{i}?",
            "wrong": "Lyon",
            "right": "Paris",
            "wrong_answer": "It is Lyon.",
            "right_answer": "It is Paris.",
        }
        for i in range(2)
    ]
    probe = {"hook": "blocks.1.hook_resid_post", "position": "exact_last", "layer": 1}
    return PatchStudy(results, pairs, probe, meta={"n_candidates": 2, "x": 0.123456789})


BUILDERS = {
    "Resampling": make_resampling,
    "ErrorTypeReport": make_error_types,
    "SelectionResult": make_selection,
    "GeneralizationResult": make_generalization,
    "SteeringResult": make_steering,
    "ProbeGrid": make_grid,
    "ProbeReport": make_report,
    "PatchResult": make_patch_result,
    "PatchStudy": make_patch_study,
}


@pytest.fixture(scope="module", params=list(BUILDERS))
def result(request) -> Result:
    return BUILDERS[request.param]()


@pytest.fixture
def svg_backend():
    """A backend that is not the Agg default, restored afterwards: `save` must not change it."""
    old = matplotlib.get_backend()
    matplotlib.use("svg")
    yield "svg"
    matplotlib.use(old)


# -- the protocol on every class -----------------------------------------------------------


def test_save_keeps_backend_and_pyplot_state(result, tmp_path, svg_backend):
    figures = plt.get_fignums()
    out = result.save(tmp_path)
    assert out == tmp_path
    assert matplotlib.get_backend() == svg_backend
    assert plt.get_fignums() == figures
    name = result.result_name
    png = tmp_path / f"{result.figure_name or name}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / f"{name}.md").read_text() == result._repr_markdown_()
    # the JSON is `to_json()`: `to_dict()` rounded at write time, strict JSON (no NaN)
    text = (tmp_path / f"{name}.json").read_text()
    assert json.loads(text) == result.to_json()
    assert "NaN" not in text


def _floats(x):
    if isinstance(x, dict):
        for v in x.values():
            yield from _floats(v)
    elif isinstance(x, (list, tuple)):
        for v in x:
            yield from _floats(v)
    elif isinstance(x, float):
        yield x


def test_full_precision_inside_rounded_when_written(result):
    if result.json_digits is None:  # steering.json holds full precision
        assert result.to_json() == json_safe(result.to_dict(), None)
        return
    inside = [v for v in _floats(result.to_dict()) if math.isfinite(v)]
    assert any(v != round(v, 4) for v in inside), "values are rounded inside the object"
    doc = result.to_json()
    if isinstance(result, PatchStudy):  # its baselines (clean_*, corrupted_*) are kept as is
        written = [
            doc["summary"],
            [[ex["probe_score"], ex["answer_logit"]] for ex in doc["examples"]],
        ]
    else:
        written = [v for k, v in doc.items() if k not in result.json_raw_keys and k != "C"]
    assert all(v == round(v, 4) for v in _floats(written))


def _close(a, b, tol):
    if isinstance(a, dict):
        return (
            isinstance(b, dict) and a.keys() == b.keys() and all(_close(a[k], b[k], tol) for k in a)
        )
    if isinstance(a, list):
        return (
            isinstance(b, list)
            and len(a) == len(b)
            and all(_close(x, y, tol) for x, y in zip(a, b, strict=True))
        )
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= tol
    return a == b


def test_load_round_trip(result, tmp_path, svg_backend):
    result.save(tmp_path / "a")
    back = type(result).load(tmp_path / "a")
    assert type(back) is type(result)
    if isinstance(result, PatchStudy):
        # per-question grids are stored at 4 places: the loaded study's summary (gap closed)
        # is recomputed from them, equal to the original's up to that rounding
        a, b = json_safe(back.to_dict()), json_safe(result.to_dict())
        assert a["examples"] == b["examples"] and a["meta"] == b["meta"]
        assert _close(a["summary"], b["summary"], 1e-3)
        assert json_safe(load_study(tmp_path / "a").to_dict()) == a  # the old name
        return
    assert json_safe(back.to_dict(), result.json_digits) == json_safe(
        result.to_dict(), result.json_digits
    )
    # and saving the loaded result writes the same JSON again
    back.save(tmp_path / "b")
    name = f"{result.result_name}.json"
    assert (tmp_path / "b" / name).read_text() == (tmp_path / "a" / name).read_text()


def test_dataframe_and_markdown(result):
    assert isinstance(result.to_dataframe(), pd.DataFrame)
    frame = result.markdown_frame()
    md = result.to_markdown()
    assert md.startswith("| ")
    head, sep = md.splitlines()[:2]
    assert head == "| " + " | ".join(str(c) for c in frame.columns) + " |"
    assert sep == "|" + "---|" * len(frame.columns)
    assert md in result._repr_markdown_()


def test_plot_on_a_given_ax_leaves_pyplot_alone(result, svg_backend):
    figures = plt.get_fignums()
    fig = Figure()
    ax = fig.add_subplot()
    assert result.plot(ax=ax) is ax
    assert plt.get_fignums() == figures
    assert matplotlib.get_backend() == svg_backend
    assert isinstance(result.figure(), Figure)
    assert plt.get_fignums() == figures


def test_plot_without_ax_makes_one_pyplot_figure(result, svg_backend):
    figures = plt.get_fignums()
    ax = result.plot()
    try:
        assert ax in ax.figure.axes
        assert plt.get_fignums() == [*figures, ax.figure.number]
    finally:
        plt.close(ax.figure)


# -- class specifics ------------------------------------------------------------------------


def test_probe_grid_from_json_has_no_weights(tmp_path):
    grid = make_grid()
    grid.save(tmp_path)
    back = ProbeGrid.load(tmp_path)
    assert grid.has_weights and not back.has_weights
    np.testing.assert_allclose(back.auc, np.round(grid.auc, 4))
    np.testing.assert_array_equal(back.C, grid.C)  # C is written unrounded
    with pytest.raises(ValueError, match="no weights"):
        back.probe(back.hooks[1], "exact_last")


def test_report_files_and_load(tmp_path):
    report = make_report()
    report.save(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {
        "report.json",
        "report.md",
        "probe_grid.png",
        "best_probe.json",
        "best_probe.safetensors",
    }
    assert "| method | where | AUC | 95% CI | n test |" in (tmp_path / "report.md").read_text()
    back = ProbeReport.load(tmp_path)
    assert back.markdown_frame().shape == report.markdown_frame().shape
    assert back.selected == json_safe(report.selected)


def test_patch_study_keeps_its_file_names(tmp_path):
    study = make_patch_study()
    study.save(tmp_path, max_example_plots=1)
    assert (tmp_path / "patching_average.png").exists()
    assert [p.name for p in (tmp_path / "patching_examples").iterdir()] == ["000.png"]
    doc = json.loads((tmp_path / "patching.json").read_text())
    assert doc["examples"][0]["clean_probe_score"] == 1.2345678  # baselines as they are
    assert doc["examples"][1]["probe_score"][0][5] is None  # a missing position


def test_resampling_keeps_its_files(tmp_path):
    res = make_resampling()
    res.save(tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert names >= {"samples.jsonl", "greedy", "resample_summary.json", "resample_summary.md"}
    doc = json.loads((tmp_path / "resample_summary.json").read_text())
    assert list(doc)[0] == "meta" and doc["meta"] == res.meta


def test_generalization_difference_of_reported_aucs():
    g = make_generalization()
    aml = g.auc_minus_logit
    assert aml[0][0] == round(round(g.auc[0][0], 4) - round(g.logit_auc[0][0], 4), 4)
    assert aml[0][1] is None and aml[2] == [None] * 3


def test_markdown_table_cells():
    df = pd.DataFrame(
        {
            "name": ["a|b", "line\nbreak", None],
            "x": [0.12345, float("nan"), 1.0],
            "n": pd.array([3, None, 5], dtype="Int64"),
            "ok": [True, False, True],
        }
    )
    assert markdown_table(df).splitlines() == [
        "| name | x | n | ok |",
        "|---|---|---|---|",
        "| a\\|b | 0.123 | 3 | True |",
        "| line break | - | - | False |",
        "| - | 1.000 | 5 | True |",
    ]


def test_json_safe_rounds_only_when_asked():
    doc = {"a": 1 / 3, "b": [np.float32(0.5), float("nan")], "c": (np.int64(2), np.bool_(True))}
    assert json_safe(doc) == {"a": 0.3333, "b": [0.5, None], "c": [2, True]}
    assert json_safe(doc, None)["a"] == 1 / 3


def test_save_outputs_keeps_backend(tmp_path, svg_backend):
    figures = plt.get_fignums()
    fig = Figure()
    fig.add_subplot().plot([0, 1])
    save_outputs(tmp_path, "x", {"a": 1}, "# x\n", fig)
    ax = plt.subplots()[1]  # a pyplot figure is closed after saving
    save_outputs(tmp_path, "y", {"a": 1}, "# y\n", ax)
    assert matplotlib.get_backend() == svg_backend
    assert plt.get_fignums() == figures
    assert (tmp_path / "x.png").exists() and (tmp_path / "y.json").read_text() == '{\n  "a": 1\n}'
