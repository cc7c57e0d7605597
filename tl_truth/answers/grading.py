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

The text matching is done by one small engine (`find_span`) that works on a character-level
folding of the text (NFKD, casefold, combining marks dropped) and keeps, for every folded
character, the index of the original character it came from, so every match maps back to an
exact substring of the original answer. `tl_truth.answers.exact_answer.locate` is its public face.
"""

from __future__ import annotations

import math
import re
import string
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, NamedTuple

from tl_truth.data.questions import Question

Category = Literal["correct", "incorrect", "refusal"]

ARTICLES = frozenset({"a", "an", "the"})

# --------------------------------------------------------------------------------------------
# Character folding
# --------------------------------------------------------------------------------------------

SPACE = " "  # whitespace / control characters in the folded stream
PUNCT = "\x00"  # punctuation in the folded stream (control chars never survive as themselves)
_SEPARATORS = frozenset((SPACE, PUNCT))
_ASCII_PUNCT = frozenset(string.punctuation)


@lru_cache(maxsize=8192)
def fold_char(ch: str) -> str:
    """Fold one character for matching.

    NFKD, casefold, NFKD again (casefolding can produce decomposable characters, e.g. "İ"),
    then: nonspacing marks (accents) and format characters are dropped, whitespace and control
    characters become `SPACE`, punctuation (Unicode P* and ASCII `string.punctuation`) becomes
    `PUNCT`; everything else is kept. One character may fold to zero, one or several ("ß" ->
    "ss", "ﬁ" -> "fi").
    """
    out = []
    once = unicodedata.normalize("NFKD", ch).casefold()
    for d in unicodedata.normalize("NFKD", once):
        cat = unicodedata.category(d)
        if cat in ("Mn", "Cf"):
            continue
        if d.isspace() or cat in ("Cc", "Zs", "Zl", "Zp"):
            out.append(SPACE)
        elif cat[0] == "P" or d in _ASCII_PUNCT:
            out.append(PUNCT)
        else:
            out.append(d)
    return "".join(out)


def fold_key(text: str) -> str:
    """The folded text with every separator removed: what two strings must share to match.

    `fold_key(haystack[start:end]) == fold_key(needle)` for any span `find_span` returns.
    """
    return "".join(c for ch in text for c in fold_char(ch) if c not in _SEPARATORS)


def normalize(text: str) -> str:
    """SQuAD/TriviaQA-style normalisation of a whole string.

    Accent folding (NFKD, combining marks dropped), casefolding, punctuation removed (deleted,
    as in SQuAD, so "U.S.A." -> "usa" and "it's" -> "its"), the articles a/an/the removed, and
    whitespace collapsed.
    """
    if not isinstance(text, str):
        return ""
    chars = []
    for ch in text:
        for d in fold_char(ch):
            if d != PUNCT:
                chars.append(d)
    words = "".join(chars).split()
    return " ".join(w for w in words if w not in ARTICLES)


# --------------------------------------------------------------------------------------------
# The matching engine: folded stream with an offset map, needle compiled to a regex
# --------------------------------------------------------------------------------------------

_NO_SPACE_RANGES = (
    (0x0E00, 0x0EFF),  # Thai, Lao
    (0x1000, 0x109F),  # Myanmar
    (0x1780, 0x17FF),  # Khmer
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x3100, 0x31FF),  # Bopomofo etc.
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0x20000, 0x3FFFF),  # CJK extensions B+
)


def _no_space_script(ch: str) -> bool:
    """Scripts written without spaces between words: no word boundary is required there."""
    o = ord(ch)
    return any(lo <= o <= hi for lo, hi in _NO_SPACE_RANGES)


def _is_word(ch: str) -> bool:
    return ch.isalnum() or unicodedata.category(ch)[0] == "M"


def _needs_boundary(a: str, b: str) -> bool:
    """Whether a match edge between characters a and b must be a word boundary to be valid."""
    return _is_word(a) and _is_word(b) and not (_no_space_script(a) or _no_space_script(b))


@dataclass(frozen=True)
class Folded:
    """A text folded character by character, with the way back to the original offsets."""

    text: str
    stream: str  # concatenated fold_char() of every character
    owner: tuple[int, ...]  # owner[i]: index in `text` of the character stream[i] came from
    start_ok: tuple[bool, ...]  # stream[i] is the first non-separator of its owner's fold
    end_ok: tuple[bool, ...]  # stream[i] is the last non-separator of its owner's fold
    key: str  # stream without separators (for a cheap substring pre-filter)


def _fold(text: str) -> Folded:
    stream: list[str] = []
    owner: list[int] = []
    start_ok: list[bool] = []
    end_ok: list[bool] = []
    for i, ch in enumerate(text):
        f = fold_char(ch)
        tok = [j for j, c in enumerate(f) if c not in _SEPARATORS]
        first, last = (tok[0], tok[-1]) if tok else (-1, -1)
        for j, c in enumerate(f):
            stream.append(c)
            owner.append(i)
            start_ok.append(j == first)
            end_ok.append(j == last)
    s = "".join(stream)
    return Folded(
        text,
        s,
        tuple(owner),
        tuple(start_ok),
        tuple(end_ok),
        "".join(c for c in s if c not in _SEPARATORS),
    )


fold = lru_cache(maxsize=1024)(_fold)  # haystacks: answers, questions
fold.__doc__ = "Fold `text` (cached): the stream `find_span` searches, with its offset map."

_GAP_HARD = "[ \x00]+"  # the needle had whitespace here: the haystack needs some separator
_GAP_SOFT = "[ \x00]*"  # the needle had only punctuation ("Jean-Paul"): anything or nothing
_IN_WORD = "\x00*"  # inside a word, punctuation may be interleaved ("U.S.A." ~ "USA")
_ARTICLE_GAP = "(?:[ \x00]+(?:the|an|a))*"


class _Needle(NamedTuple):
    pattern: re.Pattern[str]
    first: str  # first folded char of the needle (for boundary checks)
    last: str


_Words = tuple[tuple[str, ...], tuple[bool, ...]]


@lru_cache(maxsize=65536)
def _needle_words(needle: str, ignore_articles: bool) -> _Words | None:
    """The needle's folded words and, between them, whether the gap was whitespace (hard)."""
    words: list[str] = []
    gaps: list[bool] = []  # gaps[i] (between words[i] and words[i+1]) is hard
    cur: list[str] = []
    gap_hard: bool | None = None
    for c in _fold(needle).stream:
        if c in _SEPARATORS:
            if cur:
                words.append("".join(cur))
                cur = []
                gap_hard = False
            if gap_hard is not None:
                gap_hard = gap_hard or c == SPACE
        else:
            if not cur and words:
                gaps.append(bool(gap_hard))
            cur.append(c)
            gap_hard = None
    if cur:
        words.append("".join(cur))
    if not words:
        return None
    if ignore_articles and any(w not in ARTICLES for w in words):
        kept_words: list[str] = []
        kept_gaps: list[bool] = []
        pending = False
        for i, w in enumerate(words):
            if i > 0:
                pending = pending or gaps[i - 1]
            if w in ARTICLES:
                continue
            if kept_words:
                kept_gaps.append(pending)
            kept_words.append(w)
            pending = False
        words, gaps = kept_words, kept_gaps
    return tuple(words), tuple(gaps)


