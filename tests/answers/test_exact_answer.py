import dataclasses
import functools
import string
import unicodedata

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tl_truth.answers.exact_answer import (
    EXTRACTION_PROMPT,
    ExactAnswer,
    clean_extraction,
    extraction_prompt,
    locate,
)
from tl_truth.answers.exact_answer import (
    find_exact_answer as _find_exact_answer,
)
from tl_truth.answers.grading import fold_key, grade
from tl_truth.data.questions import make_question

# The tests below pin the paper's rule (gold alias first for correct answers); the blind rule,
# the library default, has its own tests at the end of the file.
find_exact_answer = functools.partial(_find_exact_answer, locate="paper")

CAPITALS = ("Paris", "Lyon", "Rome", "Madrid", "Bogotá", "São Paulo", "New York", "New York City")


def q_alias(*answers, question="What is the capital of France?"):
    return make_question("q", question, list(answers), "t", "s")


def check(ea: ExactAnswer, answer: str):
    """The invariant every result must satisfy."""
    if ea.char_span is None:
        assert ea.text is None and ea.source == "none" and ea.reason
    else:
        s, e = ea.char_span
        assert 0 <= s < e <= len(answer)
        assert answer[s:e] == ea.text
        assert ea.source != "none"


# --------------------------------------------------------------------------- locate


@pytest.mark.parametrize(
    "haystack, needle, expected",
    [
        ("The capital of France is Paris.", "Paris", "Paris"),
        ("The capital of France is Paris.", "paris", "Paris"),
        ("The capital of France is Paris.", '"Paris."', "Paris"),
        ("It's São Paulo", "Sao Paulo", "São Paulo"),
        ("It's São Paulo", "SÃO PAULO", "São Paulo"),
        ("It's Sao Paulo", "São Paulo", "Sao Paulo"),
        ("Bogota is the capital", "Bogotá", "Bogota"),
        ("Bogota\u0301 is the capital", "Bogota", "Bogota\u0301"),  # decomposed accent kept
        ("Romeo and Juliet, in Rome", "Rome", "Rome"),
        ("Romeo and Juliet", "Rome", None),
        ("Rome's history", "Rome", "Rome"),
        ("the U.S.A. is big", "USA", "U.S.A"),
        ("the USA is big", "U.S.A.", "USA"),
        ("Jean-Paul Sartre", "Jean Paul Sartre", "Jean-Paul Sartre"),
        ("Jean Paul  Sartre", "Jean-Paul Sartre", "Jean Paul  Sartre"),
        ("Jean\nPaul Sartre", "jean paul sartre", "Jean\nPaul Sartre"),
        ("Die Straße", "strasse", "Straße"),
        ("DIE STRASSE", "Straße", "STRASSE"),
        ("the ﬁnal answer", "final", "ﬁnal"),
        ("Ｐａｒｉｓ", "paris", "Ｐａｒｉｓ"),
        ("首都は東京です", "東京", "東京"),  # no word boundaries needed in CJK
        ("It is 1,234 apples", "1,234", "1,234"),
        ("It is 11,234 apples", "1,234", None),
        ("", "Paris", None),
        ("Paris", "", None),
        ("Paris", "...", None),
        ("The New York Times", "New York", "New York"),
        ("Newark", "New York", None),
    ],
)
def test_locate(haystack, needle, expected):
    span = locate(haystack, needle)
    if expected is None:
        assert span is None
    else:
        assert span is not None
        assert haystack[span[0] : span[1]] == expected


def test_locate_earliest():
    text = "paris, PARIS and Paris"
    assert locate(text, "Paris") == (0, 5)
    assert locate("Parisian Paris paris", "paris") == (9, 14)


# Property tests ------------------------------------------------------------------------------

WORD = st.text(alphabet=string.ascii_letters + string.digits, min_size=1, max_size=12)
# Haystack text from all of Unicode (hypothesis excludes surrogates by default).
ANY_TEXT = st.text(max_size=40)
# Needles: letters and digits from any script, possibly several words.
UNI_WORD = st.text(
    alphabet=st.characters(categories=("Lu", "Ll", "Lt", "Lo", "Nd")), min_size=1, max_size=8
)
UNI_NEEDLE = st.lists(UNI_WORD, min_size=1, max_size=3).map(" ".join)


@st.composite
def recased(draw, text):
    """`text` with random case changes that keep it equal modulo case folding."""
    out = []
    for ch in text:
        choice = draw(st.sampled_from((ch, ch.upper(), ch.lower(), ch.swapcase())))
        same = choice.casefold() == ch.casefold() and fold_key(choice) == fold_key(ch)
        out.append(choice if same else ch)
    return "".join(out)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(data=st.data(), prefix=ANY_TEXT, suffix=ANY_TEXT, needle=UNI_NEEDLE)
