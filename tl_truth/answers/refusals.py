"""Refusals: does an answer decline to answer ("I don't know", "As an AI ...", empty text)?

A refusal is neither right nor wrong: graders check for one first and grade it
``category="refusal"``, and the exact-answer locator gives it no span. The rules (phrases at the
start, after fillers such as "Sorry,"; "X is unknown" statements; a guess after the refusal
undoes it) are a set of regular expressions, kept here on their own.
"""

from __future__ import annotations

import re
import unicodedata

from tl_truth.answers.matching import fold_key

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
