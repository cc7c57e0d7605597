import pytest

from tl_truth.answers.grading import (
    Grade,
    extract_numbers,
    find_span,
    fold_key,
    grade,
    is_refusal,
    normalize,
    refusal_reason,
)
from tl_truth.data.questions import make_question


def q_alias(*answers, question="What is it?"):
    return make_question("q", question, list(answers), "t", "s")


def q_num(*answers, question="How many?"):
    return make_question("q", question, list(answers), "t", "s", grade="numeric")


def q_choice(gold, options, question="Which?"):
    return make_question("q", question, [gold], "t", "s", grade="choice", options=options)


# --------------------------------------------------------------------------- normalize


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The Beatles", "beatles"),
        ("  Paris.  ", "paris"),
        ("São Paulo", "sao paulo"),
        ("Bogotá", "bogota"),
        ("An apple a day", "apple day"),
        ("U.S.A.", "usa"),
        ("It's", "its"),
        ("Straße", "strasse"),
        ("Ｆｕｌｌｗｉｄｔｈ", "fullwidth"),
        ("Theatre then", "theatre then"),  # articles only as whole words
        ("a\tb\n\nc", "b c"),
        ("Lord of the Rings", "lord of rings"),
        ("", ""),
        ("!!!", ""),
    ],
)
def test_normalize(text, expected):
    assert normalize(text) == expected


def test_normalize_non_string():
    assert normalize(None) == ""  # type: ignore[arg-type]


def test_fold_key_ignores_separators_and_accents():
    assert fold_key("São-Paulo!") == fold_key("sao paulo") == "saopaulo"


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "answer",
    [
        "",
        "   ",
        "\n",
        "...",
        "I don't know.",
        "I do not know the answer to that question.",
        "I dont know",
        "i don\u2019t know",
        "I'm not sure.",
        "I am not entirely sure about this.",
        "Not sure.",
        "I'm unsure.",
        "I cannot answer that question.",
        "I can't answer this.",
        "I'm unable to provide that information.",
        "Unknown",
        "Unknown.",
        "unknown",
        "The answer is unknown.",
        "I do not have information about this person.",
        "I don't have access to real-time data.",
        "As an AI language model, I don't have personal experiences.",
        "As an AI, I cannot browse the internet.",
        "Sorry, but I cannot help with that.",
        "I'm sorry, but I don't know.",
        "Unfortunately, I do not have information on that topic.",
        "I have no idea.",
        "No idea",
        "There is no information available about this.",
        "It is not possible to determine this.",
        "Nobody knows.",
        "NO ANSWER",
        "N/A",
        "I'm afraid I don't know.",
        "Her real name remains unknown.",
        "The exact date of his birth is unknown.",
        "I don't know, but you could check Wikipedia.",
    ],
)
def test_refusals(answer):
    assert is_refusal(answer), answer
    assert refusal_reason(answer)


@pytest.mark.parametrize(
    "answer",
    [
        "Paris",
        "The capital of France is Paris.",
        "It is not Sydney, it is Canberra.",
        "Not Sydney but Canberra.",
        "No, the answer is Canberra.",
        "The knot was tied by a sailor.",
        "Canberra. It's not a well-known fact.",
        "Paris, although I'm not sure.",
        "I'm not sure, but I think it's Paris.",
        "I don't know for certain, but it is probably Paris.",
        "I don't know much about it, however the capital is Paris.",
        "Unknown Pleasures",
        "The Tomb of the Unknown Soldier",
        "Paris, whose founding date is unknown.",
        "Nothing",
        "None of them",
        "0",
        "Well, the answer is 42.",
        "Ohio",
        "Someone named Ann, not Bob.",
    ],
)
def test_not_refusals(answer):
    assert not is_refusal(answer), answer


def test_non_string_is_refusal():
    assert is_refusal(None)
    assert is_refusal(float("nan"))


# --------------------------------------------------------------------------- alias grading


