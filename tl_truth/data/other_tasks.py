"""The built-in tasks that are not about countries: elements, fanoutqa and arithmetic.

Chemical symbols from periodictable, FanOutQA's human-written single-hop sub-questions (the dev
set inside the fanoutqa package), and seeded arithmetic. Each has its own source and its own
cleaning rules; they share only the helpers of `task_utils`.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any

from tl_truth.data.questions import QADataset, Question, make_question
from tl_truth.data.task_utils import _require, _sorted, _unique

FANOUT_MAX_ANSWER_WORDS = 6
ARITHMETIC_N = 500
ARITHMETIC_SEED = 0


@functools.cache
def elements() -> QADataset:
    """Element questions ("What is the chemical symbol of X?"), elements 1..118.

    Symbols are case-sensitive ("Co" vs "CO"): graders may want an exact-case match here.
    """
    pt = _require("periodictable", "periodictable", "elements")
    skipped: Counter[str] = Counter()
    questions: list[Question] = []
    vocab: list[str] = []
    for el in pt.elements:
        if not 1 <= el.number <= 118:
            skipped["not_an_element"] += 1  # the neutron, number 0
            continue
        name = el.name.capitalize()
        vocab.extend([el.symbol, name])
        questions.append(
            make_question(
                f"{el.number:03d}",
                f"What is the chemical symbol of {name}?",
                [el.symbol],
                task="elements",
                skill="factual",
                case_sensitive=True,  # "In" (indium) must not match the word "in"
            )
        )
    return QADataset(
        "elements",
        _sorted(questions),
        candidates=_unique(vocab),
        source="periodictable",
        skipped=dict(sorted(skipped.items())),
    )


_NUMBER_RE = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?%?")


def _fanout_path() -> Path:
    spec = importlib.util.find_spec("fanoutqa")  # no import: its __init__ pulls heavy deps
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "built-in task 'fanoutqa' needs the PyPI package 'fanoutqa' (pip install fanoutqa)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "fanout-final-dev.json"
    if not path.is_file():
        raise RuntimeError(f"fanoutqa is installed but its dev set is missing: {path}")
    return path


def _format_number(x: int | float) -> str:
    if isinstance(x, float) and x.is_integer():
        x = int(x)
    return str(x)


@functools.cache
def fanoutqa() -> QADataset:
    """FanOutQA dev set, human-written single-hop sub-questions with short scalar answers."""
    data = json.loads(_fanout_path().read_text(encoding="utf-8"))
    skipped: Counter[str] = Counter()
    seen: set[str] = set()
    questions: list[Question] = []

    def visit(root_id: str, node: dict[str, Any]) -> None:
        for i, sub in enumerate(node.get("decomposition") or ()):
            if sub.get("decomposition"):
                skipped["not_single_hop"] += 1
                visit(root_id, sub)
                continue
            text = " ".join(str(sub.get("question") or "").split())
            ans = sub.get("answer")
            grade = "alias"
            if not text:
                skipped["empty_question"] += 1
                continue
            if isinstance(ans, bool):
                answers = ["Yes" if ans else "No"]
            elif isinstance(ans, (int, float)):
                answers, grade = [_format_number(ans)], "numeric"
            elif isinstance(ans, str):
                ans = " ".join(ans.split())
                if not ans:
                    skipped["empty_answer"] += 1
                    continue
                if len(ans.split()) > FANOUT_MAX_ANSWER_WORDS:
                    skipped["long_answer"] += 1
                    continue
                answers = [ans]
                if _NUMBER_RE.fullmatch(ans):
                    grade = "numeric"
                    answers.append(ans.replace(",", ""))
            else:
                skipped["non_scalar_answer"] += 1
                continue
            norm = text.casefold()
            if norm in seen:
                skipped["duplicate_question"] += 1
                continue
            seen.add(norm)
            questions.append(
                make_question(
                    f"{root_id}/{sub.get('id') or i}",
                    text,
                    answers,
                    task="fanoutqa",
                    skill="factual",
                    grade=grade,
                )
            )

    for q in data:
        visit(str(q["id"]), q)
    return QADataset(
        "fanoutqa",
        _sorted(questions),
        candidates=(),
        source="fanoutqa fanout-final-dev.json (single-hop sub-questions)",
        skipped=dict(sorted(skipped.items())),
    )


@functools.cache
def arithmetic(n: int = ARITHMETIC_N, seed: int = ARITHMETIC_SEED) -> QADataset:
    """Seeded "What is a + b?" (2-3 digit operands) and "What is a * b?" (2-digit operands)."""
    rng = random.Random(seed)
    questions: list[Question] = []
    seen: set[str] = set()
    skipped: Counter[str] = Counter()
    while len(questions) < n:
        if rng.random() < 0.5:
            a, b = rng.randint(10, 999), rng.randint(10, 999)
            text, result = f"What is {a} + {b}?", a + b
        else:
            a, b = rng.randint(10, 99), rng.randint(10, 99)
            text, result = f"What is {a} * {b}?", a * b
        if text in seen:
            skipped["duplicate_question"] += 1
            continue
        seen.add(text)
        answers = [str(result)] + ([f"{result:,}"] if result >= 1000 else [])
        questions.append(
            make_question(
                f"{len(questions):04d}",
                text,
                answers,
                task="arithmetic",
                skill="arithmetic",
                grade="numeric",
            )
        )
    return QADataset(
        "arithmetic",
        _sorted(questions),
        candidates=(),
        source=f"random.Random({seed})",
        skipped=dict(sorted(skipped.items())),
    )
