"""Grade a generated answer against a `Question`: correct, incorrect, or a refusal.

Three graders, picked by `Question.grade`:

* ``alias``   correct when any gold alias occurs in the answer as a whole-word match, compared
              after normalisation (accents, case, punctuation, and articles between words
              ignored), so "Rome" does not match "Romeo" but "Bogota" matches "Bogotá" and
              "Rome" matches "Rome's".
* ``numeric`` correct when the FIRST number the answer mentions equals a gold number. We take
              the first mention, not "any mention", because models restate the question's numbers
              or list several guesses; the first number is the one the answer commits to (and the
              one whose tokens `exact_answer` points at). "1,234", "-5", "3.5", "2.1 million" and
              number words ("twenty-one", "three hundred") are understood.
* ``choice``  correct when the first-mentioned option (earliest whole-word occurrence, ties to
              the longest option) is a gold option.

Refusals ("I don't know", "As an AI language model...", empty text) are detected first and
graded ``correct=False, category="refusal"``.

The text matching lives in `tl_truth.answers.matching`, refusal detection in
`tl_truth.answers.refusals` and number extraction in `tl_truth.answers.numbers`; this module
holds the graders and re-exports those names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, NamedTuple

from tl_truth.answers.matching import (
    ARTICLES,
    PUNCT,
    SPACE,
    Folded,
    find_first,
    find_span,
    fold,
    fold_char,
    fold_key,
    normalize,
)
from tl_truth.answers.numbers import NumberMention, extract_numbers, numbers_equal
from tl_truth.answers.refusals import is_refusal, refusal_reason
from tl_truth.data.questions import Question

__all__ = [
    "ARTICLES",
    "PUNCT",
    "SPACE",
    "Category",
    "Folded",
    "Grade",
    "NumberMention",
    "OptionMention",
    "committed_number",
    "extract_numbers",
    "find_first",
    "find_span",
    "fold",
    "fold_char",
    "fold_key",
    "gold_numbers",
    "gold_option_indices",
    "grade",
    "is_refusal",
    "normalize",
    "numbers_equal",
    "option_mentions",
    "refusal_reason",
]

Category = Literal["correct", "incorrect", "refusal"]

# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------


class OptionMention(NamedTuple):
    index: int  # index into question.options
    start: int
    end: int


_LETTER_VERBS = frozenset(
    "is was would seems looks should could must will can appears fits matches best".split()
)


def _letter_mentions(answer: str, letter: str) -> list[tuple[int, int]]:
    """Mentions of a single-letter option ("B"): "(b)", "B)", or a standalone capital "B"."""
    spans = []
    lo, up = letter.lower(), letter.upper()
    for m in re.finditer(rf"(?<!\w)\(([{lo}{up}])\)", answer):
        spans.append(m.span(1))
    for m in re.finditer(rf"(?<![\w(]){re.escape(up)}(?=\))", answer):
        spans.append(m.span())
    for m in re.finditer(rf"(?<![\w(]){re.escape(up)}(?![\w)])", answer):
        if up in "AI":  # the article "A" and the pronoun "I"
            nxt = re.match(r"\s+([a-z]+)", answer[m.end() :])
            if nxt and nxt.group(1) not in _LETTER_VERBS:
                continue
        spans.append(m.span())
    return spans


def option_mentions(question: Question, answer: str) -> list[OptionMention]:
    """Where each option is mentioned (its first mention), sorted by position then length."""
    out: list[OptionMention] = []
    if not isinstance(answer, str):
        return out
    opts = question.options
    letters = all(len(o.strip()) == 1 and o.strip().isalpha() for o in opts)
    for i, opt in enumerate(opts):
        if letters:
            spans = _letter_mentions(answer, opt.strip())
            span = min(spans) if spans else None
        else:
            hit = find_first(answer, [opt])
            span = hit[:2] if hit else None
            if span is None and i < 26:
                # The whole answer is just the option's letter: "B", "(B)", "B."
                m = re.fullmatch(rf"\s*\(?({chr(65 + i)})\)?[.:]?\s*", answer)
                span = m.span(1) if m else None
        if span is not None:
            out.append(OptionMention(i, span[0], span[1]))
    out.sort(key=lambda o: (o.start, -(o.end - o.start)))
    return out


# --------------------------------------------------------------------------------------------
# Grading
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grade:
    """The verdict on one answer (made by `grade`).

    Args:
        correct: True only for category "correct" (refusals are False).
        category: "correct" | "incorrect" | "refusal".
        matched: the gold alias / gold number (as written in `Question.answers`) / option that
            made the answer correct, else None.
        reason: short human-readable explanation.
        predicted: what the answer committed to when the grader can tell (the first number or
            the first-mentioned option, as written in the answer / options), else None.

    >>> g = Grade(False, "refusal", reason="refusal: i do not know")
    >>> g.correct, g.label, g.matched
    (False, 0, None)
    """

    correct: bool
    category: Category
    matched: str | None = None
    reason: str = ""
    predicted: str | None = None

    @property
    def label(self) -> int:
        """1 if correct else 0 (the probe's target)."""
        return int(self.correct)


def _grade_alias(question: Question, answer: str) -> Grade:
    hit = find_first(answer, question.answers, case_sensitive=question.case_sensitive)
    if hit is None:
        return Grade(False, "incorrect", None, "no gold alias in answer")
    s, e, alias = hit
    return Grade(True, "correct", alias, f"gold alias {alias!r} found", answer[s:e])


def gold_numbers(question: Question) -> list[tuple[float, str]]:
    """(value, alias) for every gold alias that parses as a number."""
    out = []
    for a in question.answers:
        nums = extract_numbers(a)
        if nums:
            out.append((nums[0].value, a))
    return out


def committed_number(question: Question, answer: str) -> NumberMention | None:
    """The number an answer commits to: the first one that does not echo the question.

    Models restate the operands ("62 * 91 = 5642"); the first number would grade the echo.
    If every number echoes the question ("5 * 1 = 5"), the last one is the answer.
    """
    nums = extract_numbers(answer)
    if not nums:
        return None
    asked = [n.value for n in extract_numbers(question.question)]
    fresh = [n for n in nums if not any(numbers_equal(n.value, a) for a in asked)]
    return fresh[0] if fresh else nums[-1]


def _grade_numeric(question: Question, answer: str) -> Grade:
    golds = gold_numbers(question)
    if not golds:
        g = _grade_alias(question, answer)
        return Grade(g.correct, g.category, g.matched, f"gold not numeric; {g.reason}", g.predicted)
    first = committed_number(question, answer)
    if first is None:
        return Grade(False, "incorrect", None, "no number in answer")
    for value, alias in golds:
        if numbers_equal(first.value, value):
            return Grade(True, "correct", alias, f"first number {first.text!r} == gold", first.text)
    return Grade(
        False,
        "incorrect",
        None,
        f"first number {first.text!r} != gold {question.gold!r}",
        first.text,
    )


def gold_option_indices(question: Question) -> set[int]:
    """Indices of the options that are gold (by normalised text, or by letter "B" -> 1)."""
    gold = {normalize(a) for a in question.answers}
    idx = {i for i, o in enumerate(question.options) if normalize(o) in gold}
    for a in question.answers:
        a = a.strip()
        if len(a) == 1 and a.isalpha() and not idx:
            i = ord(a.upper()) - 65
            if 0 <= i < len(question.options):
                idx.add(i)
    return idx


def _grade_choice(question: Question, answer: str) -> Grade:
    mentions = option_mentions(question, answer)
    if not mentions:
        return Grade(False, "incorrect", None, "no option mentioned")
    first = mentions[0]
    opt = question.options[first.index]
    if first.index in gold_option_indices(question):
        return Grade(True, "correct", opt, f"first option {opt!r} is gold", opt)
    return Grade(False, "incorrect", None, f"first option {opt!r} is not gold", opt)


def grade(question: Question, answer: str) -> Grade:
    """Grade `answer` for `question` (refusal first, then by `question.grade`).

    Args:
        question: the question; its `grade` picks the grader ("alias", "numeric", "choice").
        answer: the generated text.

    Returns:
        A `Grade`: correct, incorrect or refusal, with what matched and why.

    >>> from tl_truth.data import make_question
    >>> q = make_question("FR", "What is the capital of France?", "Paris", "capitals", "factual")
    >>> grade(q, "It is Paris.").correct, grade(q, "Lyon.").category
    (True, 'incorrect')
    >>> grade(q, "I don't know.").category
    'refusal'
    >>> n = make_question("1", "What is 12 + 30?", "42", "arithmetic", "arithmetic",
    ...                   grade="numeric")
    >>> grade(n, "12 + 30 = 42").predicted  # the operands the answer restates do not count
    '42'
    """
    why = refusal_reason(answer)
    if why is not None:
        return Grade(False, "refusal", None, f"refusal: {why}")
    if question.grade == "numeric":
        return _grade_numeric(question, answer)
    if question.grade == "choice":
        return _grade_choice(question, answer)
    return _grade_alias(question, answer)