@pytest.mark.parametrize(
    "answers, answer, correct, matched",
    [
        (["Paris"], "The capital of France is Paris.", True, "Paris"),
        (["Paris"], "PARIS", True, "Paris"),
        (["Paris"], "It's Paris's population that grew.", True, "Paris"),
        (["Paris"], "Parisian cuisine is famous.", False, None),
        (["Paris"], "Lyon", False, None),
        (["Rome"], "Romeo and Juliet is set in Verona.", False, None),
        (["Rome"], "Romeo? No: Rome.", True, "Rome"),
        (["São Paulo"], "It's Sao Paulo", True, "São Paulo"),
        (["Sao Paulo"], "It's São Paulo", True, "Sao Paulo"),
        (["Bogotá"], "The capital is Bogota.", True, "Bogotá"),
        (["Bogota"], "Bogotá, Colombia", True, "Bogota"),
        (["The Beatles"], "It was written by Beatles member Paul.", True, "The Beatles"),
        (["The Lord of the Rings"], "Lord of Rings", True, "The Lord of the Rings"),
        (["United States", "USA"], "The U.S.A. of course", True, "USA"),
        (["Jean-Paul Sartre"], "Jean Paul Sartre wrote it", True, "Jean-Paul Sartre"),
        (["Jean Paul Sartre"], "Jean-Paul Sartre wrote it", True, "Jean Paul Sartre"),
        (["St. Louis"], "It is in St Louis, Missouri", True, "St. Louis"),
        (["New York City", "New York"], "It's New York City.", True, "New York City"),
        (["New York", "NYC"], "NYC, i.e. New York", True, "NYC"),
        (["1945"], "The war ended in 1945.", True, "1945"),
        (["1945"], "The war ended in 19456.", False, None),
        (["Straße"], "Die STRASSE", True, "Straße"),
    ],
)
def test_grade_alias(answers, answer, correct, matched):
    g = grade(q_alias(*answers), answer)
    assert isinstance(g, Grade)
    assert g.correct is correct
    assert g.category == ("correct" if correct else "incorrect")
    assert g.matched == matched
    assert g.label == int(correct)
    assert g.reason


def test_grade_alias_earliest_alias_wins():
    g = grade(q_alias("United Kingdom", "UK", "Britain"), "Britain, i.e. the UK")
    assert g.matched == "Britain"


def test_grade_refusal_first():
    g = grade(q_alias("Paris"), "I don't know")
    assert g == Grade(False, "refusal", None, g.reason)
    assert g.reason.startswith("refusal")
    assert grade(q_alias("Paris"), "").category == "refusal"


# --------------------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    "text, values",
    [
        ("1,234", [1234]),
        ("It costs $1,234,567.89 total", [1234567.89]),
        ("In 1,234, they", [1234]),
        ("12,34", [12, 34]),
        ("-5 degrees", [-5]),
        ("\u22125", [-5]),
        ("It was 3.5.", [3.5]),
        ("COVID-19", [19]),
        ("1990-1995", [1990, 1995]),
        ("5-3", [5, 3]),
        ("twenty-one", [21]),
        ("Twenty One", [21]),
        ("three hundred and five", [305]),
        ("two million three hundred thousand", [2_300_000]),
        ("2.1 million people", [2_100_000]),
        ("seven", [7]),
        ("zero", [0]),
        ("one, two, three", [1, 2, 3]),
        ("one and two", [1, 2]),
        ("one of the best is 7", [7]),
        ("which one is it? 4", [4]),
        ("ten-year-old", [10]),
        ("often someone", []),
        ("no numbers here", []),
        ("A380", []),
    ],
)
def test_extract_numbers(text, values):
    nums = extract_numbers(text)
    assert [n.value for n in nums] == pytest.approx(values)
    for n in nums:
        assert text[n.start : n.end] == n.text


@pytest.mark.parametrize(
    "answers, answer, correct",
    [
        (["1234", "1,234"], "The answer is 1,234.", True),
        (["1234"], "1234", True),
        (["1234"], "It is 1234.0", True),
        (["1,234"], "1234 apples", True),
        (["21"], "twenty-one", True),
        (["-5"], "It is -5 degrees.", True),
        (["5"], "It is -5 degrees.", False),
        (["7"], "5, not 7", False),  # the FIRST number counts
        (["7"], "7, not 5", True),
        (["3.5"], "3.50", True),
        (["12"], "There are 12 months.", True),
        (["12"], "There are no months.", False),
        (["2100000"], "About 2.1 million.", True),
    ],
)
def test_grade_numeric(answers, answer, correct):
    g = grade(q_num(*answers), answer)
    assert g.correct is correct
    assert g.category == ("correct" if correct else "incorrect")
    if correct:
        assert g.matched in answers
    else:
        assert g.matched is None


