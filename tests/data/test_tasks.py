"""Built-in tasks: sizes, determinism, splits, spot facts and bookkeeping."""

from __future__ import annotations

import pytest

from tl_truth.data import other_tasks, task_utils, tasks
from tl_truth.data.questions import QADataset

# Sane ranges around the counts the current data packages give (see country_tasks.py and
# other_tasks.py).
RANGES = {
    "capitals": (200, 252),
    "city_country": (1000, 2500),
    "currencies": (200, 252),
    "elements": (118, 118),
    "fanoutqa": (1400, 1900),
    "arithmetic": (500, 500),
}
ALL = sorted(tasks.BUILTIN_TASKS)


def _uncached(name: str) -> QADataset:
    builder = tasks.BUILTIN_TASKS[name]
    return builder.__wrapped__()  # bypass lru_cache: a genuinely fresh build


def _find(ds: QADataset, text: str):
    hits = [q for q in ds if q.question == text]
    assert len(hits) == 1, f"{text!r}: {len(hits)} matches"
    return hits[0]


def test_registry_matches_ranges():
    assert set(tasks.BUILTIN_TASKS) == set(RANGES)


@pytest.mark.parametrize("name", ALL)
def test_count_in_range(name):
    lo, hi = RANGES[name]
    assert lo <= len(tasks.load_builtin(name)) <= hi


@pytest.mark.parametrize("name", ALL)
def test_deterministic(name):
    a, b = _uncached(name), _uncached(name)
    assert a.questions == b.questions
    assert a.candidates == b.candidates
    assert a.skipped == b.skipped
    assert a.source == b.source


def test_load_builtin_is_cached():
    assert tasks.load_builtin("capitals") is tasks.load_builtin("capitals")


@pytest.mark.parametrize("name", ALL)
def test_structure(name):
    ds = tasks.load_builtin(name)
    assert ds.name == name and ds.source
    ids = [q.id for q in ds]
    assert len(set(ids)) == len(ids), "ids must be unique"
    assert ids == sorted(ids), "questions must be sorted by id"
    texts = [q.question for q in ds]
    assert len(set(texts)) == len(texts), "question texts must be unique"
    for q in ds:
        assert q.task == name
        assert q.answers and all(a.strip() for a in q.answers)
        assert q.question.strip().endswith("?") or name == "fanoutqa"
    assert isinstance(ds.skipped, dict)
    assert all(isinstance(k, str) and isinstance(v, int) and v > 0 for k, v in ds.skipped.items())


@pytest.mark.parametrize("name", ALL)
def test_split_roughly_70_30(name):
    ds = tasks.load_builtin(name)
    frac = len(ds.test) / len(ds)
    slack = 0.1 if len(ds) < 300 else 0.05
    assert abs(frac - 0.3) < slack, f"{name}: test fraction {frac:.3f}"
    assert len(ds.train) + len(ds.test) == len(ds)


def test_task_counts():
    counts = tasks.task_counts()
    assert set(counts) == set(ALL)
    for name, c in counts.items():
        assert c["n"] == len(tasks.load_builtin(name)) == c["train"] + c["test"]
        assert c["train"] > c["test"] > 0


def test_unknown_task_lists_names():
    with pytest.raises(ValueError) as e:
        tasks.load_builtin("nope")
    for name in ALL:
        assert name in str(e.value)


@pytest.mark.parametrize("name", ["capitals", "city_country", "elements", "currencies"])
def test_candidates_contain_gold(name):
    ds = tasks.load_builtin(name)
    cands = {c.casefold() for c in ds.candidates}
    assert ds.candidates and len(set(ds.candidates)) == len(ds.candidates)
    assert all(q.gold.casefold() in cands for q in ds)
    if name != "currencies":
        assert all(a.casefold() in cands for q in ds for a in q.answers)


