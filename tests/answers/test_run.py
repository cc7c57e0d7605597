"""The answers pipeline on tiny models: schema, invariants, nothing dropped, save/load."""

import json

import pytest

from tl_truth.answers.generation import GenerationConfig
from tl_truth.answers.record import AnswerRecord
from tl_truth.answers.run import AnswerRun, answer_questions
from tl_truth.cli import main
from tl_truth.data.questions import QADataset, make_question

REQUIRED = [
    "id",
    "task",
    "question",
    "prompt",
    "gold",
    "answer",
    "correct",
    "exact_answer",
    "exact_answer_source",
    "exact_answer_char_span",
    "exact_answer_token_span",
    "exact_answer_token_text",
    "prompt_token_ids",
    "answer_token_ids",
    "token_logprobs",
]


def small_dataset():
    qs = [
        make_question(
            str(i), f"What is {a} + {b}?", str(a + b), "arithmetic", "arithmetic", grade="numeric"
        )
        for i, (a, b) in enumerate([(12, 30), (5, 7), (100, 23), (9, 9)])
    ]
    qs.append(make_question("f", "What is the capital of France?", "Paris", "capitals", "factual"))
    return QADataset("mini", qs, candidates=("Paris", "Tokyo", "Japan"))


def test_records_schema_and_invariants(tiny):
    run = answer_questions(
        tiny,
        small_dataset(),
        GenerationConfig(max_new_tokens=10),
        extract_with_model=False,
        progress=False,
    )
    assert len(run) == 5  # nothing dropped
    tok = tiny.tokenizer
    for r in run.records:
        assert isinstance(r, AnswerRecord)
        assert all(k in r for k in REQUIRED)
        assert len(r["token_logprobs"]) == len(r["answer_token_ids"])
        assert r["answer"] == tok.decode(r["answer_token_ids"], clean_up_tokenization_spaces=False)
        if r["exact_answer_token_span"] is not None:
            s, e = r["exact_answer_token_span"]
            full = r["prompt_token_ids"] + r["answer_token_ids"]
            assert len(r["prompt_token_ids"]) <= s < e <= len(full)
            assert r["exact_answer"] in tok.decode(full[s:e])
        else:
            assert r["exact_answer_source"] == "none"
    s = run.summary
    assert s["n"] == 5 and sum(s["exact_answer_sources"].values()) == 5
    assert set(s["per_task"]) == {"arithmetic", "capitals"}


def test_save_and_load_round_trip(tiny, tmp_path):
    run = answer_questions(
        tiny,
        small_dataset()[:2],
        GenerationConfig(max_new_tokens=4),
        extract_with_model=False,
        progress=False,
    )
    run.records[0]["probe_score"] = 0.123456789  # a key added by a later step
    assert run.save(tmp_path) == tmp_path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["generations.jsonl", "summary.json"]
    lines = (tmp_path / "generations.jsonl").read_text().splitlines()
    assert lines == [json.dumps(r.to_dict(), ensure_ascii=False) for r in run.records]
    back = AnswerRun.load(tmp_path)
    assert all(isinstance(r, AnswerRecord) for r in back.records)
    assert back.records == run.records
    assert [r.to_dict() for r in back.records] == json.loads(json.dumps(run.to_dict()["records"]))
    assert back.records[0]["probe_score"] == 0.123456789 and "probe_score" not in back.records[1]
    assert back.summary == json.loads(json.dumps(run.summary)) and back.summary["n"] == 2
    assert len(back.to_dataframe()) == 2


@pytest.fixture(scope="module")
def gpt2_run():
    from tiny import tiny_model

    return answer_questions(
        tiny_model("gpt2", "bridge"),
        small_dataset(),
        GenerationConfig(max_new_tokens=6),
        extract_with_model=False,
        progress=False,
    )


def test_result_protocol(gpt2_run):
    run = gpt2_run
    d = run.to_dict()
    assert d["summary"] is run.summary  # summary.json as written (tuples become lists there)
    assert json.loads(json.dumps(d["records"])) == d["records"]
    assert d["records"] == [r.to_dict() for r in run.records]
    df = run.to_dataframe()
    assert len(df) == len(run) and list(df.columns)[:3] == ["id", "task", "skill"]
    md = run.to_markdown()
    assert "| arithmetic | 4 |" in md and "| capitals | 1 |" in md and "| all | 5 |" in md
    assert run._repr_markdown_().startswith("## Answers of tiny-gpt2: 5 records")
    assert AnswerRun.from_dict(json.loads(json.dumps(d))).records == run.records
    acc = sum(r["correct"] for r in run.records if r["task"] == "arithmetic") / 4
    assert f"| arithmetic | 4 | {acc:.3f} |" in md


