"""Locate the exact answer: the few characters of a generation that decide its correctness.

Orgad et al. (2024) find that truthfulness signals concentrate on the *exact answer tokens*
("Paris" inside "The capital of France is Paris, a city of..."). This module finds those as a
character span of the generated text; mapping characters to tokens (tokenizer offsets) is done
downstream.

`find_exact_answer` follows the paper's procedure, with string matching first:

(a) correct answer: the gold alias / number / option that matched, located in the original
    text (robust to case, accents and punctuation), earliest occurrence;
(b) wrong answer: the earliest task candidate (ties: the longest; candidates the question itself
    mentions are only used if nothing else matches), for numeric tasks the first number, for
    choice tasks the first-mentioned option;
(c) otherwise an extractor (in practice a model prompted with `EXTRACTION_PROMPT`), whose output
    is accepted only if it is found in the generation;
otherwise nothing, with the reason. Refusals have no exact answer.

That is the paper's rule (`locate="paper"`), and it has a bias: a right answer is found by its
gold (always, by construction) while a wrong one needs a candidate match or the extractor, so
the located rate and *the kind of span located* differ by class, and a probe can learn that
difference instead of correctness. `locate="blind"` (the default) never reads the gold or the
grade: the same steps (b) and (c) run for every answer, right or wrong (task candidates, the
committed number, the first option, else the extractor); grading is unchanged. Reports show the
located rate per class so the difference is visible either way.

Invariant: when `char_span` is not None, `answer[char_span[0]:char_span[1]] == text`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from tl_truth.answers.grading import (
    Grade,
    committed_number,
    find_first,
    find_span,
    gold_option_indices,
    option_mentions,
    refusal_reason,
)
from tl_truth.answers.grading import (
    grade as grade_answer,
)
from tl_truth.data.questions import Question, make_question  # noqa: F401 (doctest)

Source = Literal["gold_alias", "candidate", "number", "option", "model", "none"]
Locate = Literal["blind", "paper"]
LOCATE_POLICIES: tuple[str, ...] = ("blind", "paper")
Extractor = Callable[[Question, str], str]

NO_ANSWER = "NO ANSWER"

# The extraction prompt of Orgad et al. (2024), as in the authors' code
# (technion-cs-nlp/LLMsKnow, src/extract_exact_answer.py): two few-shot examples, one of them
# a non-answer, then the question and the long answer. Used with Mistral-7B-Instruct there.
EXTRACTION_PROMPT = """\
Extract from the following long answer the short answer, only the relevant tokens. If the long \
answer does not answer the question, output NO ANSWER.

Q: Which musical featured the song The Street Where You Live?
A: The song "The Street Where You Live" is from the Lerner and Loewe musical "My Fair Lady." \
It is one of the most famous songs from the show, and it is sung by Professor Henry Higgins as \
he reflects on the transformation of Eliza Doolittle and the memories they have shared together.
Exact answer: My Fair Lady

Q: Which Swedish actress won the Best Supporting Actress Oscar for Murder on the Orient Express?
A: I'm glad you asked about a Swedish actress who won an Oscar for "Murder on the Orient \
Express," but I must clarify that there seems to be a misunderstanding here. No Swedish actress \
has won an Oscar for Best Supporting Actress for that film. The 1974 "Murder on the Orient \
Express" was an American production, and the cast was predominantly British and American. If \
you have any other questions or if there's another
Exact answer: NO ANSWER

