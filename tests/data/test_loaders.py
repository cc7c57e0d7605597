"""Loaders of the paper's native dataset formats, on small fixtures in tests/fixtures/native/.

Every fixture holds at least one bad record, so each test also checks that nothing is dropped
silently: the bad records must show up in `QADataset.skipped` under their reason.
"""

from __future__ import annotations

import gzip
import json
import sys
import time
import types
from pathlib import Path

import pytest

from tl_truth.data import hub, load_questions, loaders
from tl_truth.data.loaders import (
    FORMATS,
    IMDB_LABELS,
    NLI_LABELS,
    load_dataset_spec,
    load_hub,
    load_imdb,
    load_user,
)
from tl_truth.data.questions import Question, make_question, split_for

FIX = Path(__file__).parent.parent / "fixtures" / "native"


def spec(fmt: str, rel: str) -> str:
    return f"{fmt}:{FIX / rel}"


def by_id(ds) -> dict[str, Question]:
    return {q.id: q for q in ds}


# --------------------------------------------------------------------------- TriviaQA


def test_triviaqa_original_json():
    ds = load_dataset_spec(spec("triviaqa", "triviaqa/unfiltered-web-dev.json"))
    assert (ds.name, ds.source) == ("triviaqa", str(FIX / "triviaqa/unfiltered-web-dev.json"))
    assert [q.id for q in ds] == ["tc_1", "tc_2"]
    q = ds[0]
    assert q.question == "Which band released the album Abbey Road in 1969?"
    assert q.answers == ("The Beatles", "Beatles", "The Fab Four")  # value first, then aliases
    assert (q.task, q.skill, q.grade) == ("triviaqa", "factual", "alias")
    assert ds[1].answers == ("canberra",)  # empty value/aliases: normalized ones stand in
    assert ds.skipped == {"no_answer": 1, "empty_question": 1}


def test_triviaqa_hf_jsonl():
    ds = load_dataset_spec(spec("triviaqa", "triviaqa/hf_rows.jsonl"))
    assert [q.id for q in ds] == ["qw_1", "qw_2"]
    assert ds[0].answers == ("George Orwell", "Eric Arthur Blair", "Orwell")
    # The test-split row answers "<unk>"; the last line is truncated JSON.
    assert ds.skipped == {"no_answer": 1, "bad_record": 1}


