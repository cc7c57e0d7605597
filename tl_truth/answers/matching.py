"""Text matching: find a gold alias, a candidate or an option inside an answer, robustly.

The text matching is done by one small engine (`find_span`) that works on a character-level
folding of the text (NFKD, casefold, combining marks dropped) and keeps, for every folded
character, the index of the original character it came from, so every match maps back to an
exact substring of the original answer. `tl_truth.answers.exact_answer.locate` is its public face.

It is its own module because grading, refusal detection and exact-answer location all match
text, and must all match it the same way.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

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

    Args:
        text: any string (anything else normalises to "").

    Returns:
        The normalised string: two answers are "the same" when these are equal.

    >>> normalize("The U.S.A. is Bogotá's   neighbour!")
    'usa is bogotas neighbour'
    >>> normalize(None)
    ''
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