Q: {question}
A: {answer}
Exact answer:"""


def extraction_prompt(question: Question | str, answer: str) -> str:
    """`EXTRACTION_PROMPT` filled in (braces in the texts are safe)."""
    q = question.question if isinstance(question, Question) else str(question)
    return EXTRACTION_PROMPT.format(question=q, answer=answer)


def clean_extraction(raw: str) -> str:
    """Tidy a model's reply to `EXTRACTION_PROMPT` as the authors did: first line, drop an
    "Exact answer:" echo, cut at "(", strip whitespace, quotes and a final period."""
    text = (raw or "").replace("</s>", "").replace("<|eot_id|>", "").strip()
    text = text.split("\n")[0]
    text = re.sub(r"^\s*exact answer\s*:\s*", "", text, flags=re.IGNORECASE)
    text = text.split("(")[0]
    return text.strip().strip("\"'\u201c\u201d\u2018\u2019`*").strip().rstrip(".").strip()


@dataclass(frozen=True)
class ExactAnswer:
    """The exact answer inside a generation (made by `find_exact_answer`).

    Args:
        text: the exact substring of the generation, or None.
        char_span: [start, end) into the generation, `generation[start:end] == text`, or None.
        source: "gold_alias" | "candidate" | "number" | "option" | "model" | "none".
        reason: how it was found, or why not ("refusal", "no_match",
            "model_output_not_substring", "model_no_answer", ...).

    >>> e = ExactAnswer.at("It is Paris.", 6, 11, "candidate", "first_candidate")
    >>> e.text, e.char_span, e.found
    ('Paris', (6, 11), True)
    >>> ExactAnswer.none("refusal").found
    False
    """

    text: str | None
    char_span: tuple[int, int] | None
    source: Source
    reason: str

    @property
    def found(self) -> bool:
        """Whether an exact answer was located (`char_span` is not None)."""
        return self.char_span is not None

    @classmethod
    def none(cls, reason: str) -> ExactAnswer:
        """No exact answer, and why (`reason`)."""
        return cls(None, None, "none", reason)

    @classmethod
    def at(cls, answer: str, start: int, end: int, source: Source, reason: str) -> ExactAnswer:
        """The exact answer `answer[start:end]`, found by `source` for `reason`."""
        return cls(answer[start:end], (start, end), source, reason)


def locate(haystack: str, needle: str) -> tuple[int, int] | None:
    """Find `needle` in `haystack`, modulo case, accents, whitespace and punctuation.

    Returns the [start, end) character span of the earliest whole-word occurrence in the
    ORIGINAL `haystack` (so `haystack[start:end]` is what the model actually wrote), or None.

    How: both strings are folded one character at a time (NFKD, casefold, accents dropped;
    whitespace and punctuation become separators) while recording which original character
    each folded character came from; the needle becomes a regex over the folded haystack in
    which its punctuation is optional ("U.S.A." ~ "USA", "Jean-Paul" ~ "Jean Paul"), its
    whitespace needs some separator, and its edge punctuation is ignored ('"Paris."' ~
    "Paris"). A match must start and end on word boundaries ("Rome" is not in "Romeo" but is
    in "Rome's"; no boundary is needed next to CJK/Thai-like scripts) and may not split the
    fold of one character ("ß" -> "ss"); it maps back through the offset table, plus any
    combining marks right after it.
    """
    return find_span(haystack, needle)


def _first_candidate(
    question: Question, answer: str, candidates: Sequence[str]
) -> tuple[int, int, str] | None:
    """Earliest candidate in the answer (ties: longest); the question's own entities last."""
    if not candidates:
        return None
    cs = question.case_sensitive
    echoed = {c for c in candidates if find_span(question.question, c, case_sensitive=cs)}
    fresh = [c for c in candidates if c not in echoed]
    hit = find_first(answer, fresh, case_sensitive=cs)
    if hit is not None or not echoed:
        return hit
    # An echoed entity inside a restatement of the question ("The capital of Aruba is
    # Aruba") is not the answer; a later mention is.
    first = find_first(answer, sorted(echoed), case_sensitive=cs)
    if first is None or not _restates_question(question.question, answer, first[0]):
        return first
    again = find_first(answer[first[1] :], [first[2]], case_sensitive=cs)
    return None if again is None else (first[1] + again[0], first[1] + again[1], first[2])


def _restates_question(question: str, answer: str, start: int) -> bool:
    """Whether the two words before `start` in the answer both come from the question."""
    before = _WORD.findall(answer[:start])[-2:]
    q_words = {w.casefold() for w in _WORD.findall(question)}
    return len(before) == 2 and all(w.casefold() in q_words for w in before)


def _locate_model_output(answer: str, output: str) -> tuple[int, int] | None:
    """The extractor's output in the answer: whole-word via `locate` (earliest), else as a
    raw substring, exact then case-insensitive (the paper's own test)."""
    span = locate(answer, output)
    if span is not None:
        return span
    at = answer.find(output)
    if at >= 0:
        return at, at + len(output)
    m = re.search(re.escape(output), answer, flags=re.IGNORECASE)
    return m.span() if m else None