def test_records_can_be_plain_dicts(gpt2_run, tmp_path):
    """Code that builds runs from dicts (hand-made or read elsewhere) still works."""
    dicts = [r.to_dict() for r in gpt2_run.records]
    run = AnswerRun(dicts, {})
    assert all(isinstance(r, AnswerRecord) for r in run.records) and run.records == dicts
    partial = [{"id": "a", "task": "t", "correct": True}, {"id": "b", "task": "t"}]
    AnswerRun(partial).save(tmp_path)
    assert AnswerRun.load(tmp_path).records == partial
    assert (tmp_path / "generations.jsonl").read_text().splitlines()[1] == (
        '{"id": "b", "task": "t"}'
    )


def test_plot_and_figure_leave_matplotlib_alone(gpt2_run, tmp_path):
    import matplotlib

    previous = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        import matplotlib.pyplot as plt

        figs = plt.get_fignums()
        out = gpt2_run.save(tmp_path, figure=True)
        assert (out / "summary.png").stat().st_size > 0
        assert matplotlib.get_backend() == "svg" and plt.get_fignums() == figs

        from matplotlib.figure import Figure

        ax = Figure().subplots()
        assert gpt2_run.plot(ax=ax) is ax and len(ax.patches) == 2 * 2  # 2 tasks x 2 bars
        assert plt.get_fignums() == figs
        ax = gpt2_run.plot()  # no axes: a new pyplot figure, as in a notebook
        assert ax.figure.number in plt.get_fignums()
        plt.close(ax.figure)
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(previous)


def test_model_extraction_fallback_runs(tiny):
    """A random model's extraction is nonsense; it must be accepted only as a substring."""
    ds = QADataset("mini", [make_question("q", "Name a city?", "Paris", "t", "factual")])
    run = answer_questions(tiny, ds, GenerationConfig(max_new_tokens=8), progress=False)
    r = run.records[0]
    assert r["exact_answer_source"] in ("model", "none")
    if r["exact_answer_source"] == "model":
        assert r["exact_answer"] in r["answer"]
    assert run.summary["model_extraction"]["enabled"]


def test_cli_generate_on_local_model(tmp_path, capsys):
    from tiny import tiny_hf

    hf, tok = tiny_hf("gpt2", seed=2)
    model_dir = tmp_path / "m"
    hf.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    data = tmp_path / "qs.jsonl"
    data.write_text(
        '{"question": "What is 2 + 2?", "answer": "4"}\n{"question": "Capital of Peru?", '
        '"answers": ["Lima"]}\n{"question": "", "answer": "x"}\n'
    )
    out = tmp_path / "out"
    rc = main(
        [
            "generate",
            "--model",
            str(model_dir),
            "--dataset",
            f"jsonl:{data}",
            "--out",
            str(out),
            "--max-new-tokens",
            "4",
            "--quiet",
            "--no-model-extract",
        ]
    )
    assert rc == 0
    lines = (out / "generations.jsonl").read_text().splitlines()
    assert len(lines) == 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"]["skipped"]  # the empty question is counted, not dropped silently
    assert "wrote" in capsys.readouterr().out


def test_cli_reports_bad_dataset(capsys):
    assert main(["generate", "--dataset", "no_such_task_or_file"]) == 2
    assert "error" in capsys.readouterr().err


@pytest.mark.parametrize("bad", [0, -3])
def test_limit_must_be_positive(bad):
    from tl_truth.data.load import load_questions

    with pytest.raises(ValueError):
        load_questions("capitals", bad)


def test_relocate_matches_locating_from_scratch(tiny):
    """Relocating blind answers under "paper" equals answering with "paper" from the start."""
    from tl_truth.answers.run import relocate

    model, ds = tiny, small_dataset()
    cfg = GenerationConfig(max_new_tokens=8)
    blind = answer_questions(model, ds, cfg, extract_with_model=False, progress=False)
    paper = answer_questions(
        model, ds, cfg, extract_with_model=False, progress=False, locate="paper"
    )
    assert blind.summary["locate"] == "blind" and paper.summary["locate"] == "paper"
    moved = relocate(model, ds, blind, "paper")
    assert [r.to_dict() for r in moved.records] == [r.to_dict() for r in paper.records]
    assert moved.summary["located_rate"] == paper.summary["located_rate"]
    assert moved.summary["relocated_from"] == "blind"
    # the input run is left alone
    assert blind.summary["locate"] == "blind"
    again = relocate(model, ds, moved, "blind")
    assert [r.to_dict() for r in again.records] == [r.to_dict() for r in blind.records]