def test_locate_finds_inserted_needle_in_any_text(data, prefix, suffix, needle):
    assume(fold_key(needle))
    variant = data.draw(recased(needle))
    haystack = f"{prefix} {variant} {suffix}"
    # Where the inserted copy's match starts and ends: edge characters that fold to nothing or
    # to a space (U+FC5E) are not part of it; combining marks after the last character are.
    lead = next(i for i, ch in enumerate(variant) if fold_key(ch))
    end = len(variant) - next(i for i, ch in enumerate(reversed(variant)) if fold_key(ch))
    while end < len(variant) and unicodedata.category(variant[end]) == "Mn":
        end += 1
    inserted = len(prefix) + 1 + lead
    span = locate(haystack, needle)
    assert span is not None
    s, e = span
    assert 0 <= s < e <= len(haystack)
    assert s <= inserted  # the earliest occurrence: never after the inserted one
    assert fold_key(haystack[s:e]) == fold_key(needle)
    if locate(prefix, needle) is None and s >= len(prefix):
        # nothing earlier: exactly the inserted text, equal to the needle modulo case folding
        assert (s, e) == (inserted, inserted + end - lead)
        assert haystack[s:e] == variant[lead:end]
        if (lead, end) == (0, len(variant)):
            assert haystack[s:e].casefold() == needle.casefold()


@settings(max_examples=200, deadline=None, derandomize=True)
@given(data=st.data(), prefix=ANY_TEXT, suffix=ANY_TEXT, needle=WORD)
def test_locate_single_word_exact_span(data, prefix, suffix, needle):
    variant = data.draw(recased(needle))
    haystack = f"{prefix} {variant} {suffix}"
    inserted = len(prefix) + 1
    span = locate(haystack, needle)
    assert span is not None
    if locate(prefix, needle) is None:
        # a single word cannot straddle the inserted space: the inserted copy is the first
        assert span == (inserted, inserted + len(variant))
        assert haystack[span[0] : span[1]].casefold() == needle.casefold()
    else:
        assert span == locate(prefix, needle)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    data=st.data(),
    needle=WORD,
    gaps=st.lists(
        st.text(alphabet=string.ascii_lowercase + " ,.;!?'\"()-", max_size=10),
        min_size=2,
        max_size=5,
    ),
)
def test_locate_repeated_returns_earliest(data, needle, gaps):
    copies = [data.draw(recased(needle)) for _ in gaps[1:]]
    parts = [gaps[0]]
    for c, g in zip(copies, gaps[1:], strict=True):
        parts += [" ", c, " ", g]
    haystack = "".join(parts)
    first = len(gaps[0]) + 1
    span = locate(haystack, needle)
    assert span is not None
    s, e = span
    assert s <= first
    assert fold_key(haystack[s:e]) == fold_key(needle)
    if s == first:
        assert haystack[s:e] == copies[0]


@settings(max_examples=200, deadline=None, derandomize=True)
@given(haystack=ANY_TEXT, needle=st.text(max_size=10))
def test_locate_spans_in_bounds(haystack, needle):
    span = locate(haystack, needle)
    if span is not None:
        s, e = span
        assert 0 <= s < e <= len(haystack)
        assert fold_key(haystack[s:e]) == fold_key(needle)
        assert fold_key(needle)


# --------------------------------------------------------------------------- find_exact_answer


@pytest.mark.parametrize(
    "answers, answer, text, source",
    [
        (["Paris"], "The capital of France is Paris.", "Paris", "gold_alias"),
        (["Paris"], "It's PARIS, obviously. Paris!", "PARIS", "gold_alias"),
        (["São Paulo"], "It's Sao Paulo", "Sao Paulo", "gold_alias"),
        (["Bogotá"], "Bogota, Colombia", "Bogota", "gold_alias"),
        (["The Beatles"], "The Beatles wrote it", "The Beatles", "gold_alias"),
        (["The Beatles"], "Beatles wrote it", "Beatles", "gold_alias"),
        (["New York", "New York City"], "It's New York City.", "New York City", "gold_alias"),
        (["Rome"], "Romeo? No, Rome.", "Rome", "gold_alias"),
    ],
)
def test_exact_answer_correct_alias(answers, answer, text, source):
    q = q_alias(*answers)
    g = grade(q, answer)
    assert g.correct
    ea = find_exact_answer(q, answer, g, candidates=CAPITALS)
    check(ea, answer)
    assert (ea.text, ea.source) == (text, source)