def find_exact_answer(
    question: Question,
    answer: str,
    grade: Grade | None = None,
    candidates: Sequence[str] = (),
    extractor: Extractor | None = None,
    locate: Locate = "blind",
) -> ExactAnswer:
    """Locate the exact answer of `answer` (see the module docstring for the order).

    Args:
        question: the question (its gold is read only when `locate="paper"`).
        answer: the generated text.
        grade: `paper` only; defaults to `tl_truth.answers.grading.grade(question, answer)`.
        candidates: the task's answer vocabulary (`QADataset.candidates_for(task)`).
        extractor: `extractor(question, answer) -> str`, called only when string matching
            fails; its output (tidied by `clean_extraction`) is kept only if found in `answer`.
            Extractor errors propagate.
        locate: "blind" (default: never reads the gold or the grade, the same procedure for
            right and wrong answers) or "paper" (the gold alias first for correct answers).

    Returns:
        An `ExactAnswer`; `answer[span[0]:span[1]] == text` when found.

    >>> q = make_question("1", "What is the capital of France?", "Paris", "capitals", "factual")
    >>> find_exact_answer(q, "It is Lyon, not Paris.", candidates=["Lyon", "Paris"]).text
    'Lyon'
    >>> find_exact_answer(q, "It is Lyon, not Paris.", locate="paper").text
    'Paris'
    """
    if locate not in LOCATE_POLICIES:
        raise ValueError(f"locate must be one of {LOCATE_POLICIES}, got {locate!r}")
    if not isinstance(answer, str):
        return ExactAnswer.none("refusal")
    if locate == "blind":
        if refusal_reason(answer) is not None:
            return ExactAnswer.none("refusal")
    else:
        if grade is None:
            grade = grade_answer(question, answer)
        if grade.category == "refusal":
            return ExactAnswer.none("refusal")

    # (a) paper only, correct answers: the gold that matched
    if locate == "paper" and grade.correct:
        if question.grade == "numeric":
            num = committed_number(question, answer)
            if num is not None:
                return ExactAnswer.at(answer, num.start, num.end, "number", "gold_number")
        elif question.grade == "choice":
            gold = gold_option_indices(question)
            for m in option_mentions(question, answer):
                if m.index in gold:
                    return ExactAnswer.at(answer, m.start, m.end, "option", "gold_option")
        hit = find_first(answer, question.answers, case_sensitive=question.case_sensitive)
        if hit is not None:
            return ExactAnswer.at(answer, hit[0], hit[1], "gold_alias", "gold_alias")

    # (b) every answer under "blind"; wrong ones (or an unlocated correct one) under "paper"
    if question.grade == "numeric":
        num = committed_number(question, answer)
        if num is not None:
            return ExactAnswer.at(answer, num.start, num.end, "number", "committed_number")
    elif question.grade == "choice":
        mentions = option_mentions(question, answer)
        if mentions:
            m = mentions[0]
            return ExactAnswer.at(answer, m.start, m.end, "option", "first_option")
    hit = _first_candidate(question, answer, candidates)
    if hit is not None:
        return ExactAnswer.at(answer, hit[0], hit[1], "candidate", "first_candidate")

    # (c) ask the extractor
    if extractor is None:
        return ExactAnswer.none("no_match")
    output = clean_extraction(extractor(question, answer))
    if not output:
        return ExactAnswer.none("model_output_empty")
    if output.upper() == NO_ANSWER:
        return ExactAnswer.none("model_no_answer")
    span = _locate_model_output(answer, output)
    if span is None:
        return ExactAnswer.none("model_output_not_substring")
    trimmed = trim_to_answer(question.question, answer, span)
    if trimmed is None:
        return ExactAnswer.none("model_output_only_question_words")
    n_words = len(_WORD.findall(answer[trimmed[0] : trimmed[1]]))
    if n_words > MAX_MODEL_EXACT_WORDS:
        # A small extractor often returns the whole sentence: that is not an exact answer.
        return ExactAnswer.none("model_output_too_long")
    # A clause after a comma, semicolon or bracket is commentary, not the answer itself.
    clause = re.search(r"[,;(]", answer[trimmed[0] : trimmed[1]])
    if clause is not None:
        head = trim_to_answer(question.question, answer, (trimmed[0], trimmed[0] + clause.start()))
        trimmed = head or trimmed
    reason = "model_extraction" if trimmed == span else "model_extraction_trimmed"
    return ExactAnswer.at(answer, trimmed[0], trimmed[1], "model", reason)


MAX_MODEL_EXACT_WORDS = 6
_WORD = re.compile(r"\w[\w'\u2019-]*")
_FUNCTION_WORDS = frozenset(
    "a an the is are was were be been of in on at to for by and or it its this that which "
    "what who where when called named".split()
)


def trim_to_answer(question: str, answer: str, span: tuple[int, int]) -> tuple[int, int] | None:
    """Drop words at the edges of a span that only echo the question or are function words.

    "The capital of Namibia is Cape Town" for "What is the capital of Namibia?" -> "Cape Town".
    Returns None when nothing else is left.
    """
    q_words = {w.casefold() for w in _WORD.findall(question)} | _FUNCTION_WORDS
    words = [
        (m.start() + span[0], m.end() + span[0])
        for m in _WORD.finditer(answer[span[0] : span[1]])
        if m.group().casefold() not in q_words
    ]
    if not words:
        return None
    return words[0][0], words[-1][1]