@lru_cache(maxsize=16384)
def _needle_regex(words: _Words, ignore_articles: bool) -> _Needle:
    ws, gaps = words
    parts = [_IN_WORD.join(re.escape(c) for c in ws[0])]
    for hard, w in zip(gaps, ws[1:], strict=True):
        gap = _GAP_HARD if hard else _GAP_SOFT
        parts.append((_ARTICLE_GAP + gap) if ignore_articles else gap)
        parts.append(_IN_WORD.join(re.escape(c) for c in w))
    return _Needle(re.compile("".join(parts)), ws[0][0], ws[-1][-1])


def _search(
    f: Folded, needle: str, ignore_articles: bool, case_sensitive: bool = False
) -> tuple[int, int] | None:
    words = _needle_words(needle, ignore_articles)
    if words is None or not all(w in f.key for w in words[0]):
        return None  # cheap pre-filter: each needle word is contiguous in the key
    nd = _needle_regex(words, ignore_articles)
    s_len = len(f.stream)
    pos = 0
    while pos <= s_len:
        m = nd.pattern.search(f.stream, pos)
        if m is None:
            return None
        s, e = m.span()
        pos = s + 1
        if not (f.start_ok[s] and f.end_ok[e - 1]):
            continue  # would split one original character's fold ("ß" -> "s|s")
        if s > 0 and _needs_boundary(f.stream[s - 1], nd.first):
            continue
        if e < s_len and _needs_boundary(nd.last, f.stream[e]):
            continue
        start, end = f.owner[s], f.owner[e - 1] + 1
        text = f.text
        while (
            end < len(text) and unicodedata.category(text[end]) == "Mn" and not fold_char(text[end])
        ):
            end += 1
        if case_sensitive and text[start:end] != needle.strip():
            continue  # symbols: "In" (indium) is not the word "in"
        return start, end
    return None


