"""AnswerRecord: typed fields, JSON round trip in the file's key order, and dict-like access."""

import copy
import json
import pickle
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tl_truth.answers.generation import GenerationConfig
from tl_truth.answers.record import RECORD_KEYS, AnswerRecord
from tl_truth.answers.run import AnswerRun, answer_questions, read_records
from tl_truth.data.questions import QADataset, make_question

SETTINGS = settings(max_examples=100, deadline=None, derandomize=True)

# The keys `build_record` wrote, in this order, before records were typed: generations.jsonl
# lines must keep them byte for byte.
OLD_KEYS = [
    "id",
    "task",
    "skill",
    "split",
    "question",
    "prompt",
    "gold",
    "gold_aliases",
    "answer",
    "correct",
    "category",
    "grade_reason",
    "exact_answer",
    "exact_answer_source",
    "exact_answer_reason",
    "exact_answer_char_span",
    "exact_answer_token_span",
    "exact_answer_token_text",
    "prompt_token_ids",
    "answer_token_ids",
    "token_logprobs",
    "stop_reason",
    "sample_index",
]


@pytest.fixture(scope="module")
def run():
    from tiny import tiny_model

    qs = [
        make_question(str(i), f"What is {a} + {b}?", str(a + b), "arithmetic", "arithmetic")
        for i, (a, b) in enumerate([(12, 30), (5, 7)])
    ]
    qs.append(make_question("f", "What is the capital of France?", "Paris", "capitals", "factual"))
    ds = QADataset("mini", qs, candidates=("Paris", "Tokyo"))
    cfg = GenerationConfig(max_new_tokens=8, temperature=1.0, num_samples=2, seed=1)
    return answer_questions(tiny_model("gpt2", "bridge"), ds, cfg, extract_with_model=False)


def full_dict(**over):
    d = {
        "id": "q1",
        "task": "capitals",
        "skill": "factual",
        "split": "test",
        "question": "What is the capital of France?",
        "prompt": "Q: What is the capital of France?\nA:",
        "gold": "Paris",
        "gold_aliases": ["Paris"],
        "answer": " Paris.",
        "correct": True,
        "category": "correct",
        "grade_reason": "matched 'Paris'",
        "exact_answer": "Paris",
        "exact_answer_source": "gold_alias",
        "exact_answer_reason": "gold_alias",
        "exact_answer_char_span": [1, 6],
        "exact_answer_token_span": [5, 6],
        "exact_answer_token_text": " Paris",
        "prompt_token_ids": [0, 1, 2, 3, 4],
        "answer_token_ids": [7, 8],
        "token_logprobs": [-0.12345678901234, -1.5],
        "stop_reason": "eos",
        "sample_index": 0,
    }
    return d | over


# -- round trip ---------------------------------------------------------------------------


def test_field_order_is_the_old_key_order():
    assert list(RECORD_KEYS) == OLD_KEYS
    assert list(AnswerRecord.from_dict(full_dict())) == OLD_KEYS


def test_generated_records_round_trip_through_json(run):
    assert len(run.records) == 6
    for r in run.records:
        assert isinstance(r, AnswerRecord)
        d = r.to_dict()
        assert type(d) is dict and list(d) == OLD_KEYS
        back = AnswerRecord.from_dict(json.loads(json.dumps(d)))
        assert back == r and back.to_dict() == d
        assert json.dumps(back.to_dict(), ensure_ascii=False) == json.dumps(d, ensure_ascii=False)
        assert back.token_logprobs == r.token_logprobs  # full precision, not rounded


def test_unknown_keys_survive_in_order(run):
    r = copy.deepcopy(run.records[0])
    r["probe_score"] = 0.123456789
    r["cluster"] = 2
    assert r.extra == {"probe_score": 0.123456789, "cluster": 2}
    d = r.to_dict()
    assert list(d) == [*OLD_KEYS, "probe_score", "cluster"]
    back = AnswerRecord.from_dict(json.loads(json.dumps(d)))
    assert back == r and back["probe_score"] == 0.123456789 and back.extra == r.extra


