"""Numbers in text: every number an answer mentions, digits or words, with its character span.

The numeric grader compares the number an answer commits to with the gold one, and the
exact-answer locator points at that number's tokens; both need the numbers of a text with
their positions: "1,234", "-5", "3.5", "2.1 million", "twenty-one", "three hundred and five".
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple

# --------------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------------


class NumberMention(NamedTuple):
    value: float
    start: int
    end: int
    text: str


_SCALES = {"thousand": 1e3, "million": 1e6, "billion": 1e9, "trillion": 1e12}
_UNITS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen".split()
    )
}
_TENS = {
    w: 10 * i
    for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), 2)
}
_WORD_VALUES = {**_UNITS, **_TENS, "hundred": 100, **{k: int(v) for k, v in _SCALES.items()}}
_WORD = "(?:" + "|".join(sorted(_WORD_VALUES, key=len, reverse=True)) + ")"

_DIGITS_RE = re.compile(
    r"(?:(?<![\w.])[-\u2212](?=\d))?"  # a sign, unless glued to a word ("COVID-19", "5-3")
    r"(?<![\w.])(?:\d{1,3}(?:,\d{3})+(?!\d|,\d)|\d+)(?:\.\d+)?"
    r"(?:\s+(?:" + "|".join(_SCALES) + r")\b)?",
    re.IGNORECASE,
)
_WORD_RE = re.compile(rf"(?<!\w){_WORD}(?!\w)", re.IGNORECASE)
_JOIN_RE = re.compile(r"[\s-]+|\s+and\s+", re.IGNORECASE)  # between two number words
# "one" as a pronoun: "one of the", "the one", "which one"
_ONE_BEFORE = re.compile(
    r"\b(?:the|this|that|which|no|any|each|every|some|another|only|last|first|right|wrong|"
    r"correct|a|such)\s+$",
    re.IGNORECASE,
)
_ONE_AFTER = re.compile(r"^(?:\s+(?:of|who|that|which|another|can|could|must|should)\b|'s)", re.I)


def _kind(word: str) -> str:
    if word in _SCALES:
        return "scale"
    if word == "hundred":
        return "hundred"
    return "ten" if word in _TENS else "unit"  # unit: zero..nineteen


def _can_follow(prev: str, word: str, joiner: str) -> bool:
    """Whether `word` continues the number ending in `prev` ("twenty" + "one": yes, "one" +
    "two": no); "and" only joins after hundred/scale words ("three hundred and five")."""
    p, k = _kind(prev), _kind(word)
    if "and" in joiner.lower() and p not in ("hundred", "scale"):
        return False
    if p == "unit":
        return k in ("hundred", "scale") and prev != "zero"
    if p == "ten":
        return (k == "unit" and 0 < _UNITS[word] < 10) or k == "scale"
    if p == "hundred":
        return k in ("unit", "ten", "scale")
    return k in ("unit", "ten") and word != "zero"  # after a scale word


def _words_value(words: list[str]) -> float:
    total, current = 0, 0
    for w in words:
        v = _WORD_VALUES[w]
        if w == "hundred":
            current = max(current, 1) * 100
        elif w in _SCALES:
            total += max(current, 1) * v
            current = 0
        else:
            current += v
    return float(total + current)


def _word_numbers(text: str) -> list[tuple[int, int, list[str]]]:
    """Runs of number words that form one number each, as (start, end, words)."""
    runs: list[tuple[int, int, list[str]]] = []
    cur: tuple[int, int, list[str]] | None = None
    for m in _WORD_RE.finditer(text):
        w = m.group(0).lower()
        if cur is not None:
            joiner = text[cur[1] : m.start()]
            if _JOIN_RE.fullmatch(joiner) and _can_follow(cur[2][-1], w, joiner):
                cur = (cur[0], m.end(), [*cur[2], w])
                continue
            runs.append(cur)
        cur = (m.start(), m.end(), [w])
    if cur is not None:
        runs.append(cur)
    return runs


def extract_numbers(text: str) -> list[NumberMention]:
    """Every number mentioned in `text`, in order of appearance, with its character span.

    Digits with thousands commas ("1,234"), signs ("-5", "\u22125"), decimals ("3.5"), scale words
    ("2.1 million") and English number words up to the trillions ("twenty-one", "three
    hundred and five"). A lone "one" used as a pronoun ("one of the", "which one") is skipped.
    Hyphenated ranges "1990-1995" give two positive numbers.
    """
    if not isinstance(text, str):
        return []
    found: list[NumberMention] = []
    for m in _DIGITS_RE.finditer(text):
        raw = m.group(0)
        parts = raw.split()
        num = parts[0].replace(",", "").replace("\u2212", "-")
        try:
            value = float(num)
        except ValueError:
            continue
        if len(parts) > 1:
            value *= _SCALES[parts[-1].lower()]
        found.append(NumberMention(value, m.start(), m.end(), raw))
    taken = [(n.start, n.end) for n in found]
    for s, e, words in _word_numbers(text):
        if any(s < te and ts < e for ts, te in taken):
            continue
        if words == ["one"] and (_ONE_BEFORE.search(text[:s]) or _ONE_AFTER.match(text[e:])):
            continue
        found.append(NumberMention(_words_value(words), s, e, text[s:e]))
    found.sort(key=lambda n: n.start)
    return found


def numbers_equal(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