def test_triviaqa_hf_parquet_and_json_lines_named_json(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    lines = (FIX / "triviaqa/hf_rows.jsonl").read_text().splitlines()[:3]
    rows = [json.loads(line) for line in lines]
    keep = [{k: r[k] for k in ("question", "question_id", "answer")} for r in rows]
    pq.write_table(pa.Table.from_pylist(keep), tmp_path / "validation.parquet")
    # `datasets.Dataset.to_json` writes JSON lines under a .json name.
    (tmp_path / "validation.json").write_text("\n".join(lines))
    for name in ("validation.parquet", "validation.json"):
        ds = load_dataset_spec(f"triviaqa:{tmp_path / name}")
        assert [q.id for q in ds] == ["qw_1", "qw_2"]
        assert ds[1].answers == ("Mali", "Republic of Mali")
        assert ds.skipped == {"no_answer": 1}


# --------------------------------------------------------------------------- Natural Questions


def test_nq_simplified_short_answers_are_token_spans():
    ds = load_dataset_spec(spec("nq", "nq/simplified-dev.jsonl"))
    qs = by_id(ds)
    assert list(qs) == ["797803103760793766", "4549465242785278785"]
    q = qs["797803103760793766"]
    assert q.question == "who wrote the song yesterday by the beatles"
    # All annotators' spans; HTML tag tokens dropped; the out-of-range span ignored.
    assert q.answers == ("Paul McCartney", "Lennon -- McCartney", "Yesterday")
    assert qs["4549465242785278785"].answers == ("no",)  # yes_no_answer NO
    assert ds.skipped == {"no_answer": 1, "empty_question": 1}


def test_nq_open_and_gzip(tmp_path):
    src = FIX / "nq/nq-open-dev.jsonl"
    gz = tmp_path / "nq-open-dev.jsonl.gz"
    gz.write_bytes(gzip.compress(src.read_bytes()))
    for path in (src, gz):
        ds = load_dataset_spec(f"nq:{path}")
        assert [q.id for q in ds] == ["0", "1"]  # no native id: the row index
        assert ds[0].answers == ("14 December 1972 UTC", "December 1972")
        assert ds.skipped == {"no_answer": 1}


# --------------------------------------------------------------------------- HotpotQA


def test_hotpotqa_original_and_hf():
    ds = load_dataset_spec(spec("hotpotqa", "hotpotqa/hotpot_dev_distractor.json"))
    assert [q.id for q in ds] == ["5a8b57f25542995d1e6f1371", "5a8c7595554299585d9e36b6"]
    assert ds[0].answers == ("yes",)
    assert ds[1].answers == ("Chief of Protocol",)
    assert {q.skill for q in ds} == {"multi_hop"}
    assert ds.skipped == {"no_answer": 1}

    hf = load_dataset_spec(spec("hotpotqa", "hotpotqa/hf_rows.jsonl"))
    assert [(q.id, q.gold) for q in hf] == [("5ae0185b55429942ec259c1b", "Jonathan Stark")]
    assert hf.skipped == {"empty_question": 1}


# --------------------------------------------------------------------------- MNLI


def test_mnli_jsonl():
    ds = load_dataset_spec(spec("mnli", "mnli/multinli_1.0_dev_matched.jsonl"))
    assert [(q.id, q.gold) for q in ds] == [
        ("63735n", "neutral"),
        ("91383c", "contradiction"),
        ("13765e", "entailment"),
    ]
    q = ds[0]
    assert (q.grade, q.options, q.skill) == ("choice", NLI_LABELS, "nli")
    assert '"The new rights are nice enough"' in q.question
    assert '"Everyone really likes the newest benefits"' in q.question
    assert "entailment, neutral or contradiction" in q.question
    assert ds.candidates == NLI_LABELS
    assert ds.skipped == {"no_gold_label": 1}  # gold_label "-": annotators disagreed


def test_mnli_glue_rows():
    ds = load_dataset_spec(spec("mnli", "mnli/glue_rows.jsonl"))
    assert [(q.id, q.gold) for q in ds] == [
        ("0", "contradiction"),
        ("1", "neutral"),
        ("2", "entailment"),
    ]
    assert ds.skipped == {"no_gold_label": 1, "bad_label": 1}


# --------------------------------------------------------------------------- IMDB


def test_imdb_acl_directory():
    ds = load_dataset_spec(spec("imdb", "imdb/aclImdb"))
    # Splits in name order, classes interleaved, files in numeric id order (0_9 before 10_8).
    assert [q.id for q in ds] == [
        "test/neg/0_2",
        "test/pos/1_10",
        "train/neg/2_1",
        "train/pos/0_9",
        "train/pos/10_8",
    ]
    assert [q.gold for q in ds] == ["negative", "positive", "negative", "positive", "positive"]
    q = by_id(ds)["train/pos/0_9"]
    assert "A wonderful film.\n\nThe cast is superb." in q.question  # <br /> made newlines
    assert (q.grade, q.options, q.skill) == ("choice", IMDB_LABELS, "sentiment")
    assert ds.skipped == {"no_label": 1, "empty_text": 1}  # the unsup review, the empty one


def test_imdb_single_split_directory_and_limit_keeps_both_classes():
    ds = load_imdb(FIX / "imdb/aclImdb/train", limit=2)
    assert [(q.id, q.gold) for q in ds] == [
        ("train/neg/2_1", "negative"),
        ("train/pos/0_9", "positive"),
    ]


def test_imdb_rows_jsonl_and_csv():
    ds = load_dataset_spec(spec("imdb", "imdb/hf_rows.jsonl"))
    assert [(q.id, q.gold) for q in ds] == [("0", "negative"), ("1", "positive")]
    assert ds.skipped == {"no_label": 1, "empty_text": 1}

    csv_ds = load_dataset_spec(spec("imdb", "imdb/reviews.csv"))  # review/sentiment columns
    assert [q.gold for q in csv_ds] == ["positive", "negative"]
    assert csv_ds.skipped == {"bad_label": 1}


# --------------------------------------------------------------------------- Winogrande


def test_winogrande():
    ds = load_dataset_spec(spec("winogrande", "winogrande/dev.jsonl"))
    assert [(q.id, q.gold) for q in ds] == [
        ("3QHITW7OYO7Q6B6ISU2UMJB84ZLAQE-2", "Sarah"),
        ("3QHITW7OYO7Q6B6ISU2UMJB84ZLAQE-1", "Maria"),
    ]
    q = ds[1]
    assert q.options == ("Sarah", "Maria")  # option1, option2 in prompt order
    assert q.question.startswith("Sarah was a much better surgeon than Maria so _ always")
    assert "Sarah or Maria" in q.question
    assert (q.grade, q.skill) == ("choice", "commonsense")
    assert ds.skipped == {"no_answer": 1, "no_blank": 1}


# --------------------------------------------------------------------------- reference CSVs


def test_reference_csv_output_file_prefers_raw_question_and_parses_lists():
    ds = load_dataset_spec(spec("reference_csv", "reference/triviaqa-answers.csv"))
    assert [q.id for q in ds] == ["0", "1"]
    assert ds[0].question == "Which city hosted the 2012 Summer Olympics?"
    assert ds[0].answers == ("London", "London, England")  # 'london' folds into 'London'
    assert ds[1].answers == ("Leonardo da Vinci", "Leonardo", "Da Vinci")
    assert (ds[0].task, ds[0].skill) == ("reference_csv", "factual")
    assert ds.skipped == {"no_answer": 1}  # correct_answer "[]"


def test_reference_csv_mnli_winogrande_and_math():
    mnli = load_dataset_spec(spec("reference_csv", "reference/mnli_validation.csv"))
    assert [q.gold for q in mnli] == ["entailment", "contradiction"]
    assert {(q.grade, q.options, q.skill) for q in mnli} == {("choice", NLI_LABELS, "nli")}
    assert mnli.skipped == {"answer_not_in_options": 1}  # "neutrality" is no label

    wino = load_dataset_spec(spec("reference_csv", "reference/winogrande_test.csv"))
    # Options in the order the sentence names them, whichever is the gold one.
    assert [(q.gold, q.options) for q in wino] == [
        ("Mary", ("Sarah", "Mary")),
        ("public school", ("private school", "public school")),
    ]
    assert wino.skipped == {"bad_options": 1}  # right and wrong answer are the same

    math = load_dataset_spec(spec("reference_csv", "reference/AnswerableMath_test.csv"))
    assert [(q.id, q.answers, q.grade) for q in math] == [
        ("2001", ("82",), "numeric"),
        ("1986", ("840",), "numeric"),
    ]
    assert math.skipped == {"duplicate_id": 1}


def test_reference_csv_without_answer_column(tmp_path):
    path = tmp_path / "odd.csv"
    path.write_text("Question,Reply\nWhat?,That\n")
    with pytest.raises(ValueError, match="no answer column.*correct_answer.*found Question, Reply"):
        load_dataset_spec(f"reference_csv:{path}")


# --------------------------------------------------------------------------- user data


def test_user_csv_by_plain_path():
    ds = load_dataset_spec(str(FIX / "user/questions.csv"))
    assert [(q.id, q.answers, q.skill, q.task) for q in ds] == [
        ("q1", ("100",), "science", "user"),
        ("q2", ("Alexander Fleming", "Fleming"), "factual", "user"),
    ]
    assert ds.skipped == {"empty_question": 1, "no_answer": 1}


def test_user_jsonl_columns():
    ds = load_dataset_spec(FIX / "user/questions.jsonl")
    qs = by_id(ds)
    assert list(qs) == ["u1", "1", "2"]
    assert (qs["u1"].task, qs["u1"].skill) == ("riddles", "reasoning")  # columns override
    assert (qs["1"].grade, qs["1"].options, qs["1"].gold) == ("choice", ("yes", "no"), "yes")
    assert (qs["2"].grade, qs["2"].answers) == ("numeric", ("42",))
    assert ds.skipped == {"bad_grade": 1, "bad_options": 1, "bad_record": 1}


def test_user_list_of_dicts_and_questions():
    q = make_question("k1", "Kept as is?", ["yes"], task="mine", skill="misc")
    data = [
        q,
        {"question": "Capital of Peru?", "answers": ["Lima"], "colour": "ignored"},
        {"id": "k1", "task": "mine", "question": "Same id again", "answer": "x"},
        "not a record",
    ]
    ds = load_dataset_spec(data)
    assert ds[0] is q
    assert [(x.id, x.task, x.gold) for x in ds] == [("k1", "mine", "yes"), ("1", "user", "Lima")]
    assert (ds.source, ds.skipped) == ("<list>", {"duplicate_id": 1, "bad_record": 1})


def test_user_without_question_column_fails_loudly():
    with pytest.raises(ValueError, match="no question column"):
        load_user([{"prompt": "Capital of Peru?", "answer": "Lima"}])


def test_csv_format_forces_the_reader(tmp_path):
    path = tmp_path / "questions.txt"
    path.write_text("question,answer\nCapital of Chile?,Santiago\n")
    ds = load_dataset_spec(f"csv:{path}")
    assert [(q.id, q.gold, q.task) for q in ds] == [("0", "Santiago", "user")]


# --------------------------------------------------------------------------- shared behaviour


def test_split_is_the_hashed_split_and_stable():
    one = load_dataset_spec(spec("mnli", "mnli/multinli_1.0_dev_matched.jsonl"))
    two = load_dataset_spec(spec("mnli", "mnli/multinli_1.0_dev_matched.jsonl"))
    assert [(q.id, q.split) for q in one] == [(q.id, q.split) for q in two]
    assert all(q.split == split_for(f"mnli/{q.id}") for q in one)
    assert len(one.train) + len(one.test) == len(one)


def test_limit_stops_early():
    ds = load_dataset_spec(spec("mnli", "mnli/multinli_1.0_dev_matched.jsonl"), limit=1)
    assert [q.id for q in ds] == ["63735n"]
    assert ds.skipped == {}  # the "-" record was never read
    with pytest.raises(ValueError, match="limit"):
        load_dataset_spec(spec("mnli", "mnli/glue_rows.jsonl"), limit=0)


def test_formats_registry():
    assert set(FORMATS) == {
        "triviaqa",
        "nq",
        "hotpotqa",
        "mnli",
        "imdb",
        "winogrande",
        "reference_csv",
        "csv",
        "jsonl",
        "json",
        "user",
    }
    ds = FORMATS["winogrande"](FIX / "winogrande/dev.jsonl", limit=1)
    assert len(ds) == 1


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_dataset_spec(f"triviaqa:{missing}")
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        load_dataset_spec(str(tmp_path / "nope.csv"))


@pytest.mark.parametrize(
    "bad, message",
    [
        ("squad:data/dev.json", "unknown format 'squad'.*triviaqa, nq, hotpotqa"),
        ("capitals", "neither a data file.*reference_csv"),
        ("triviaqa:", "no path after"),
    ],
)
def test_bad_specs_list_the_formats(bad, message):
    with pytest.raises(ValueError, match=message):
        load_dataset_spec(bad)


def test_files_without_usable_rows(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="no usable nq records"):
        load_dataset_spec(f"nq:{empty}")
    unanswered = tmp_path / "test.jsonl"
    unanswered.write_text('{"qID": "a", "sentence": "_ ran.", "option1": "A", "option2": "B"}\n')
    with pytest.raises(ValueError, match="no_answer"):
        load_dataset_spec(f"winogrande:{unanswered}")
    broken = tmp_path / "broken.json"
    broken.write_text('{"Data": [')
    with pytest.raises(ValueError, match="invalid JSON"):
        load_dataset_spec(f"triviaqa:{broken}")
    with pytest.raises(ValueError, match="expected a JSON list"):
        (tmp_path / "obj.json").write_text('{"Version": 1}')
        load_dataset_spec(f"hotpotqa:{tmp_path / 'obj.json'}")
    with pytest.raises(ValueError, match="is a directory"):
        load_dataset_spec(f"mnli:{tmp_path}")
    with pytest.raises(ValueError, match="cannot tell the format"):
        load_dataset_spec(str(tmp_path))


# --------------------------------------------------------------------------- the hub


def test_load_hub_offline_raises_quickly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match="unreachable.*'triviaqa:<path>'"):
        load_hub("trivia_qa", "validation")
    assert time.perf_counter() - start < 1.0
    with pytest.raises(ValueError, match="unknown hub dataset"):
        load_hub("squad", "validation")