@pytest.mark.parametrize(
    "answer, text",
    [
        ("The capital of France is Lyon.", "Lyon"),
        ("I believe it is Madrid or Rome.", "Madrid"),
        ("New York City, of course", "New York City"),  # tie on position: the longest
        ("It's São Paulo", "São Paulo"),
        ("It's Sao Paulo", "Sao Paulo"),
    ],
)
def test_exact_answer_wrong_candidate(answer, text):
    q = q_alias("Paris")
    ea = find_exact_answer(q, answer, grade(q, answer), candidates=CAPITALS)
    check(ea, answer)
    assert (ea.text, ea.source, ea.reason) == (text, "candidate", "first_candidate")


def test_exact_answer_candidates_echoed_by_question_come_last():
    q = q_alias("Bogotá", question="Which city is the capital of Colombia, Rome or Bogotá?")
    ea = find_exact_answer(q, "Rome is not; it is Madrid.", None, candidates=CAPITALS)
    assert ea.text == "Madrid"
    ea = find_exact_answer(q, "It is Rome.", None, candidates=CAPITALS)
    assert ea.text == "Rome"


def test_exact_answer_grade_defaults_to_grading():
    q = q_alias("Paris")
    assert find_exact_answer(q, "Paris.").source == "gold_alias"


def test_exact_answer_refusal():
    q = q_alias("Paris")
    for answer in ("I don't know.", "", "As an AI, I cannot answer."):
        ea = find_exact_answer(q, answer, grade(q, answer), candidates=CAPITALS)
        assert ea == ExactAnswer(None, None, "none", "refusal")
        assert not ea.found


def test_exact_answer_no_match_without_extractor():
    q = q_alias("Paris")
    ea = find_exact_answer(q, "A lovely city by the sea.", candidates=CAPITALS)
    assert (ea.source, ea.reason, ea.char_span) == ("none", "no_match", None)


@pytest.mark.parametrize(
    "answer, answers, text, source, reason",
    [
        ("The answer is 1,234.", ["1234", "1,234"], "1,234", "number", "gold_number"),
        ("It is twenty-one.", ["21"], "twenty-one", "number", "gold_number"),
        ("I'd say 5, not 7.", ["7"], "5", "number", "committed_number"),
        ("Roughly -3.5 degrees", ["4"], "-3.5", "number", "committed_number"),
    ],
)
def test_exact_answer_numeric(answer, answers, text, source, reason):
    q = make_question("q", "How many?", answers, "t", "s", grade="numeric")
    ea = find_exact_answer(q, answer, grade(q, answer))
    check(ea, answer)
    assert (ea.text, ea.source, ea.reason) == (text, source, reason)


@pytest.mark.parametrize(
    "answer, gold, text, reason",
    [
        ("The relationship is Entailment.", "entailment", "Entailment", "gold_option"),
        ("It is neutral, not a contradiction", "contradiction", "neutral", "first_option"),
        ("This is a contradiction; neutral at best", "neutral", "contradiction", "first_option"),
    ],
)
def test_exact_answer_choice(answer, gold, text, reason):
    q = make_question(
        "q",
        "Premise... Hypothesis...",
        [gold],
        "t",
        "s",
        grade="choice",
        options=("entailment", "neutral", "contradiction"),
    )
    ea = find_exact_answer(q, answer, grade(q, answer))
    check(ea, answer)
    assert (ea.text, ea.source, ea.reason) == (text, "option", reason)


class FakeExtractor:
    def __init__(self, reply):
        self.reply = reply
        self.calls = []

    def __call__(self, question, answer):
        self.calls.append((question, answer))
        return self.reply


@pytest.mark.parametrize(
    "reply, answer, text, reason",
    [
        ("Marseille", "I think it might be Marseille.", "Marseille", "model_extraction"),
        ("marseille.", "I think it might be Marseille.", "Marseille", "model_extraction"),
        (' "Marseille" (a port)\nmore', "It's Marseille!", "Marseille", "model_extraction"),
        ("Exact answer: Marseille", "Marseille", "Marseille", "model_extraction"),
        ("Marseilles", "It's Marseille", None, "model_output_not_substring"),
        ("Mars", "It's Marseille", "Mars", "model_extraction"),  # paper: any substring
        ("NO ANSWER", "It is complicated.", None, "model_no_answer"),
        ("", "It is complicated.", None, "model_output_empty"),
    ],
)
def test_exact_answer_extractor(reply, answer, text, reason):
    q = q_alias("Paris")
    fake = FakeExtractor(reply)
    ea = find_exact_answer(q, answer, grade(q, answer), candidates=CAPITALS, extractor=fake)
    check(ea, answer)
    assert fake.calls == [(q, answer)]
    assert (ea.text, ea.reason) == (text, reason)
    assert ea.source == ("model" if text else "none")