def test_capitals_facts_and_skips():
    ds = tasks.load_builtin("capitals")
    fr = _find(ds, "What is the capital of France?")
    assert fr.gold == "Paris" and fr.skill == "factual" and fr.grade == "alias"
    assert _find(ds, "What is the capital of Japan?").gold == "Tokyo"
    assert "Bogota" in _find(ds, "What is the capital of Colombia?").answers  # folded alias
    assert {"sources_disagree", "no_capital"} <= set(ds.skipped)
    assert ds.skipped["sources_disagree"] >= 5
    assert "Bujumbura" in ds.candidates and "Gitega" in ds.candidates  # disagreeing sources
    assert not any(q.question.endswith("of Burundi?") for q in ds)


def test_city_country_facts_and_aliases():
    ds = tasks.load_builtin("city_country")
    assert _find(ds, "In which country is the city of Tokyo?").gold == "Japan"
    ny = _find(ds, "In which country is the city of New York City?")
    assert {"United States", "USA", "US", "United States of America"} <= set(ny.answers)
    london = _find(ds, "In which country is the city of London?")  # dominates London, Ontario
    assert london.gold == "United Kingdom" and {"UK", "Britain"} <= set(london.answers)
    assert "ambiguous_name" in ds.skipped
    assert not any(q.question.endswith("of Valencia?") for q in ds)  # Spain vs Venezuela
    assert not any(q.question.endswith("of Singapore?") for q in ds)  # answer in the question
    # No ISO-code noise or native scripts among the aliases.
    assert "FR" not in _find(ds, "In which country is the city of Paris?").answers
    assert all(a.isascii() or "ô" in a or "ü" in a for q in ds for a in q.answers)


def test_currencies_facts():
    ds = tasks.load_builtin("currencies")
    jp = _find(ds, "What is the currency of Japan?")
    assert jp.gold == "Yen" and "JPY" in jp.answers
    de = _find(ds, "What is the currency of Germany?")
    assert de.gold == "Euro" and "EUR" in de.answers
    assert "Yen" in ds.candidates


def test_elements_facts():
    ds = tasks.load_builtin("elements")
    assert _find(ds, "What is the chemical symbol of Gold?").answers == ("Au",)
    assert _find(ds, "What is the chemical symbol of Hydrogen?").gold == "H"
    assert ds[0].id == "001" and ds[-1].id == "118"
    assert {"Au", "Gold", "Og"} <= set(ds.candidates)


def test_fanoutqa_shape():
    ds = tasks.load_builtin("fanoutqa")
    assert all("/" in q.id for q in ds)
    assert {q.grade for q in ds} == {"alias", "numeric"}
    assert all(len(q.gold.split()) <= tasks.FANOUT_MAX_ANSWER_WORDS for q in ds)
    assert {"long_answer", "non_scalar_answer"} <= set(ds.skipped)
    burrell = _find(ds, "What is the batting hand of Pat Burrell?")
    assert burrell.gold == "Right" and burrell.id.startswith("7dcbbbdc7f1120cd/")
    for q in ds:
        if q.grade == "numeric":
            float(q.answers[-1].rstrip("%"))  # parses once commas are gone


def test_arithmetic_correct():
    ds = tasks.load_builtin("arithmetic")
    ops = set()
    for q in ds:
        a, op, b = q.question.removeprefix("What is ").removesuffix("?").split()
        ops.add(op)
        expected = int(a) + int(b) if op == "+" else int(a) * int(b)
        assert q.gold == str(expected)
        assert q.grade == "numeric" and q.skill == "arithmetic"
        assert 10 <= int(a) <= 999 and 10 <= int(b) <= 999
    assert ops == {"+", "*"}
    assert ds.candidates == ()


def test_missing_package_errors_name_it(monkeypatch):
    with pytest.raises(ImportError, match="'some-pypi-pkg'"):
        task_utils._require("tl_truth_no_such_module", "some-pypi-pkg", "demo")
    monkeypatch.setattr(other_tasks.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="fanoutqa"):
        tasks.fanoutqa.__wrapped__()