def test_grade_numeric_records_first_number():
    g = grade(q_num("7"), "I'd say 5, maybe 7")
    assert not g.correct and g.predicted == "5"
    assert "5" in g.reason


def test_grade_numeric_non_numeric_gold_falls_back_to_alias():
    g = grade(q_num("a dozen"), "A dozen eggs")
    assert g.correct and "not numeric" in g.reason


# --------------------------------------------------------------------------- choice

NLI = ("entailment", "neutral", "contradiction")


@pytest.mark.parametrize(
    "gold, options, answer, correct",
    [
        ("entailment", NLI, "Entailment.", True),
        ("entailment", NLI, "The relationship is entailment.", True),
        ("neutral", NLI, "It's a contradiction, not neutral", False),  # first mention
        ("neutral", NLI, "Neutral, not a contradiction", True),
        ("positive", ("negative", "positive"), "The review is positive.", True),
        ("positive", ("negative", "positive"), "Negative", False),
        ("positive", ("negative", "positive"), "nothing relevant", False),
        ("the trophy", ("the trophy", "the suitcase"), "The blank is the trophy.", True),
        ("the trophy", ("the trophy", "the suitcase"), "Trophy", True),
        ("the suitcase", ("the trophy", "the suitcase"), "It's the trophy", False),
        ("Sarah", ("Sarah", "Mary"), "Mary", False),
        ("B", ("A", "B", "C", "D"), "B", True),
        ("B", ("A", "B", "C", "D"), "The answer is (b).", True),
        ("B", ("A", "B", "C", "D"), "B) because", True),
        ("B", ("A", "B", "C", "D"), "A good choice is B", True),  # article "A" skipped
        ("B", ("A", "B", "C", "D"), "A is correct", False),
        ("B", ("A", "B", "C", "D"), "I think it is C", False),  # pronoun "I"
        ("positive", ("negative", "positive"), "(B)", True),  # whole answer is a letter
    ],
)
def test_grade_choice(gold, options, answer, correct):
    g = grade(q_choice(gold, options), answer)
    assert g.correct is correct, g
    if correct:
        assert g.matched in options


def test_grade_choice_longest_option_on_tie():
    g = grade(q_choice("New York City", ("New York", "New York City")), "New York City")
    assert g.correct and g.matched == "New York City"
    g = grade(q_choice("New York City", ("New York", "New York City")), "New York state")
    assert not g.correct and g.predicted == "New York"


# --------------------------------------------------------------------------- find_span


def test_find_span_ignore_articles():
    assert find_span("Lord of Rings", "The Lord of the Rings") is None
    span = find_span("Lord of Rings!", "The Lord of the Rings", ignore_articles=True)
    assert span == (0, 13)
    assert find_span("The The played", "The The", ignore_articles=True) == (0, 7)


def test_numeric_grade_skips_numbers_that_echo_the_question():
    q = make_question("a", "What is 62 * 91?", "5642", "arithmetic", "arithmetic", grade="numeric")
    assert grade(q, "62 * 91 = 5642").correct
    assert not grade(q, "To calculate 62 * 91, you multiply 62 by 91 to get 5600.").correct
    q2 = make_question("b", "What is 5 * 1?", "5", "arithmetic", "arithmetic", grade="numeric")
    assert grade(q2, "5 * 1 = 5").correct


def test_case_sensitive_symbols():
    q = make_question(
        "49",
        "What is the chemical symbol of Indium?",
        "In",
        "elements",
        "factual",
        case_sensitive=True,
    )
    assert not grade(q, "It is found in nature as Ag.").correct
    assert grade(q, "The chemical symbol of Indium is In.").correct