def test_extractor_not_called_when_string_matching_works():
    q = q_alias("Paris")
    fake = FakeExtractor("whatever")
    assert find_exact_answer(q, "Lyon", None, CAPITALS, fake).source == "candidate"
    assert find_exact_answer(q, "Paris", None, CAPITALS, fake).source == "gold_alias"
    assert find_exact_answer(q, "I don't know", None, CAPITALS, fake).reason == "refusal"
    assert fake.calls == []


def test_extraction_prompt():
    assert "{question}" in EXTRACTION_PROMPT and "{answer}" in EXTRACTION_PROMPT
    assert "NO ANSWER" in EXTRACTION_PROMPT
    assert "only the relevant tokens" in EXTRACTION_PROMPT
    q = q_alias("Paris")
    p = extraction_prompt(q, "It is {weird} Paris")
    assert p.endswith("Q: What is the capital of France?\nA: It is {weird} Paris\nExact answer:")
    assert extraction_prompt("Q?", "A") == EXTRACTION_PROMPT.format(question="Q?", answer="A")


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("My Fair Lady", "My Fair Lady"),
        (" My Fair Lady.</s>", "My Fair Lady"),
        ("My Fair Lady (1956)\nThe musical", "My Fair Lady"),
        ('"My Fair Lady"', "My Fair Lady"),
        ("Exact answer: NO ANSWER", "NO ANSWER"),
        ("", ""),
    ],
)
def test_clean_extraction(raw, expected):
    assert clean_extraction(raw) == expected


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    answer=st.one_of(
        st.text(max_size=60),
        st.lists(st.sampled_from([*CAPITALS, "1,234", "-5", "twenty", "not", "I", ".", " "])).map(
            " ".join
        ),
    ),
    kind=st.sampled_from(["alias", "numeric", "choice"]),
)
def test_grade_and_exact_answer_never_break(answer, kind):
    q = make_question(
        "q",
        "What?",
        ["1234"] if kind == "numeric" else ["Paris"],
        "t",
        "s",
        grade=kind,
        options=("Paris", "Lyon") if kind == "choice" else (),
    )
    g = grade(q, answer)
    assert g.category in ("correct", "incorrect", "refusal")
    assert g.correct is (g.category == "correct")
    ea = find_exact_answer(q, answer, g, candidates=CAPITALS)
    check(ea, answer)
    if g.correct:
        assert ea.found
    if g.category == "refusal":
        assert ea.reason == "refusal"


def test_model_extraction_is_trimmed_to_the_answer_words():
    from tl_truth.answers.exact_answer import trim_to_answer

    q = make_question("x", "What is the capital of Namibia?", ["Windhoek"], "capitals", "factual")
    ans = "The capital of Namibia is Cape Town."
    got = find_exact_answer(q, ans, extractor=lambda _q, _a: "The capital of Namibia is Cape Town")
    assert got.text == "Cape Town" and got.source == "model"
    assert got.reason == "model_extraction_trimmed"
    assert trim_to_answer(q.question, "Port of Spain", (0, 13)) == (0, 13)
    assert trim_to_answer(q.question, "the capital of Namibia", (0, 22)) is None


def test_model_extraction_of_a_whole_sentence_is_rejected():
    q = make_question("x", "What is the capital of Botswana?", ["Gaborone"], "capitals", "factual")
    ans = "Botswana is a landlocked country located in southern Africa, bordered by South Africa."
    got = find_exact_answer(q, ans, extractor=lambda _q, _a: ans)
    assert got.source == "none" and got.reason == "model_output_too_long"


def test_model_extraction_stops_at_a_clause():
    q = make_question(
        "x", "What is the capital of Seychelles?", ["Victoria"], "capitals", "factual"
    )
    ans = "The capital of Seychelles is Kerguelab, a tropical archipelago located in the ocean."
    got = find_exact_answer(q, ans, extractor=lambda _q, _a: "Kerguelab, a tropical archipelago")
    assert got.text == "Kerguelab"