def find_span(
    haystack: str, needle: str, *, ignore_articles: bool = False, case_sensitive: bool = False
) -> tuple[int, int] | None:
    """Earliest whole-word occurrence of `needle` in `haystack`, as original character offsets.

    Matching is modulo case, accents, compatibility forms, whitespace runs and punctuation
    (punctuation at the needle's edges is ignored; inside it, "U.S.A." ~ "USA", "Jean-Paul" ~
    "Jean Paul", "St. Louis" ~ "St Louis"). The match must sit on word boundaries ("Rome" is
    not found in "Romeo", but is in "Rome's"), except next to scripts written without spaces.
    With `ignore_articles`, the needle's articles are dropped and articles are allowed between
    its words ("The Lord of the Rings" ~ "Lord of Rings").

    Returns `(start, end)` with `haystack[start:end]` the exact original substring (combining
    marks following the last character are included), or None.
    """
    if not isinstance(haystack, str) or not isinstance(needle, str) or not haystack:
        return None
    return _search(fold(haystack), needle, ignore_articles, case_sensitive)


def find_first(
    haystack: str,
    needles: Sequence[str],
    *,
    ignore_articles_fallback: bool = True,
    case_sensitive: bool = False,
) -> tuple[int, int, str] | None:
    """The earliest match among `needles` (ties: the longest), as `(start, end, needle)`.

    Each needle is matched exactly first and, if that fails and `ignore_articles_fallback`,
    with articles ignored.
    """
    if not isinstance(haystack, str) or not haystack:
        return None
    f = fold(haystack)
    best: tuple[int, int, str] | None = None
    for n in needles:
        if not isinstance(n, str):
            continue
        span = _search(f, n, False, case_sensitive)
        if span is None and ignore_articles_fallback and not case_sensitive:
            span = _search(f, n, True)
        if span is None:
            continue
        if best is None or span[0] < best[0] or (span[0] == best[0] and span[1] > best[1]):
            best = (span[0], span[1], n)
    return best


# --------------------------------------------------------------------------------------------
# Refusals
# --------------------------------------------------------------------------------------------

_CONTRACTIONS = (
    (r"\bi'?m\b", "i am"),
    (r"\bcan'?t\b", "cannot"),
    (r"\bwon'?t\b", "will not"),
    (r"\b(do|does|did|is|are|was|were|have|has|had|could|would|should)n'?t\b", r"\1 not"),
    (r"\bi'd\b", "i would"),
    (r"\bi'?ve\b", "i have"),
    (r"\b(it|there|that|this|what)'s\b", r"\1 is"),
)

_FILLER = re.compile(
    r"^(?:(?:well|hmm+|um+|uh+|oh|ok|okay|so|sorry|unfortunately|honestly|regrettably|apologies|"
    r"to be (?:honest|frank)|i am (?:very |so |really )?sorry|i (?:must )?apologi[sz]e|"
    r"i am afraid|i regret to (?:say|inform you))"
    r"(?:\s*[,.!;:\u2014-]+\s*|\s+)(?:but\s+|that\s+)?)+"
)