def test_hub_reachable_false_without_a_server(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "http_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "not a url")
    assert loaders.hub_reachable() is False


def test_load_hub_converts_hf_rows(monkeypatch):
    calls = []

    def fake_load_dataset(repo, config, *, split, streaming):
        calls.append((repo, config, split, streaming))
        return [
            {"premise": "A cat sleeps.", "hypothesis": "An animal rests.", "label": 0, "idx": 7},
            {"premise": "Hidden.", "hypothesis": "Test.", "label": -1, "idx": 8},
        ]

    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setitem(
        sys.modules, "datasets", types.SimpleNamespace(load_dataset=fake_load_dataset)
    )
    ds = load_hub("glue", "validation", limit=5)
    assert calls == [("nyu-mll/glue", "mnli", "validation_matched", True)]
    assert [(q.id, q.gold, q.task) for q in ds] == [("7", "entailment", "mnli")]
    assert ds.skipped == {"no_gold_label": 1}
    assert ds.source == "hf:nyu-mll/glue/mnli[validation_matched]"


@pytest.mark.parametrize("name", ["q.csv", "q.jsonl", "q.json", "q.csv.gz", "q.parquet"])
def test_unreadable_file_error_names_the_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(bytes(range(128, 256)) * 20)  # binary, not UTF-8, not gzip, not parquet
    with pytest.raises(ValueError, match=str(path)):
        load_questions(str(path))
    with pytest.raises(ValueError, match=str(path)):
        load_questions(f"triviaqa:{path}")