def test_numeric_exact_answer_is_the_committed_number():
    q = make_question(
        "a", "What is 860 + 725?", "1585", "arithmetic", "arithmetic", grade="numeric"
    )
    ans = "To add 860 and 725, you simply add them together: 860 + 725 = 1525."
    got = find_exact_answer(q, ans)
    assert got.text == "1525" and got.source == "number"


def test_candidates_are_per_task_in_mixed_datasets():
    from tl_truth.data.questions import QADataset

    a = QADataset(
        "el",
        [make_question("1", "Symbol of Gold?", "Au", "elements", "factual")],
        candidates=("Au", "In"),
    )
    b = QADataset(
        "cur",
        [make_question("2", "Currency of Japan?", "Yen", "currencies", "factual")],
        candidates=("Yen", "Dollar"),
    )
    mixed = QADataset.concat("mix", [a, b])
    assert mixed.candidates_for("currencies") == ("Yen", "Dollar")
    assert "In" not in mixed.candidates_for("currencies")


def test_echoed_candidate_counts_only_when_named_again():
    q = make_question("aw", "What is the capital of Aruba?", ["Oranjestad"], "capitals", "factual")
    cands = ("Oranjestad", "Aruba", "Paris")
    got = find_exact_answer(q, "The capital of Aruba is Aruba.", candidates=cands)
    assert got.source == "candidate" and got.char_span == (24, 29)
    got = find_exact_answer(q, "The capital of Aruba is lovely.", candidates=cands)
    assert got.source == "none"


# --------------------------------------------------------------------------- locate="blind"


class _Tripwire(tuple):
    """A gold-answer tuple that fails the test if anything reads it."""

    def __iter__(self):
        raise AssertionError("the blind locator read the gold answers")

    def __getitem__(self, i):
        raise AssertionError("the blind locator read the gold answers")

    def __len__(self):
        raise AssertionError("the blind locator read the gold answers")


def _without_gold(q):
    """`q` with gold answers that fail the test when read (set past the dataclass checks)."""
    q = dataclasses.replace(q)
    object.__setattr__(q, "answers", _Tripwire(("unused",)))
    return q


def _blind_question():
    return _without_gold(
        make_question("1", "What is the capital of France?", "Paris", "capitals", "factual")
    )


def test_blind_never_reads_the_gold():
    q = _blind_question()
    answer = "It is Lyon, not Paris."  # correct by grading (the gold occurs), first candidate Lyon
    paper = _find_exact_answer(
        make_question("1", "What is the capital of France?", "Paris", "capitals", "factual"),
        answer,
        candidates=CAPITALS,
        locate="paper",
    )
    assert paper.text == "Paris" and paper.source == "gold_alias"
    blind = _find_exact_answer(q, answer, candidates=CAPITALS)  # default is blind
    assert blind.text == "Lyon" and blind.source == "candidate"
    # a grade saying "correct" does not change what blind finds either


def test_blind_same_procedure_for_right_and_wrong_answers():
    q = make_question("1", "What is the capital of France?", "Paris", "capitals", "factual")
    for answer, text in (("The capital is Paris.", "Paris"), ("The capital is Lyon.", "Lyon")):
        ea = _find_exact_answer(q, answer, candidates=CAPITALS, locate="blind")
        assert (ea.text, ea.source, ea.reason) == (text, "candidate", "first_candidate")


def test_blind_free_form_answers_go_to_the_extractor_whether_right_or_wrong():
    calls = []

    def extractor(question, answer):
        calls.append(answer)
        return answer.split()[-1].rstrip(".")

    q = _without_gold(make_question("7", "Who wrote Hamlet?", "Shakespeare", "trivia", "factual"))
    right = _find_exact_answer(q, "It was written by Shakespeare.", extractor=extractor)
    wrong = _find_exact_answer(q, "It was written by Marlowe.", extractor=extractor)
    assert (right.text, right.source) == ("Shakespeare", "model")
    assert (wrong.text, wrong.source) == ("Marlowe", "model")
    assert len(calls) == 2


def test_blind_refusal_and_numbers():
    q = _blind_question()
    assert _find_exact_answer(q, "I don't know.", candidates=CAPITALS).reason == "refusal"
    num = make_question("3", "What is 12 + 30?", "42", "arithmetic", "arithmetic", grade="numeric")
    ea = _find_exact_answer(_without_gold(num), "12 + 30 = 41.")
    assert (ea.text, ea.source) == ("41", "number")


def test_unknown_locate_policy_is_an_error():
    q = make_question("1", "What is the capital of France?", "Paris", "capitals", "factual")
    with pytest.raises(ValueError, match="blind"):
        _find_exact_answer(q, "Paris", locate="gold")
