"""The answers pipeline on tiny models: schema, invariants, nothing dropped, save/load."""

import json

import pytest

from tl_truth.answers.generation import GenerationConfig
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
    run.save(tmp_path)
    back = AnswerRun.load(tmp_path)
    assert back.records == json.loads(json.dumps(run.records))
    assert back.summary["n"] == 2
    assert len(back.to_dataframe()) == 2


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