@SETTINGS
@given(
    correct=st.booleans(),
    span=st.none() | st.tuples(st.integers(0, 50), st.integers(0, 50)).map(list),
    answer=st.text(max_size=20),
    logprobs=st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=5),
    sample_index=st.integers(0, 9),
    extra=st.dictionaries(
        st.text(min_size=1, max_size=8).filter(lambda k: k not in RECORD_KEYS),
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
        max_size=4,
    ),
    drop=st.sets(st.sampled_from(OLD_KEYS[2:])),
)
def test_any_stored_line_round_trips(correct, span, answer, logprobs, sample_index, extra, drop):
    line = full_dict(
        correct=correct,
        exact_answer_token_span=span,
        answer=answer,
        token_logprobs=logprobs,
        sample_index=sample_index,
    )
    line = {k: v for k, v in line.items() if k not in drop} | extra
    text = json.dumps(line, ensure_ascii=False)
    r = AnswerRecord.from_dict(json.loads(text))
    assert r.to_dict() == line and list(r.to_dict()) == list(line)
    assert json.dumps(r.to_dict(), ensure_ascii=False) == text
    assert AnswerRecord.from_dict(json.loads(json.dumps(r.to_dict()))) == r
    assert all((k in r) == (k in line) for k in [*OLD_KEYS, *extra])


# -- dict-like access ---------------------------------------------------------------------


def test_mapping_access_like_the_old_dicts():
    r = AnswerRecord.from_dict(full_dict())
    assert r["correct"] is True and r.correct is True
    assert r.get("exact_answer_token_span") == [5, 6] and r.get("nope") is None
    assert r.get("nope", 7) == 7
    assert "correct" in r and "probe_score" not in r
    r["probe_score"] = 0.5  # a new key
    assert "probe_score" in r and r["probe_score"] == 0.5 and r.extra == {"probe_score": 0.5}
    r["correct"] = False  # a field: the attribute changes
    assert r.correct is False and "correct" not in r.extra
    assert dict(r) == r.to_dict() and {**r} == r.to_dict()
    assert len(r) == len(OLD_KEYS) + 1 and list(r.keys()) == [*OLD_KEYS, "probe_score"]
    assert dict(r.items()) == r.to_dict() and list(r.values()) == list(r.to_dict().values())
    assert r == r.to_dict() and r.to_dict() == r  # compares like a dict
    assert json.loads(json.dumps(dict(r))) == r
    assert (r | {"cluster": 1})["cluster"] == 1 and "cluster" not in r
    assert ({"cluster": 1} | r)["probe_score"] == 0.5
    r.update(cluster=3)
    assert r["cluster"] == 3
    assert r.pop("cluster") == 3 and "cluster" not in r
    with pytest.raises(KeyError):
        r["nope"]
    c = r.copy()
    c["probe_score"] = 0.9
    assert r["probe_score"] == 0.5
    assert pickle.loads(pickle.dumps(r)) == r and copy.deepcopy(r) == r
    with pytest.raises(TypeError):
        hash(r)


def test_partial_records_keep_their_keys():
    """Hand-made records (tests, other tools) may hold only some fields: absent stays absent."""
    line = {"id": "q", "task": "t", "answer": "Paris", "correct": True, "probe_score": None}
    r = AnswerRecord.from_dict(line)
    assert r.to_dict() == line and list(r) == list(line)
    assert "split" not in r and r.get("sample_index", 0) == 0 and r.sample_index == 0
    with pytest.raises(KeyError):
        r["split"]
    r["split"] = "test"
    assert r["split"] == "test" and list(r)[2] == "split"
    del r["split"]
    assert "split" not in r and r.split == ""
    assert AnswerRecord.from_dict(r.to_dict()) == r
    assert r != AnswerRecord.from_dict(line | {"split": ""})


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"task": "t"}, "id"),
        (full_dict(correct="yes"), "correct"),
        (full_dict(sample_index=True), "sample_index"),
        (full_dict(exact_answer_token_span=[1, 2, 3]), "exact_answer_token_span"),
        (full_dict(prompt_token_ids="0 1 2"), "prompt_token_ids"),
        ([1, 2], "JSON object"),
    ],
)
def test_from_dict_rejects_what_is_not_a_record(bad, match):
    with pytest.raises(ValueError, match=match):
        AnswerRecord.from_dict(bad)


def test_extra_cannot_shadow_a_field():
    with pytest.raises(ValueError, match="correct"):
        AnswerRecord("q", "t", extra={"correct": True})


# -- in files ------------------------------------------------------------------------------


def test_corrupted_line_names_file_and_line(run, tmp_path):
    run.save(tmp_path)
    path = tmp_path / "generations.jsonl"
    lines = path.read_text().splitlines()
    lines[1] = lines[1][: len(lines[1]) // 2]  # truncated JSON
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}:2: not a valid answer record")):
        AnswerRun.load(tmp_path)
    lines[1] = json.dumps(full_dict(correct="maybe"))  # JSON, but not a record
    lines.insert(1, "")  # blank lines are skipped but counted
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}:3: ") + ".*'correct'"):
        read_records(path)