_SOFT = r"(?:really |honestly |simply |just |truly |unfortunately |currently |personally )?"
_REFUSAL_START = re.compile(
    "^(?:"
    + "|".join(
        [
            rf"i {_SOFT}do not (?:know|have|recall|remember|possess)\b",
            rf"i {_SOFT}(?:cannot|can not|could not|will not be able to|am not able to|am unable to"
            rf"|was unable to|am not in a position to)\b",
            rf"i {_SOFT}(?:am|was) (?:not |un)(?:\w+ )?(?:sure|certain|aware|familiar)\b",
            rf"i {_SOFT}have no (?:\w+ )?(?:idea|clue|information|knowledge|data|record|way|access)\b",
            r"not (?:\w+ )?(?:sure|certain)\b",
            r"no (?:idea|clue|information|data|answer|reliable|record|one knows|one can)\b",
            r"nobody (?:knows|can)\b",
            r"there (?:is|are|was|were) no (?:\w+ )?(?:information|data|records?|answer|way|evidence"
            r"|consensus|such)\b",
            r"(?:it|this|that) is (?:not possible|impossible|unclear|unknown|not known|not clear"
            r"|(?:difficult|hard) to (?:say|determine|know|tell))\b",
            r"as an? (?:ai|artificial intelligence|language model|large language model|llm"
            r"|(?:digital |virtual |ai )?assistant|text-based)\b",
            r"(?:unknown|not known|n/?a|no answer|unanswerable|cannot be determined|not applicable)"
            r"[\s.!]*$",
        ]
    )
    + ")"
)
# "The exact date is unknown.", "Her real name remains unknown." (a narrow subject, so that
# "Paris, whose founding date is unknown" is not taken for a refusal)
_REFUSAL_STATE = re.compile(
    r"^(?:the (?:answer|(?:exact|precise|true|actual|correct) [\w ]{1,30}?)"
    r"|(?:his|her|its|their) [\w ]{1,30}?)"
    r" (?:is|are|was|were|remains?) (?:currently |still |largely )?"
    r"(?:unknown|not known|unclear|not publicly (?:known|available))\b"
)
# After a refusal phrase, these mean the model went on to commit to an answer anyway.
_GUESS = re.compile(
    r"\b(?:but|however|though|although|i think|i believe|i guess|i suspect|my (?:best )?guess"
    r"|probably|perhaps|maybe|possibly|likely|might be|may be|could be|i would say"
    r"|if i had to)\b"
    r"(?!,? (?:you|i can|i could|i would (?:recommend|suggest)|i do not|i cannot|i am not|"
    r"i have no|feel free|please|it is (?:best|recommended|advisable)|if you|there is no)\b)"
)


def _prep(answer: str) -> str:
    t = unicodedata.normalize("NFKC", answer)
    t = t.replace("\u2019", "'").replace("\u2018", "'").replace("`", "'").casefold()
    t = " ".join(t.split())
    for pat, rep in _CONTRACTIONS:
        t = re.sub(pat, rep, t)
    return t.strip(" \"'*_([")


def refusal_reason(answer: object) -> str | None:
    """Why `answer` is a refusal (the phrase that gave it away), or None if it is not one."""
    if not isinstance(answer, str) or not fold_key(answer):
        return "empty"
    t = _prep(answer)
    m = _FILLER.match(t)
    if m:
        t = t[m.end() :]
        if not fold_key(t):
            return "apology only"
    m = _REFUSAL_START.match(t) or _REFUSAL_STATE.match(t)
    if m is None:
        return None
    if _GUESS.search(t, m.end()):
        return None  # "I'm not sure, but I think it's Paris": hedged, not refused
    return m.group(0).strip(" .!")


def is_refusal(answer: object) -> bool:
    """Whether the answer declines to answer (empty, "I don't know", "As an AI ...", ...).

    Only refusal phrases at the start of the answer (after fillers like "Sorry,") count, plus
    "X is unknown" statements in the first sentence; a refusal followed by a guess ("I don't
    know, maybe Paris") is not a refusal. A real answer that merely contains "not" ("It is not
    Sydney but Canberra") is not a refusal.
    """
    return refusal_reason(answer) is not None


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
    """The verdict on one answer.

    correct:   True only for category "correct" (refusals are False).
    category:  "correct" | "incorrect" | "refusal".
    matched:   the gold alias / gold number (as written in `Question.answers`) / option that
               made the answer correct, else None.
    reason:    short human-readable explanation.
    predicted: what the answer committed to when the grader can tell (the first number or the
               first-mentioned option, as written in the answer / options), else None.
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
    """Grade `answer` for `question` (refusal first, then by `question.grade`)."""
    why = refusal_reason(answer)
    if why is not None:
        return Grade(False, "refusal", None, f"refusal: {why}")
    if question.grade == "numeric":
        return _grade_numeric(question, answer)
    if question.grade == "choice":
        return _grade_choice(question, answer)
    return _grade_alias(question, answer)
